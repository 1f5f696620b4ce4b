"""The remaining rank-based baselines of the BRS paper (issue 7): their configs state the published settings.

Faster R-CNN R101-DCNv2 and Mask R-CNN R101 (36 epochs, multi-scale), the equal-budget Cascade R-CNN (36 epochs) and
Mask R-CNN (27 epochs) of Table 4, and Mask R-CNN on Cityscapes and LVIS v1. tests/test_all_configs.py builds each of
them, trains a step and runs their pipelines; this file checks what each config is meant to reproduce (backbone,
scales, schedule, data, initialisation, evaluation) and that every BRS config differs from its RS config only by the
loss. The values come from the authors' configs and training logs (docs/rank_based_heads.md lists the sources).
"""
import importlib.util
import json
import os.path as osp
from typing import List

import pytest
from mmcv.ops import ModulatedDeformConv2dPack
from mmengine.config import Config

import brs_detr  # noqa: F401  (registers the rank-based heads)
from mmdet.registry import DATASETS, METRICS, MODELS
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RANK_BASED = osp.join(ROOT, 'configs', 'rank_based')
MODEL_ZOO_INDEX = osp.join(ROOT, 'checkpoints', 'model_zoo.json')

FASTER_R101 = 'rs-faster-rcnn_r101-mdconv-group4-c3-c5_fpn_ms-4xb4-36e_coco.py'
MASK_R101 = 'rs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py'
CITYSCAPES = 'rs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py'
LVIS = 'rs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py'
#: Each BRS config of this issue and the config it must equal, up to the loss.
BRS_OF_RS = {
    'brs-faster-rcnn_r101-mdconv-group4-c3-c5_fpn_ms-4xb4-36e_coco.py': FASTER_R101,
    'brs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py': MASK_R101,
    'brs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py': CITYSCAPES,
    'brs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py': LVIS,
}
#: The equal-budget runs of Table 4: config -> (the 12-epoch config it extends, epochs, lr steps).
LONGER_SCHEDULES = {
    'brs-cascade-rcnn_r50_fpn_4xb4-36e_coco.py': ('brs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py', 36, [27, 33]),
    'brs-mask-rcnn_r50_fpn_4xb4-27e_coco.py': ('brs-mask-rcnn_r50_fpn_4xb4-12e_coco.py', 27, [20, 25]),
}
NEW_CONFIGS = sorted(set(BRS_OF_RS) | set(BRS_OF_RS.values()) | set(LONGER_SCHEDULES))
#: mmdet's COCO Mask R-CNN R50-FPN 1x, the initialisation of the authors' Cityscapes runs.
COCO_MASK_RCNN_INIT = ('https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_1x_coco/'
                       'mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth')

register_all_modules()


def load(name: str) -> Config:
    return Config.fromfile(osp.join(RANK_BASED, name))


def innermost(dataset_cfg):
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def transform(pipeline: list, type_name: str) -> dict:
    found = [t for t in pipeline if t['type'] == type_name]
    assert len(found) == 1, f'{type_name} in {[t["type"] for t in pipeline]}'
    return found[0]


def schedule(cfg: Config) -> tuple:
    """(epochs, lr steps, warm-up iterations) of an epoch-based step schedule."""
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and not warmup.by_epoch and warmup.start_factor == 0.001
    assert steps.type == 'MultiStepLR' and steps.by_epoch and steps.end == cfg.train_cfg.max_epochs
    return cfg.train_cfg.max_epochs, list(steps.milestones), warmup.end


def with_rs_loss(node):
    """``node`` with every BucketedRankSortLoss replaced by RankSortLoss."""
    if isinstance(node, dict):
        return {key: ('RankSortLoss' if key == 'type' and value == 'BucketedRankSortLoss' else with_rs_loss(value))
                for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(with_rs_loss(value) for value in node)
    return node


def ranking_losses(model_cfg: dict) -> List[str]:
    heads = [model_cfg['rpn_head']] + (model_cfg['roi_head']['bbox_head']
                                       if isinstance(model_cfg['roi_head']['bbox_head'], list)
                                       else [model_cfg['roi_head']['bbox_head']])
    return [head['loss_cls']['type'] for head in heads]


# ------------------------------------------------------------------------------------------------ COCO R101
def test_faster_rcnn_r101_is_the_published_dcn_multiscale_model():
    cfg = load(FASTER_R101)
    backbone = cfg.model.backbone
    assert backbone.depth == 101 and backbone.init_cfg.checkpoint == 'torchvision://resnet101'
    assert backbone.dcn == dict(type='DCNv2', deform_groups=4, fallback_on_stride=False)
    assert tuple(backbone.stage_with_dcn) == (False, True, True, True)
    resize = transform(cfg.train_dataloader.dataset.pipeline, 'RandomChoiceResize')
    assert [tuple(s) for s in resize.scales] == [(1333, short) for short in (480, 560, 640, 720, 800, 880, 960)]
    assert resize.keep_ratio
    assert tuple(transform(cfg.test_dataloader.dataset.pipeline, 'Resize').scale) == (1333, 800)
    assert schedule(cfg) == (36, [27, 33], 500)
    assert cfg.optim_wrapper.optimizer.lr == 0.012 and cfg.train_dataloader.batch_size == 4
    assert ranking_losses(cfg.model) == ['RankSortLoss'] * 2 and cfg.model.test_cfg.rcnn.score_thr == 0.40


def test_faster_rcnn_r101_has_modulated_deformable_convs_in_c3_to_c5_only():
    cfg = load(FASTER_R101)
    cfg.model.backbone.init_cfg = None
    backbone = MODELS.build(cfg.model.backbone)
    for stage, expected in zip(('layer1', 'layer2', 'layer3', 'layer4'), (False, True, True, True)):
        convs = [block.conv2 for block in getattr(backbone, stage)]
        assert all(isinstance(conv, ModulatedDeformConv2dPack) == expected for conv in convs), stage
        if expected:
            assert all(conv.deform_groups == 4 for conv in convs)
    assert len([m for m in backbone.modules() if isinstance(m, ModulatedDeformConv2dPack)]) == 4 + 23 + 3


def test_mask_rcnn_r101_is_the_published_multiscale_model():
    cfg = load(MASK_R101)
    backbone = cfg.model.backbone
    assert backbone.depth == 101 and backbone.init_cfg.checkpoint == 'torchvision://resnet101'
    assert backbone.get('dcn') is None
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert transform(pipeline, 'LoadAnnotations').with_mask
    resize = transform(pipeline, 'RandomChoiceResize')
    assert [tuple(s) for s in resize.scales] == [(1333, short) for short in (640, 672, 704, 736, 768, 800)]
    assert schedule(cfg) == (36, [27, 33], 500)
    assert cfg.model.roi_head.mask_head.type == 'RankBasedFCNMaskHead'


# ------------------------------------------------------------------------------------------------ Table 4
@pytest.mark.parametrize('name', sorted(LONGER_SCHEDULES))
def test_equal_budget_runs_only_train_longer(name):
    base_name, epochs, steps = LONGER_SCHEDULES[name]
    cfg, base = load(name), load(base_name)
    assert schedule(cfg) == (epochs, steps, 500)
    changed = {key for key in set(cfg.keys()) | set(base.keys())
               if key not in ('filename', 'param_scheduler', 'train_cfg', 'max_epochs')
               and cfg.get(key) != base.get(key)}
    assert not changed, f'{name} differs from {base_name} in {sorted(changed)}'
    assert cfg.train_cfg.val_interval == base.train_cfg.val_interval


# ------------------------------------------------------------------------------------------------ Cityscapes, LVIS
def test_cityscapes_run_starts_from_coco_and_trains_96_passes():
    cfg = load(CITYSCAPES)
    assert cfg.load_from == COCO_MASK_RCNN_INIT and cfg.model.backbone.init_cfg is None
    assert cfg.model.roi_head.bbox_head.num_classes == 8 and cfg.model.roi_head.mask_head.num_classes == 8
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == 'RepeatDataset' and dataset.times == 8 and dataset.dataset.type == 'CityscapesDataset'
    resize = transform(dataset.dataset.pipeline, 'RandomResize')
    assert [tuple(s) for s in resize.scale] == [(2048, 800), (2048, 1024)] and resize.keep_ratio
    assert tuple(transform(cfg.test_dataloader.dataset.pipeline, 'Resize').scale) == (2048, 1024)
    assert schedule(cfg) == (12, [8], 500)
    assert cfg.optim_wrapper.optimizer.lr == 0.012 and cfg.train_dataloader.batch_size == 4
    assert cfg.model.test_cfg.rcnn.score_thr == 0.40
    assert {metric.type for metric in cfg.val_evaluator} == {'CocoMetric', 'CityScapesMetric'}


def test_lvis_run_uses_repeat_factor_sampling_and_300_detections():
    cfg = load(LVIS)
    assert cfg.model.backbone.init_cfg.checkpoint == 'torchvision://resnet50' and cfg.get('load_from') is None
    assert cfg.model.roi_head.bbox_head.num_classes == 1203 and cfg.model.roi_head.mask_head.num_classes == 1203
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == 'ClassBalancedDataset' and dataset.oversample_thr == 1e-3
    assert dataset.dataset.type == 'LVISV1Dataset'
    resize = transform(dataset.dataset.pipeline, 'RandomChoiceResize')
    assert [tuple(s) for s in resize.scales] == [(1333, short) for short in (640, 672, 704, 736, 768, 800)]
    assert cfg.model.test_cfg.rcnn.score_thr == 0.60 and cfg.model.test_cfg.rcnn.max_per_img == 300
    assert schedule(cfg) == (12, [8, 11], 500)
    assert cfg.optim_wrapper.optimizer.lr == 0.012 and cfg.train_dataloader.batch_size == 4
    assert cfg.val_evaluator.type == 'LVISMetric'


@pytest.mark.parametrize('name', [CITYSCAPES, LVIS])
def test_other_datasets_use_the_coco_rank_based_mask_rcnn(name):
    """The model fragment _base_/models/rs-mask-rcnn_r50_fpn.py gives the COCO RS-Mask R-CNN's heads and training
    settings; only the class count, the initialisation and the test thresholds differ. Both match low-quality
    proposals in the R-CNN assigner, as mmdet's and the authors' Mask R-CNN bases do."""
    model = load(name).model.to_dict()
    coco = load('rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py').model.to_dict()
    for cfg in (model, coco):
        cfg['backbone'].pop('init_cfg')
        cfg['roi_head']['bbox_head'].pop('num_classes')
        cfg['roi_head']['mask_head'].pop('num_classes')
        cfg.pop('test_cfg')
    assert model['train_cfg']['rcnn']['assigner']['match_low_quality'] is True
    assert coco['train_cfg']['rcnn']['assigner']['match_low_quality'] is True
    assert model == coco


# ------------------------------------------------------------------------------------------------ BRS = RS + loss
@pytest.mark.parametrize('brs_name', sorted(BRS_OF_RS))
def test_brs_config_is_its_rs_config_with_the_bucketed_loss(brs_name):
    brs, rs = load(brs_name), load(BRS_OF_RS[brs_name])
    assert set(ranking_losses(brs.model)) == {'BucketedRankSortLoss'}
    assert set(ranking_losses(rs.model)) == {'RankSortLoss'}
    for key in set(brs.keys()) | set(rs.keys()):
        if key != 'filename':
            assert with_rs_loss(brs.to_dict().get(key)) == rs.to_dict().get(key), key


# ------------------------------------------------------------------------------------------------ optional packages
@pytest.mark.skipif(importlib.util.find_spec('lvis') is not None, reason='the LVIS API is installed')
def test_lvis_without_its_api_fails_clearly_only_when_reading_or_evaluating(tmp_path):
    cfg = load(LVIS)
    MODELS.build(dict(cfg.model, backbone=dict(cfg.model.backbone, init_cfg=None)))  # the model needs no lvis
    dataset_cfg = dict(innermost(cfg.train_dataloader.dataset), data_root=str(tmp_path))
    with pytest.raises(ImportError, match='lvis-api'):
        DATASETS.build(dataset_cfg)
    with pytest.raises(RuntimeError, match='lvis-api'):
        METRICS.build(dict(cfg.val_evaluator, ann_file=str(tmp_path / 'lvis_v1_val.json')))


@pytest.mark.skipif(importlib.util.find_spec('cityscapesscripts') is not None, reason='cityscapesscripts installed')
# mmdet's CityScapesMetric.__init__ raises before setting what its __del__ reads; the error of __del__ is mmdet's
@pytest.mark.filterwarnings('ignore:Exception ignored in.*CityScapesMetric.__del__:pytest.PytestUnraisableExceptionWarning')
def test_cityscapes_metric_without_its_package_fails_clearly():
    cityscapes_metric = [metric for metric in load(CITYSCAPES).val_evaluator if metric.type == 'CityScapesMetric']
    with pytest.raises(RuntimeError, match='pip install cityscapesscripts'):
        METRICS.build(cityscapes_metric[0])


# ------------------------------------------------------------------------------------------------ model zoo
@pytest.mark.parametrize('name', NEW_CONFIGS)
def test_new_baseline_is_listed_in_the_model_zoo(name):
    with open(MODEL_ZOO_INDEX) as f:
        configs = {entry.get('config') for entry in json.load(f)['models']}
    assert f'configs/rank_based/{name}' in configs

