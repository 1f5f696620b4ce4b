"""Hungarian matching under mixed precision: Float32HungarianAssigner against mmdet's HungarianAssigner.

Half-precision logits and boxes are forced into the matcher on the CPU, as the query head hands them over under
``--amp``: a confident logit (sigmoid 1.0 in float16) makes mmdet's float16 focal cost -inf and scipy refuses the
matrix (mmdetection issue #11416); the float32 assigner gives the float32 matching.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

import brs_detr  # noqa: F401  (registers the models)
from brs_detr.models.task_modules import Float32HungarianAssigner, NonFiniteMatchingCost
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import register_all_modules

register_all_modules()
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: BRS-DETR's matching costs (configs/brs_detr/brs-detr_r50_4xb4-12e_coco.py).
MATCH_COSTS = [dict(type='FocalLossCost', weight=4.0), dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
               dict(type='IoUCost', iou_mode='giou', weight=2.0)]
IMG_META = dict(img_shape=(800, 1333), img_path='val/000001.jpg')
#: A logit whose sigmoid rounds to 1.0 in float16 (above about 7.6).
SATURATED_LOGIT = 12.0


def predictions(dtype: torch.dtype, saturated: bool = True) -> InstanceData:
    """300 queries x 3 classes and absolute xyxy boxes on a 1333x800 image, in ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 3, generator=generator) * 4
    if saturated:
        logits[5, 1] = SATURATED_LOGIT
    corner = torch.rand(300, 2, generator=generator) * torch.tensor([1000.0, 600.0])
    size = torch.rand(300, 2, generator=generator) * 300 + 10
    boxes = torch.cat([corner, corner + size], dim=1)
    # the float32 reference sees exactly the float16 values
    return InstanceData(scores=logits.half().to(dtype), bboxes=boxes.half().to(dtype))


def ground_truth() -> InstanceData:
    return InstanceData(bboxes=torch.tensor([[100., 100., 400., 300.], [500., 200., 900., 700.],
                                             [30., 400., 300., 790.]]), labels=torch.tensor([1, 0, 2]))


def build(assigner_type: str):
    return TASK_UTILS.build(dict(type=assigner_type, match_costs=MATCH_COSTS))


def test_half_precision_predictions_break_mmdet_matching():
    with pytest.raises(ValueError, match='invalid numeric entries'):
        build('HungarianAssigner').assign(predictions(torch.float16), ground_truth(), IMG_META)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('saturated', [True, False])
def test_float32_assigner_matches_as_in_float32(dtype, saturated):
    expected = build('HungarianAssigner').assign(predictions(torch.float32, saturated), ground_truth(), IMG_META)
    preds = predictions(dtype, saturated)
    if dtype == torch.bfloat16:  # bfloat16 rounds differently: its own values in float32
        expected = build('HungarianAssigner').assign(
            InstanceData(scores=preds.scores.float(), bboxes=preds.bboxes.float()), ground_truth(), IMG_META)
    with torch.autocast('cpu', dtype=dtype):
        result = build('Float32HungarianAssigner').assign(preds, ground_truth(), IMG_META)
    assert torch.equal(result.gt_inds, expected.gt_inds)
    assert torch.equal(result.labels, expected.labels)
    assert (result.gt_inds > 0).sum() == 3


def test_nan_predictions_fail_with_a_clear_message():
    preds = predictions(torch.float32)
    preds.scores[7, 0] = float('nan')
    with pytest.raises(ValueError, match='invalid numeric entries'):  # mmdet: scipy's message
        build('HungarianAssigner').assign(preds, ground_truth(), IMG_META)
    with pytest.raises(NonFiniteMatchingCost, match=r'FocalLossCost of the Hungarian matching has 1 NaN/Inf entries '
                                                    r'in its \(300, 3\) cost matrix \(image val/000001.jpg\); '
                                                    r'NaN/Inf predictions: scores 1 of 900, boxes 0 of 1200'):
        build('Float32HungarianAssigner').assign(preds, ground_truth(), IMG_META)


def test_empty_inputs_and_the_configs_use_it():
    empty = build('Float32HungarianAssigner').assign(predictions(torch.float16),
                                                      InstanceData(bboxes=torch.zeros(0, 4),
                                                                   labels=torch.zeros(0, dtype=torch.long)), IMG_META)
    assert (empty.gt_inds == 0).all()
    for config in ('configs/brs_detr/brs-detr_r50_4xb4-12e_coco.py',
                   'configs/co_deformable_detr/co_deformable_detr_r50_8xb2-12e_coco.py',
                   'configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py',
                   'configs/co_deformable_detr/co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py'):
        assert Config.fromfile(osp.join(ROOT, config)).model.train_cfg[0].assigner.type == 'Float32HungarianAssigner'


def test_query_head_names_itself_when_matching_fails():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py'))
    torch.manual_seed(0)
    head = MODELS.build(cfg.model).bbox_head
    assert isinstance(head.assigner, Float32HungarianAssigner)
    scores = torch.randn(30, 3)
    scores[0, 1] = float('nan')  # the column of the ground truth's class
    gt = InstanceData(bboxes=torch.tensor([[10., 10., 60., 70.]]), labels=torch.tensor([1]))
    with pytest.raises(NonFiniteMatchingCost, match=r'^RankBasedCoDeformableDETRHead, one-to-one matching of 30 '
                                                    r'queries .*FocalLossCost'):
        head._get_targets_single(scores, torch.rand(30, 4), gt, dict(img_shape=(128, 128)))
