"""Every published number in the model zoo, README.md and docs/ comes from a named source and matches it.

:data:`PUBLISHED` records what each source says, one entry per README row or paper table row: the BRS README
(blisgard/BucketedRankingBasedLosses@9ba3b0e, "Trained Models"), the RS README (kemaloksuz/RankSortLoss@b41f64d),
the Co-DETR README (Sense-X/Co-DETR@2665352, Co-Deformable-DETR table), the BRS paper (ECCV 2024, arXiv 2407.14204,
Tables 1-5) and mmdet's model zoo. The checks:

* every detector entry of ``checkpoints/model_zoo.json`` names one of these sources (a README row or a paper
  table) and carries exactly its box and mask AP, for the config of that row;
* every row of a Markdown table in README.md or docs/*.md that names a zoo config (``{rs,brs}-...`` patterns
  included) and gives APs (``NN.N``) quotes only numbers that a source publishes for that model (its AP, AP50, AP75 or
  the baseline it is compared with in the same source row), and the row or its table header says where they come from.
"""
import glob
import json
import os.path as osp
import re
from typing import Dict, List, Set

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ZOO = osp.join(ROOT, 'checkpoints', 'model_zoo.json')
RB, BD, CD = 'configs/rank_based/', 'configs/brs_detr/', 'configs/co_deformable_detr/'
FASTER_R101 = '-faster-rcnn_r101-mdconv-group4-c3-c5_fpn_ms-4xb4-36e_coco.py'


def row(config: str, box=None, mask=None, others=()) -> dict:
    return dict(config=config, box=box, mask=mask, others=tuple(others))


#: Source -> what it publishes. ``others``: further numbers of the same row (AP50, AP75) or the baseline the row is
#: compared with in that source (Table 5: Co-DETR next to BRS-DETR).
PUBLISHED: Dict[str, dict] = {
    # BRS README, "Trained Models"
    'BRS README, BRS-DETR vs. Co-DETR table, ResNet-50 Co-DETR row': row(CD + 'co_deformable_detr_r50_8xb2-12e_coco.py', 49.3),
    'BRS README, BRS-DETR vs. Co-DETR table, ResNet-50 BRS-DETR row': row(BD + 'brs-detr_r50_4xb4-12e_coco.py', 50.1),
    'BRS README, BRS-DETR vs. Co-DETR table, Swin-T BRS-DETR row': row(BD + 'brs-detr_swin-t-p4-w7_4xb4-12e_coco.py', 52.3),
    'BRS README, BRS-DETR vs. Co-DETR table, Swin-L BRS-DETR row': row(BD + 'brs-detr_swin-l-p4-w12_8xb2-12e_coco.py', 57.2),
    'BRS README, Faster R-CNN table, ResNet-50 RS row': row(RB + 'rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py', 39.5),
    'BRS README, Faster R-CNN table, ResNet-50 BRS row': row(RB + 'brs-faster-rcnn_r50_fpn_4xb4-12e_coco.py', 39.5),
    'BRS README, Faster R-CNN table, ResNet-101 RS row': row(RB + 'rs' + FASTER_R101, 47.3),
    'BRS README, Faster R-CNN table, ResNet-101 BRS row': row(RB + 'brs' + FASTER_R101, 47.7),
    'BRS README, Cascade R-CNN table, ResNet-50 RS row': row(RB + 'rs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py', 41.1),
    'BRS README, Cascade R-CNN table, ResNet-50 BRS row': row(RB + 'brs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py', 41.1),
    'BRS README, ATSS table, ResNet-50 AP row': row(RB + 'ap-atss_r50_fpn_4xb4-12e_coco.py', 38.3),
    'BRS README, ATSS table, ResNet-50 BAP row': row(RB + 'bap-atss_r50_fpn_4xb4-12e_coco.py', 38.5),
    'BRS README, ATSS table, ResNet-50 RS row': row(RB + 'rs-atss_r50_fpn_4xb4-12e_coco.py', 39.8),
    'BRS README, ATSS table, ResNet-50 BRS row': row(RB + 'brs-atss_r50_fpn_4xb4-12e_coco.py', 39.8),
    'BRS README, PAA table, ResNet-50 AP row': row(RB + 'ap-paa_r50_fpn_4xb4-12e_coco.py', 37.3),
    'BRS README, PAA table, ResNet-50 BAP row': row(RB + 'bap-paa_r50_fpn_4xb4-12e_coco.py', 37.2),
    'BRS README, PAA table, ResNet-50 RS row': row(RB + 'rs-paa_r50_fpn_4xb4-12e_coco.py', 40.8),
    'BRS README, PAA table, ResNet-50 BRS row': row(RB + 'brs-paa_r50_fpn_4xb4-12e_coco.py', 40.8),
    'BRS README, Coco Val table, ResNet-50 RS row': row(RB + 'rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py', mask=36.3),
    'BRS README, Coco Val table, ResNet-50 BRS row': row(RB + 'brs-mask-rcnn_r50_fpn_4xb4-12e_coco.py', mask=36.2),
    'BRS README, Coco Val table, ResNet-101 RS row': row(RB + 'rs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py', mask=40.2),
    'BRS README, Coco Val table, ResNet-101 BRS row': row(RB + 'brs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py', mask=40.3),
    'BRS README, Cityscapes table, ResNet-50 RS row': row(RB + 'rs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py', 43.7, 38.2),
    'BRS README, Cityscapes table, ResNet-50 BRS row': row(RB + 'brs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py', 43.3, 38.5),
    'BRS README, LVIS table, ResNet-50 RS row': row(RB + 'rs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py', mask=25.6),
    'BRS README, LVIS table, ResNet-50 BRS row': row(RB + 'brs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py', mask=25.8),
    # RS README (the RS-loss authors' own runs of the RS models)
    'RS README, Faster R-CNN table, ResNet-50 row (no Carafe)': row(RB + 'rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py', 39.6),
    'RS README, Faster R-CNN table, ResNet-101-DCN [480,960] row (no Carafe)': row(RB + 'rs' + FASTER_R101, 47.6),
    'RS README, Cascade R-CNN table, ResNet-50 row': row(RB + 'rs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py', 41.3),
    'RS README, one-stage table, RS-ATSS ResNet-50 row': row(RB + 'rs-atss_r50_fpn_4xb4-12e_coco.py', 39.9),
    'RS README, one-stage table, RS-PAA ResNet-50 row': row(RB + 'rs-paa_r50_fpn_4xb4-12e_coco.py', 41.0),
    'RS README, Mask R-CNN COCO table, ResNet-50 row (no Carafe)': row(RB + 'rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py', 40.0, 36.4),
    'RS README, Mask R-CNN COCO table, ResNet-101 [640,800] row (no Carafe)': row(RB + 'rs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py', 44.7, 40.3),
    'RS README, Mask R-CNN LVIS table, ResNet-50 row': row(RB + 'rs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py', 25.9, 25.2),
    # Co-DETR README, Co-Deformable-DETR table
    'Co-DETR README, Co-Deformable-DETR table, R50 12-epoch row': row(CD + 'co_deformable_detr_r50_8xb2-12e_coco.py', 49.5),
    'Co-DETR README, Co-Deformable-DETR table, Swin-T 12-epoch row': row(CD + 'co_deformable_detr_swin-t-p4-w7_8xb2-12e_coco.py', 51.7),
    'Co-DETR README, Co-Deformable-DETR table, Swin-L 12-epoch row': row(CD + 'co_deformable_detr_swin-l-p4-w12_8xb2-12e_coco.py', 56.9),
    # BRS paper (AP, AP50, AP75)
    'BRS paper Table 1, Faster R-CNN R-50 RS row': row(RB + 'rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py', 39.4, others=(59.5, 43.0)),
    'BRS paper Table 1, Faster R-CNN R-50 BRS row': row(RB + 'brs-faster-rcnn_r50_fpn_4xb4-12e_coco.py', 39.5, others=(59.5, 42.8)),
    'BRS paper Table 1, Faster R-CNN R-101 RS row': row(RB + 'rs' + FASTER_R101, 47.3, others=(67.4, 51.2)),
    'BRS paper Table 1, Faster R-CNN R-101 BRS row': row(RB + 'brs' + FASTER_R101, 47.7, others=(67.8, 51.5)),
    'BRS paper Table 1, Cascade R-CNN RS row': row(RB + 'rs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py', 41.1, others=(58.7, 44.1)),
    'BRS paper Table 1, Cascade R-CNN BRS row': row(RB + 'brs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py', 41.1, others=(58.8, 44.2)),
    'BRS paper Table 1, ATSS AP row': row(RB + 'ap-atss_r50_fpn_4xb4-12e_coco.py', 38.1, others=(58.2, 41.0)),
    'BRS paper Table 1, ATSS BAP row': row(RB + 'bap-atss_r50_fpn_4xb4-12e_coco.py', 38.5, others=(58.6, 41.3)),
    'BRS paper Table 1, ATSS RS row': row(RB + 'rs-atss_r50_fpn_4xb4-12e_coco.py', 39.8, others=(58.9, 42.6)),
    'BRS paper Table 1, ATSS BRS row': row(RB + 'brs-atss_r50_fpn_4xb4-12e_coco.py', 39.8, others=(58.8, 42.9)),
    'BRS paper Table 1, PAA AP row': row(RB + 'ap-paa_r50_fpn_4xb4-12e_coco.py', 37.3, others=(54.3, 41.2)),
    'BRS paper Table 1, PAA BAP row': row(RB + 'bap-paa_r50_fpn_4xb4-12e_coco.py', 37.2, others=(56.2, 40.2)),
    'BRS paper Table 1, PAA RS row': row(RB + 'rs-paa_r50_fpn_4xb4-12e_coco.py', 40.8, others=(58.8, 44.6)),
    'BRS paper Table 1, PAA BRS row': row(RB + 'brs-paa_r50_fpn_4xb4-12e_coco.py', 40.9, others=(59.0, 44.4)),
    'BRS paper Table 2, R-50 RS row': row(RB + 'rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py', mask=36.3, others=(57.2, 38.8)),
    'BRS paper Table 2, R-50 BRS row': row(RB + 'brs-mask-rcnn_r50_fpn_4xb4-12e_coco.py', mask=36.2, others=(57.2, 38.8)),
    'BRS paper Table 2, R-101 RS row': row(RB + 'rs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py', mask=40.2, others=(61.8, 43.5)),
    'BRS paper Table 2, R-101 BRS row': row(RB + 'brs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py', mask=40.3, others=(62.0, 43.8)),
    'BRS paper Table 3, Cityscapes RS row': row(RB + 'rs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py', others=(43.5, 68.1)),
    'BRS paper Table 3, Cityscapes BRS row': row(RB + 'brs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py', others=(43.3, 67.7)),
    'BRS paper Table 3, LVIS RS row': row(RB + 'rs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py', mask=25.6, others=(39.2, 27.3)),
    'BRS paper Table 3, LVIS BRS row': row(RB + 'brs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py', mask=25.8, others=(39.6, 27.4)),
    'BRS paper Table 4, C. R-CNN BRS row (36 epochs, Sec. 6.1)': row(RB + 'brs-cascade-rcnn_r50_fpn_4xb4-36e_coco.py', 42.3,
                                                                      others=(60.2, 45.2, 41.1)),
    'BRS paper Table 4, M. R-CNN BRS row (27 epochs, Sec. 6.1)': row(RB + 'brs-mask-rcnn_r50_fpn_4xb4-27e_coco.py', mask=37.3,
                                                                      others=(58.4, 40.2, 36.3)),
    'BRS paper Table 5, ResNet-50 rows': row(BD + 'brs-detr_r50_4xb4-12e_coco.py', 50.1, others=(67.4, 54.6, 49.3)),
    'BRS paper Table 5, Swin-T rows': row(BD + 'brs-detr_swin-t-p4-w7_4xb4-12e_coco.py', 52.3, others=(69.5, 57.1, 51.7)),
    'BRS paper Table 5, Swin-L rows': row(BD + 'brs-detr_swin-l-p4-w12_8xb2-12e_coco.py', 57.2, others=(75.0, 62.5, 56.9)),
    'BRS paper Table 5, ResNet-50 Co-DETR row': row(CD + 'co_deformable_detr_r50_8xb2-12e_coco.py', 49.3, others=(67.2, 54.0)),
    # mmdet's model zoo
    'mmdet model zoo, configs/mask_rcnn/metafile.yml, mask-rcnn_r50_fpn_1x_coco (v2.0 weights): the load_from of the '
    'Cityscapes configs': row('mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth', 38.2, 34.7),
}
#: Words by which a table row or its header names where its numbers come from.
SOURCE_WORDS = re.compile(r'README|paper|Tab\.|Table|Sense-X|Co-DETR authors|BRS authors|source', re.I)
AP = re.compile(r'(?<![\d.,])\d\d\.\d(?![\d.,%])')
CONFIG = re.compile(r'([\w{},.-]+\.(?:py|pth))')
#: Tables whose header has this give APs.
AP_HEADER = re.compile(r'\bAP\b')


def zoo() -> List[dict]:
    with open(ZOO, encoding='utf-8') as file:
        return json.load(file)['models']


def published_numbers() -> Dict[str, Set[float]]:
    """Config path -> every number a source publishes for that model."""
    numbers: Dict[str, Set[float]] = {}
    for entry in PUBLISHED.values():
        if entry['config']:
            numbers.setdefault(entry['config'], set()).update(
                value for value in (entry['box'], entry['mask'], *entry['others']) if value is not None)
    return numbers


def expand(name: str) -> List[str]:
    """``{rs,brs}-x.py`` -> ``['rs-x.py', 'brs-x.py']``."""
    match = re.search(r'\{([^}]*)\}', name)
    if not match:
        return [name]
    return [expanded for option in match.group(1).split(',')
            for expanded in expand(name[:match.start()] + option + name[match.end():])]


@pytest.mark.parametrize('entry', [e for e in zoo() if e.get('kind', 'detector') == 'detector'], ids=lambda e: e['name'])
def test_zoo_entry_names_its_source_and_matches_it(entry):
    if entry['box_ap'] is None and entry['mask_ap'] is None:
        assert entry['source'] == 'this project', f'{entry["name"]}: no AP, so no published source: {entry["source"]}'
        return
    source = entry.get('source')
    assert source in PUBLISHED, (f'{entry["name"]}: source {source!r} is not a README row or paper table known to '
                                 f'this test (add what the source says to PUBLISHED)')
    published = PUBLISHED[source]
    assert entry['config'] == published['config'], f'{entry["name"]}: the row of {source!r} is {published["config"]}'
    assert (entry['box_ap'], entry['mask_ap']) == (published['box'], published['mask']), (
        f'{entry["name"]}: box/mask AP {entry["box_ap"]}/{entry["mask_ap"]}, {source!r} says '
        f'{published["box"]}/{published["mask"]}')
    assert entry['source_url'], f'{entry["name"]}: no source_url'


def test_pretrained_entries_name_their_source():
    for entry in zoo():
        if entry.get('kind') == 'pretrained':
            assert entry.get('source') and entry.get('url'), entry['name']


def markdown_files() -> List[str]:
    return [osp.join(ROOT, 'README.md'), osp.join(ROOT, 'checkpoints', 'README.md')] + sorted(
        glob.glob(osp.join(ROOT, 'docs', '*.md')))


def table_rows(text: str):
    """(header, row) of every row of every Markdown table."""
    header = None
    for line in text.splitlines():
        if not line.startswith('|'):
            header = None
            continue
        if header is None:
            header = line
        elif not re.match(r'^\|[\s:|-]+\|$', line):
            yield header, line


def test_readme_and_docs_quote_only_published_numbers_with_their_source():
    numbers = published_numbers()
    by_name = {osp.basename(config): config for config in numbers}
    problems = []
    for path in markdown_files():
        with open(path, encoding='utf-8') as file:
            text = file.read()
        for header, line in table_rows(text):
            configs = [by_name[name] for found in CONFIG.findall(line) for name in expand(osp.basename(found))
                       if name in by_name]
            if configs and not any(config.endswith('.py') for config in configs):
                configs = []  # a row about a checkpoint only
            aps = [float(value) for value in AP.findall(line)]
            if not configs or not aps or not AP_HEADER.search(header):
                continue
            allowed = set().union(*(numbers[config] for config in configs))
            wrong = [value for value in aps if value not in allowed]
            where = f'{osp.relpath(path, ROOT)}: {line[:120]}'
            if wrong:
                problems.append(f'{where}: {wrong} published by no source for {sorted(set(configs))}')
            if not SOURCE_WORDS.search(line) and not SOURCE_WORDS.search(header):
                problems.append(f'{where}: the row and its header name no source of the numbers')
    assert not problems, '\n'.join(problems)


def test_zoo_and_readme_agree_for_every_model_the_readme_gives_with_a_readme_source():
    """A README/docs row that attributes a number to the BRS README gives the zoo's number for that model."""
    entries = {(entry['config'], entry['source'].split(',')[0]): entry for entry in zoo() if entry.get('config')
               and entry.get('source')}
    problems = []
    for path in markdown_files():
        with open(path, encoding='utf-8') as file:
            text = file.read()
        for _, line in table_rows(text):
            for found in CONFIG.findall(line):
                for name in expand(osp.basename(found)):
                    for (config, source), entry in entries.items():
                        if osp.basename(config) != name or source not in line:
                            continue
                        published = {entry['box_ap'], entry['mask_ap']} - {None}
                        quoted = {float(v) for v in AP.findall(line.split(source, 1)[1][:40])}
                        if quoted and not quoted & published:
                            problems.append(f'{osp.relpath(path, ROOT)}: {name}: {source} gives '
                                            f'{sorted(published)}, the row quotes {sorted(quoted)}')
    assert not problems, '\n'.join(problems)
