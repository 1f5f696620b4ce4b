"""Every config that cites an authors' release equals that release in the settings that decide the result.

The facts of the releases (optimizer, schedule, batch, augmentation, every loss type/weight/delta and head option,
assigners, samplers, proposal counts, queries, test thresholds and NMS) are in ``tests/release_facts.py``, each
with the release file and line it comes from. This test merges each of our configs (``Config.fromfile``, no model
is built), reads the same settings (``tests/release_settings_keys.py``) and compares. A difference fails unless it
is listed in :data:`DELIBERATE` below with its reason; the same list, with the same ids, is the table of
``docs/release_settings.md``.
"""
import fnmatch
import glob
import os.path as osp
import re
from typing import Dict, List, NamedTuple, Tuple

import pytest

import brs_detr  # noqa: F401  (registers the heads, so that their default arguments can be read)
from mmdet.utils import register_all_modules
from release_facts import FACTS, RELEASE_CONFIG
from release_settings_keys import MISSING, load, read, same

register_all_modules()

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOC = osp.join(ROOT, 'docs', 'release_settings.md')
#: Configs that cite no release: tiny models for tests and CPU demos on the toy set, templates for your own data.
NO_RELEASE = ('configs/toy/*', 'configs/*/*r18-tiny*', 'configs/*/*test-convnext-timm*', 'configs/custom/*')


class Deliberate(NamedTuple):
    """A setting in which configs of ours differ from their release on purpose."""
    id: str  # the row of docs/release_settings.md
    configs: Tuple[str, ...]  # fnmatch patterns of repository-relative config paths
    key: str
    ours: object
    release: object
    reason: str


BRS_DETR = ('configs/brs_detr/*',)
RANK_BASED = ('configs/rank_based/*', 'configs/brs_detr/*')
R101 = ('configs/rank_based/*-faster-rcnn_r101-*', 'configs/rank_based/*-mask-rcnn_r101_*')
CONVNEXT_ATSS = ('configs/rank_based/brs-atss_convnext-t-timm_fpn_4xb4-12e_coco.py',)
DELIBERATE: List[Deliberate] = [
    # ---- defects of the BRS release (design notes, docs/brs_detr.md "Defects of the published release")
    Deliberate('brs-detr-proposals', BRS_DETR, 'model.train_cfg[1].rpn_proposal.max_per_img', 1000, 4000,
               'the unsampled RoI head would see 4000 proposals per image (16,000 RoIs per GPU at 4 images, about '
               '1.4 TFLOP and 0.8 GB of RoI features per iteration for an auxiliary head); 1000 is Co-DETR\'s and the '
               'test-time count'),
    Deliberate('brs-detr-rpn-iou-decoding', BRS_DETR, 'rpn.iou_target_stds', [1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2],
               'the released RPN decodes predictions and targets for its IoU targets and GIoU loss with hard-coded '
               'stds (0.1, 0.1, 0.2, 0.2) and no anchors, while its coder encodes with (1, 1, 1, 1): the boxes it '
               'compares are not the boxes it predicts; ours decodes with its own coder and anchors (in the CNN '
               'baselines both are (0.1, 0.1, 0.2, 0.2), and IoU does not change under the per-anchor shift and '
               'scale, so they agree there)'),
    Deliberate('brs-detr-rpn-box-weighting', BRS_DETR, 'rpn.box_loss_weighting', 'score-weighted', 'uniform',
               'the released heads weight each positive\'s box loss by its score, but the BRS-DETR configs reduce the '
               'box loss with mean first, so the weights multiply a scalar and cancel; ours weights per positive, '
               'as the CNN baselines (configured with reduction=\'none\') do'),
    Deliberate('brs-detr-roi-box-weighting', BRS_DETR, 'rcnn.box_loss_weighting', 'score-weighted', 'uniform',
               'as brs-detr-rpn-box-weighting, for the RoI head'),
    Deliberate('brs-detr-atss-box-weighting', BRS_DETR, 'dense.box_loss_weighting', 'score-weighted', 'uniform',
               'as brs-detr-rpn-box-weighting, for the ATSS head'),
    Deliberate('iou-zero-positives', RANK_BASED, 'rank_heads.min_positive_target', 1e-6, 0.0,
               'the released heads write the IoU of a positive\'s box as its RS/BRS target, so a positive whose box '
               'misses its gt (IoU 0) silently becomes a negative of the ranking loss while it keeps its box loss; '
               'ours keeps it a positive with target 1e-6'),
    # ---- the R101 36-epoch runs: the released configs do not train what was logged
    Deliberate('r101-no-repeat', R101, 'data.wrapper', None, ('RepeatDataset', 3),
               'the released R101 configs inherit mmdet 2.25\'s mstrain 3x base, whose training set is a '
               'RepeatDataset x3: with max_epochs=36 that is 108 passes over COCO. The logged runs (BRS '
               'tools/analysis_tools/logs/ranksort_faster_rcnn_r101_3x_1.json: 36 epochs of 7,330 iterations of 16 '
               'images, lr x0.1 after epoch 27) and the RS release\'s configs train 36 epochs on the plain dataset'),
    Deliberate('r101-faster-scales', ('configs/rank_based/*-faster-rcnn_r101-*',), 'data.train_augment',
               (('resize', 'value', tuple((1333, short) for short in range(480, 961, 80))), ('flip', 0.5)),
               (('resize', 'range', ((1333, 640), (1333, 800))), ('flip', 0.5)),
               'the released config sets shorter sides {480, 560, ..., 960} on the RepeatDataset wrapper, where '
               'mmdet 2.25 ignores it (the base\'s 640-800 range applies); the logged runs, the RS README row '
               '"ResNet-101-DCN, [480,960]" and the paper (multi-scale as RS loss) use 480-960'),
    Deliberate('r101-mask-scales', ('configs/rank_based/*-mask-rcnn_r101_*',), 'data.train_augment',
               (('resize', 'value', tuple((1333, short) for short in range(640, 801, 32))), ('flip', 0.5)),
               (('resize', 'range', ((1333, 640), (1333, 800))), ('flip', 0.5)),
               'the released config sets shorter sides {640, 672, ..., 800} on the RepeatDataset wrapper, where '
               'mmdet 2.25 ignores it; that pipeline is the RS release\'s R101 Mask R-CNN (RS README row '
               '"ResNet-101, 36, [640,800]")'),
    Deliberate('brs-mask-r101-rpn-loss', ('configs/rank_based/brs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py',),
               'model.rpn_head.loss_cls.type', 'BucketedRankSortLoss', 'RankSortLoss',
               'the released BRS R101 Mask R-CNN config inherits bucketed_ranksort_loss_mask_rcnn_r50_fpn_3x_coco.py, '
               'which names RankSort; the BRS README row it is published under (40.3 mask AP) is BRS'),
    Deliberate('brs-mask-r101-roi-loss', ('configs/rank_based/brs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py',),
               'model.roi_head.bbox_head.loss_cls.type', 'BucketedRankSortLoss', 'RankSortLoss',
               'as brs-mask-r101-rpn-loss, for the RoI head'),
    # ---- runs the paper reports without a published config (Table 4)
    Deliberate('table4-cascade-epochs', ('configs/rank_based/brs-cascade-rcnn_r50_fpn_4xb4-36e_coco.py',),
               'schedule.epochs', 36, 12, 'BRS paper Table 4 / Sec. 6.1: the 12-epoch config trained 36 epochs'),
    Deliberate('table4-cascade-steps', ('configs/rank_based/brs-cascade-rcnn_r50_fpn_4xb4-36e_coco.py',),
               'schedule.milestones', [27, 33], [8, 11],
               'no config was published; 27 and 33 are the steps of the authors\' other 36-epoch configs'),
    Deliberate('table4-mask-epochs', ('configs/rank_based/brs-mask-rcnn_r50_fpn_4xb4-27e_coco.py',),
               'schedule.epochs', 27, 12, 'BRS paper Table 4 / Sec. 6.1: the 12-epoch config trained 27 epochs'),
    Deliberate('table4-mask-steps', ('configs/rank_based/brs-mask-rcnn_r50_fpn_4xb4-27e_coco.py',),
               'schedule.milestones', [20, 25], [8, 11],
               'no config was published; 20 and 25 are the fractions 0.75 and 0.92 of the 36-epoch steps, rounded'),
    # ---- new backbones (no published config or result)
    Deliberate('convnext-atss-optimizer', CONVNEXT_ATSS, 'optimizer.type', 'AdamW', 'SGD',
               'ConvNeXt-T is trained with AdamW (mmdet\'s and the ConvNeXt authors\' detection recipes); no '
               'ranking-loss ConvNeXt result or config is published'),
    Deliberate('convnext-atss-lr', CONVNEXT_ATSS, 'optimizer.lr', 2e-4, 0.008, 'the AdamW lr of that recipe'),
    Deliberate('convnext-atss-momentum', CONVNEXT_ATSS, 'optimizer.momentum', MISSING, 0.9,
               'AdamW has betas (0.9, 0.999), no momentum'),
    Deliberate('convnext-atss-weight-decay', CONVNEXT_ATSS, 'optimizer.weight_decay', 0.05, 0.0001,
               'the AdamW weight decay of that recipe'),
    Deliberate('convnext-detr-weight-decay', ('configs/brs_detr/brs-detr_convnext-t-timm_4xb4-12e_coco.py',),
               'optimizer.weight_decay', 0.05, 0.0001,
               'the transformer-backbone value of the Swin-T/L releases for the ConvNeXt-T backbone; no published '
               'config'),
]


def cited_configs() -> List[str]:
    paths = sorted(osp.relpath(path, ROOT) for path in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                                                   recursive=True))
    return [path for path in paths if '/_base_/' not in path
            and not any(fnmatch.fnmatch(path, pattern) for pattern in NO_RELEASE)]


def deliberate_for(config: str, key: str) -> List[Deliberate]:
    return [entry for entry in DELIBERATE
            if entry.key == key and any(fnmatch.fnmatch(config, pattern) for pattern in entry.configs)]


def compare(config: str, merged: dict) -> Tuple[List[str], List[Deliberate]]:
    """Undeclared differences of one config (as messages) and the deliberate entries it used."""
    problems, used = [], []
    for key, release, source in FACTS[config]:
        try:
            ours = read(merged, key)
        except (KeyError, IndexError, TypeError, AssertionError) as error:
            problems.append(f'{config}: {key}: cannot be read from the merged config ({type(error).__name__}: '
                            f'{error}); release {release!r} ({source})')
            continue
        if same(ours, release):
            continue
        declared = [entry for entry in deliberate_for(config, key)
                    if same(ours, entry.ours) and same(release, entry.release)]
        if declared:
            used.extend(declared)
        else:
            problems.append(f'{config}: {key}: ours {ours!r} != release {release!r} ({source}); fix the config or '
                            f'list it in DELIBERATE with its reason')
    return problems, used


@pytest.fixture(scope='module')
def comparison() -> Dict[str, Tuple[List[str], List[Deliberate]]]:
    return {config: compare(config, load(osp.join(ROOT, config))) for config in FACTS}


def test_every_config_that_cites_a_release_has_its_facts():
    missing = sorted(set(cited_configs()) - set(FACTS))
    assert not missing, f'configs without release facts in tests/release_facts.py: {missing}'
    gone = sorted(set(FACTS) - set(cited_configs()))
    assert not gone, f'facts of configs that do not exist: {gone}'
    assert set(RELEASE_CONFIG) == set(FACTS)


@pytest.mark.parametrize('config', sorted(FACTS))
def test_config_equals_its_release(config, comparison):
    problems, _ = comparison[config]
    assert not problems, f'{len(problems)} undeclared difference(s) from {RELEASE_CONFIG[config]}:\n' + '\n'.join(
        problems)


def test_every_deliberate_difference_is_still_one(comparison):
    used = {entry.id for _, entries in comparison.values() for entry in entries}
    stale = [entry.id for entry in DELIBERATE if entry.id not in used]
    assert not stale, f'DELIBERATE entries that no config needs any more (remove them and their docs rows): {stale}'
    ids = [entry.id for entry in DELIBERATE]
    assert len(ids) == len(set(ids)), 'duplicate DELIBERATE ids'
    assert all(entry.reason.strip() for entry in DELIBERATE)


def test_docs_list_the_same_deliberate_differences():
    with open(DOC, encoding='utf-8') as file:
        doc = file.read()
    section = doc.split('\n## Deliberate differences\n', 1)[1].split('\n## ', 1)[0]
    rows = set(re.findall(r'^\| `([a-z0-9-]+)` \|', section, flags=re.M))
    ids = {entry.id for entry in DELIBERATE}
    assert rows == ids, (f'docs/release_settings.md rows without a DELIBERATE entry: {sorted(rows - ids)}; '
                         f'DELIBERATE entries without a docs row: {sorted(ids - rows)}')
