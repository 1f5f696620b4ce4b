"""BRS-DETR (Co-Deformable-DETR with ranking-based losses) on CPU with the tiny configs.

Covers the rank-based query head (RankBasedCoDeformableDETRHead), the BRS/RS/AP/BAP switch by config, the
published settings of the full configs and the released BRS-DETR R50 checkpoint layout.
"""
import copy
import logging
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import brs_detr  # noqa: F401  (registers the models)
from state_dict_layouts import load_layout, random_state_dict
from brs_detr.models.detectors import convert_co_detr_state_dict
from brs_detr.models.losses import RankingLoss
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs', 'brs_detr')
DATA_DIR = osp.join(ROOT, 'tests', 'data')
TINY_CONFIG = osp.join(CONFIG_DIR, 'brs-detr_r18-tiny_1xb2-1e_toy-coco.py')
RS_TINY_CONFIG = osp.join(CONFIG_DIR, 'rs-detr_r18-tiny_1xb2-1e_toy-coco.py')
R50_CONFIG = osp.join(CONFIG_DIR, 'brs-detr_r50_4xb4-12e_coco.py')
RS_R50_CONFIG = osp.join(CONFIG_DIR, 'rs-detr_r50_4xb4-12e_coco.py')
SWIN_T_CONFIG = osp.join(CONFIG_DIR, 'brs-detr_swin-t-p4-w7_4xb4-12e_coco.py')
SWIN_L_CONFIG = osp.join(CONFIG_DIR, 'brs-detr_swin-l-p4-w12_8xb2-12e_coco.py')
CONVERT_TOOL = osp.join(ROOT, 'tools', 'convert_checkpoint.py')
NUM_DEC_LAYERS = 2  # tiny config
NUM_CLASSES = 3
NUM_QUERIES = 30
IMG_SIZE = 128

#: Ranking losses selectable by config, with the delta their papers use.
LOSSES = {
    'BRS': dict(type='BucketedRankSortLoss', delta=0.5),
    'RS': dict(type='RankSortLoss', delta=0.5, method='pairwise'),  # as RS-DETR
    'AP': dict(type='APLoss', delta=1.0),
    'BAP': dict(type='BucketedAPLoss', delta=1.0),
}

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)


def set_ranking_loss(cfg: Config, loss: dict) -> Config:
    """Switch the classification loss of every head (query head, RPN, RoI, ATSS) keeping each head's weight."""
    model = cfg.model
    heads = [model.bbox_head, model.rpn_head, model.roi_head[0].bbox_head, model.aux_bbox_head[0]]
    for head in heads:
        head.loss_cls = dict(loss, loss_weight=head.loss_cls.loss_weight)
    return cfg


def build_tiny(loss_name='BRS', config=TINY_CONFIG, **overrides):
    cfg = set_ranking_loss(Config.fromfile(config), LOSSES[loss_name])
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def build_full(config):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    return cfg, MODELS.build(cfg.model)


def make_sample(boxes, labels, img_shape=(IMG_SIZE, IMG_SIZE), scale=1.0):
    """A data sample as the data preprocessor hands it to the model."""
    sample = DetDataSample(
        metainfo=dict(
            img_shape=img_shape,
            ori_shape=(round(img_shape[0] / scale), round(img_shape[1] / scale)),
            batch_input_shape=(IMG_SIZE, IMG_SIZE),
            pad_shape=(IMG_SIZE, IMG_SIZE),
            scale_factor=(scale, scale)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long))
    return sample


def make_batch(mode='normal'):
    """Two images: both annotated, the second without gt ('one_empty') or neither annotated ('all_empty')."""
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, IMG_SIZE, IMG_SIZE)
    if mode == 'all_empty':
        first = make_sample([], [])
    else:
        first = make_sample([[10, 10, 60, 70], [70, 20, 120, 100]], [0, 2])
    if mode == 'normal':
        second = make_sample([[5, 30, 50, 90]], [1], img_shape=(96, 128))
    else:
        second = make_sample([], [], img_shape=(96, 128))
    return inputs, [first, second]


def expected_loss_keys(with_sort: bool, num_dec_layers: int = NUM_DEC_LAYERS) -> set:
    ranking = ['loss_rank', 'loss_sort'] if with_sort else ['loss_rank']
    keys = set()
    # query head: decoder layers, encoder proposals, positive queries of the RoI (0) and ATSS (1) heads
    for suffix in ['', '_aux0', '_aux1']:
        for name in ranking + ['loss_bbox', 'loss_iou']:
            keys.add(f'{name}{suffix}')
            for layer in range(num_dec_layers - 1):
                keys.add(f'd{layer}.{name}{suffix}')
    keys |= {f'enc_{name}' for name in ranking + ['loss_bbox', 'loss_iou']}
    keys |= {name.replace('loss_', 'loss_rpn_') for name in ranking + ['loss_bbox']}
    for head_idx in (0, 1):  # RoI head, ATSS head: no acc, no centerness
        keys |= {f'{name}{head_idx}' for name in ranking + ['loss_bbox']}
    return keys


def train_step(model, mode='normal'):
    model.train()
    inputs, samples = make_batch(mode)
    losses = model.loss(inputs, samples)
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return losses, loss


@pytest.fixture(scope='module')
def brs_step():
    model = build_tiny('BRS')
    losses, _ = train_step(model)
    return model, losses


@pytest.mark.parametrize('loss_name', ['BRS', 'RS', 'AP', 'BAP'])
def test_train_step_every_loss_key_finite(loss_name, brs_step):
    if loss_name == 'BRS':
        model, losses = brs_step
    else:
        model = build_tiny(loss_name)
        losses, _ = train_step(model)
    with_sort = loss_name in ('BRS', 'RS')
    assert set(losses) == expected_loss_keys(with_sort)
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        if 'sort' not in key:  # the sorting error can be ~0 when few positives share a class
            assert value > 0, key
    expected_type = type(MODELS.build(LOSSES[loss_name]))
    for loss in (model.bbox_head.loss_cls, model.rpn_head.loss_cls, model.roi_head[0].bbox_head.loss_cls,
                 model.aux_bbox_head[0].loss_cls):
        assert type(loss) is expected_type


def test_rs_config_uses_pairwise_rank_sort():
    cfg = Config.fromfile(RS_TINY_CONFIG)
    for head in (cfg.model.bbox_head, cfg.model.rpn_head, cfg.model.roi_head[0].bbox_head,
                 cfg.model.aux_bbox_head[0]):
        assert head.loss_cls.type == 'RankSortLoss' and head.loss_cls.method == 'pairwise'
    rs_model = MODELS.build(cfg.model)
    assert rs_model.bbox_head.loss_cls.method == 'pairwise'
    assert rs_model.bbox_head.loss_cls.loss_weight == 2.0
    assert rs_model.roi_head[0].bbox_head.loss_cls.loss_weight == 5.0
    # the training step of this setting is test_train_step_every_loss_key_finite[RS]
    switched = set_ranking_loss(Config.fromfile(TINY_CONFIG), LOSSES['RS'])
    assert switched.model.to_dict() == Config.fromfile(RS_TINY_CONFIG).model.to_dict()


def test_box_losses_are_value_matched(brs_step):
    """Eq. 17: each box loss takes the value of the ranking loss of its set (rank + sort, weights included)."""
    _, losses = brs_step
    prefixes = [''] + [f'd{layer}.' for layer in range(NUM_DEC_LAYERS - 1)]
    sets = [(p, s) for p in prefixes for s in ['', '_aux0', '_aux1']] + [('enc_', '')]
    for prefix, suffix in sets:
        ranking = losses[f'{prefix}loss_rank{suffix}'] + losses[f'{prefix}loss_sort{suffix}']
        for box in ('loss_bbox', 'loss_iou'):
            torch.testing.assert_close(losses[f'{prefix}{box}{suffix}'], ranking, msg=f'{prefix}{box}{suffix}')
    for head_idx in (0, 1):
        torch.testing.assert_close(losses[f'loss_bbox{head_idx}'],
                                   losses[f'loss_rank{head_idx}'] + losses[f'loss_sort{head_idx}'])


@pytest.mark.parametrize('name', [
    'backbone.conv1.weight', 'neck.convs.0.conv.weight',
    'encoder.layers.0.self_attn.sampling_offsets.weight',
    'decoder.layers.1.cross_attn.value_proj.weight',
    'query_embedding.weight', 'pos_trans_fc.weight', 'memory_trans_fc.weight',
    'bbox_head.cls_branches.0.weight', 'bbox_head.cls_branches.1.weight', 'bbox_head.cls_branches.2.weight',
    'bbox_head.reg_branches.0.4.weight', 'bbox_head.reg_branches.1.4.weight', 'bbox_head.reg_branches.2.4.weight',
    'downsample.0.weight', 'rpn_head.rpn_conv.weight', 'rpn_head.rpn_cls.weight', 'rpn_head.rpn_reg.weight',
    'roi_head.0.bbox_head.fc_cls.weight', 'roi_head.0.bbox_head.fc_reg.weight',
    'roi_head.0.bbox_head.shared_fcs.0.weight',
    'aux_bbox_head.0.atss_cls.weight', 'aux_bbox_head.0.atss_reg.weight',
    'aux_pos_trans.0.weight', 'aux_pos_trans.1.weight', 'pos_feats_trans.0.weight', 'pos_feats_trans.1.weight',
    'head_pos_embed.weight'
])
def test_gradients_reach_every_head(brs_step, name):
    model, _ = brs_step
    param = dict(model.named_parameters())[name]
    assert param.grad is not None, name
    assert torch.isfinite(param.grad).all(), name
    assert param.grad.abs().sum() > 0, name


def test_one_image_without_gt():
    model = build_tiny('BRS')
    losses, loss = train_step(model, 'one_empty')
    assert set(losses) == expected_loss_keys(with_sort=True)
    assert torch.isfinite(loss) and loss > 0
    assert model.aux_pos_trans[1].weight.grad.abs().sum() > 0
    assert model.bbox_head.cls_branches[-1].weight.grad.abs().sum() > 0


def test_batch_where_no_head_finds_a_positive():
    """No gt in the batch: no Hungarian match, no RPN/RoI/ATSS positive, positive queries are all padding.
    Every loss is present, zero and finite; backward runs and gives finite (zero) gradients."""
    model = build_tiny('BRS')
    losses, loss = train_step(model, 'all_empty')
    assert set(losses) == expected_loss_keys(with_sort=True)
    for key, value in losses.items():
        assert torch.isfinite(value) and value == 0, key
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_predict_in_image_coordinates(eval_module):
    model = build_tiny('BRS', eval_module=eval_module)
    model.eval()
    inputs, _ = make_batch()
    samples = [make_sample([], []), make_sample([], [], img_shape=(96, 128), scale=0.5)]
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=True)
    for result, (ori_h, ori_w) in zip(results, [(128, 128), (192, 256)]):
        pred = result.pred_instances
        num = len(pred)
        assert num > 0
        assert pred.bboxes.shape == (num, 4)
        assert pred.scores.shape == pred.labels.shape == (num, )
        assert ((pred.scores >= 0) & (pred.scores <= 1)).all()  # sigmoid probabilities
        assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()
        assert (pred.bboxes[:, 0::2] >= 0).all() and (pred.bboxes[:, 0::2] <= ori_w).all()
        assert (pred.bboxes[:, 1::2] >= 0).all() and (pred.bboxes[:, 1::2] <= ori_h).all()
        if eval_module == 'detr':
            assert num == NUM_QUERIES  # top-k over queries x classes, no NMS
            assert (pred.scores[:-1] >= pred.scores[1:]).all()
    if eval_module == 'detr':
        assert results[1].pred_instances.bboxes[:, 0::2].max() > 128


class _RecordingLoss(torch.nn.Module):
    """Stands in for the ranking loss and records what the head hands it."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.calls = []

    def forward(self, logits, targets):
        self.calls.append((logits.detach().clone(), targets.detach().clone()))
        return self.loss(logits, targets)


def test_iou_targets_use_the_decoded_boxes_of_the_box_loss():
    head = build_tiny('BRS').bbox_head
    recorder = _RecordingLoss(head.loss_cls)
    head.loss_cls = recorder
    metas = [dict(img_shape=(100, 200)), dict(img_shape=(50, 100))]
    num_queries = 4
    torch.manual_seed(3)
    cls_scores = torch.randn(2, num_queries, NUM_CLASSES, requires_grad=True)
    bbox_preds = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1],
                                [0.1, 0.1, 0.1, 0.1]],
                               [[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1],
                                [0.7, 0.7, 0.2, 0.2]]], requires_grad=True)
    bg = NUM_CLASSES
    labels = torch.tensor([1, bg, 0, bg, 2, bg, 2, bg])
    bbox_targets = torch.zeros(8, 4)
    bbox_targets[0] = torch.tensor([0.5, 0.5, 0.5, 0.3])
    bbox_targets[2] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    bbox_targets[4] = torch.tensor([0.5, 0.6, 0.5, 0.5])
    bbox_targets[6] = torch.tensor([0.1, 0.1, 0.1, 0.1])  # disjoint from its prediction: IoU 0
    label_weights = torch.ones(8)
    label_weights[3] = 0  # ignored query
    losses = head.rank_based_detr_loss(cls_scores, bbox_preds, labels, label_weights, bbox_targets, metas)

    logits, targets = recorder.calls[-1]
    assert torch.equal(logits, cls_scores.detach().reshape(-1))
    targets = targets.reshape(8, NUM_CLASSES)
    factors = torch.tensor([[200., 100., 200., 100.]] * 4 + [[100., 50., 100., 50.]] * 4)
    pred_boxes = bbox_cxcywh_to_xyxy(bbox_preds.detach().reshape(-1, 4)) * factors
    gt_boxes = bbox_cxcywh_to_xyxy(bbox_targets) * factors
    for query in (0, 2, 4):
        iou = bbox_overlaps(pred_boxes[query:query + 1], gt_boxes[query:query + 1], is_aligned=True)[0]
        assert 0 < iou < 1
        torch.testing.assert_close(targets[query, labels[query]], iou)
    # a positive whose box misses its gt stays a positive (clamped target), never a negative
    assert targets[6, 2] == head.min_positive_target
    # other columns of positives and every column of negatives are negatives; the ignored query is ignored
    positive = torch.zeros(8, NUM_CLASSES, dtype=torch.bool)
    positive[[0, 2, 4, 6], labels[[0, 2, 4, 6]]] = True
    assert (targets[~positive & (label_weights[:, None] > 0)] == 0).all()
    assert (targets[3] == -1).all()
    # box losses see the same boxes: GIoU on absolute xyxy, L1 on normalised cxcywh; value-matched
    ranking = losses['loss_rank'] + losses['loss_sort']
    torch.testing.assert_close(losses['loss_bbox'], ranking)
    torch.testing.assert_close(losses['loss_iou'], ranking)
    (losses['loss_bbox'] + losses['loss_iou']).backward()
    assert bbox_preds.grad[0, 0].abs().sum() > 0 and bbox_preds.grad[0, 1].abs().sum() == 0


def test_ap_losses_use_binary_targets():
    head = build_tiny('AP').bbox_head
    assert not head.use_iou_targets
    recorder = _RecordingLoss(head.loss_cls)
    head.loss_cls = recorder
    cls_scores = torch.randn(1, 3, NUM_CLASSES)
    bbox_preds = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]])
    labels = torch.tensor([1, NUM_CLASSES, 0])
    bbox_targets = torch.tensor([[0.5, 0.5, 0.5, 0.3], [0, 0, 0, 0], [0.5, 0.5, 0.2, 0.2]])
    losses = head.rank_based_detr_loss(cls_scores, bbox_preds, labels, torch.ones(3), bbox_targets,
                                       [dict(img_shape=(100, 100))])
    assert set(losses) == {'loss_rank', 'loss_bbox', 'loss_iou'}
    targets = recorder.calls[-1][1].reshape(3, NUM_CLASSES)
    assert targets[0, 1] == 1 and targets[2, 0] == 1 and targets.sum() == 2


@pytest.mark.parametrize('override, error, match', [
    (dict(loss_bbox=dict(type='L1Loss', loss_weight=5.0)), ValueError, 'loss_bbox.loss_weight=5.0 has no effect'),
    (dict(loss_iou=dict(type='GIoULoss', loss_weight=2.0)), ValueError, 'loss_iou.loss_weight=2.0 has no effect'),
    (dict(loss_cls=dict(type='FocalLoss', use_sigmoid=True, loss_weight=2.0)), TypeError, 'must be a ranking'),
])
def test_dead_weights_and_score_losses_are_rejected(override, error, match):
    cfg = Config.fromfile(TINY_CONFIG)
    for key, value in override.items():  # replace, not merge
        cfg.model.bbox_head[key] = value
    with pytest.raises(error, match=match):
        MODELS.build(cfg.model)


def test_box_weights_act_without_value_matching():
    cfg = Config.fromfile(TINY_CONFIG)
    head_cfg = cfg.model.bbox_head
    head_cfg.update(value_matched_bbox=False, loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                    loss_iou=dict(type='GIoULoss', loss_weight=2.0), train_cfg=cfg.model.train_cfg[0],
                    as_two_stage=True, num_pred_layer=NUM_DEC_LAYERS + 1)
    head = MODELS.build(head_cfg)
    cls_scores = torch.zeros(1, 2, NUM_CLASSES)  # equal scores: equal box weights
    bbox_preds = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]])
    labels = torch.tensor([1, 0])
    bbox_targets = torch.tensor([[0.5, 0.5, 0.5, 0.3], [0.3, 0.3, 0.2, 0.2]])
    losses = head.rank_based_detr_loss(cls_scores, bbox_preds, labels, torch.ones(2), bbox_targets,
                                       [dict(img_shape=(100, 100))])
    # score-weighted mean over the positives, times the configured weights
    torch.testing.assert_close(losses['loss_bbox'], torch.tensor(5.0 * 0.2 / 2))
    factors = torch.tensor([100., 100., 100., 100.])
    giou = head.loss_iou.loss_weight * (1 - bbox_overlaps(bbox_cxcywh_to_xyxy(bbox_preds[0]) * factors,
                                                          bbox_cxcywh_to_xyxy(bbox_targets) * factors,
                                                          mode='giou', is_aligned=True))
    torch.testing.assert_close(losses['loss_iou'], giou.mean())


@pytest.mark.parametrize('score_weighted', [True, False])
def test_box_losses_score_weighted_or_uniform(score_weighted):
    """Positives' box losses are averaged with their detached max class probability as weight, or uniformly."""
    cfg = Config.fromfile(TINY_CONFIG)
    head_cfg = cfg.model.bbox_head
    head_cfg.update(value_matched_bbox=False, score_weighted_bbox=score_weighted, train_cfg=cfg.model.train_cfg[0],
                    as_two_stage=True, num_pred_layer=NUM_DEC_LAYERS + 1)
    head = MODELS.build(head_cfg)
    cls_scores = torch.full((1, 3, NUM_CLASSES), -4.0, dtype=torch.float64)
    cls_scores[0, 0, 1] = 2.0  # confident positive
    cls_scores[0, 1, 0] = -1.0  # unsure positive; query 2 is background
    bbox_preds = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1]]],
                              dtype=torch.float64)
    bbox_targets = torch.tensor([[0.5, 0.5, 0.5, 0.3], [0.35, 0.3, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]],
                                dtype=torch.float64)
    losses = head.rank_based_detr_loss(cls_scores, bbox_preds, torch.tensor([1, 0, NUM_CLASSES]),
                                       torch.ones(3), bbox_targets, [dict(img_shape=(100, 100))])
    per_positive_l1 = (bbox_preds[0, :2] - bbox_targets[:2]).abs().sum(dim=-1)  # 0.2 and 0.05
    weights = torch.tensor([2.0, -1.0], dtype=torch.float64).sigmoid()
    if not score_weighted:
        weights = torch.ones_like(weights)
    expected = (weights * per_positive_l1).sum() / weights.sum()  # 0.165 score-weighted, 0.125 uniform
    assert float(expected) == pytest.approx(0.165 if score_weighted else 0.125, abs=1e-3)
    torch.testing.assert_close(losses['loss_bbox'], expected.to(losses['loss_bbox'].dtype))


def test_released_settings_r50():
    cfg, model = build_full(R50_CONFIG)
    head = model.bbox_head
    assert type(head).__name__ == 'RankBasedCoDeformableDETRHead'
    assert type(head.loss_cls).__name__ == 'BucketedRankSortLoss' and head.loss_cls.delta == 0.5
    assert head.loss_cls.loss_weight == 2.0 and head.lambda_1 == 1.0  # query head and positive queries
    assert head.value_matched_bbox and head.use_iou_targets
    assert not head.score_weighted_bbox  # the released query head weights its positives' box losses equally
    assert model.roi_head[0].bbox_head.loss_cls.loss_weight == 5.0
    assert model.aux_bbox_head[0].loss_cls.loss_weight == 5.0
    assert model.rpn_head.loss_cls.loss_weight * model.rpn_head.head_weight == 1.0
    for loss in (model.rpn_head.loss_cls, model.roi_head[0].bbox_head.loss_cls, model.aux_bbox_head[0].loss_cls):
        assert isinstance(loss, RankingLoss) and type(loss).__name__ == 'BucketedRankSortLoss'
    assert not hasattr(model.aux_bbox_head[0], 'atss_centerness')
    assert model.roi_head[0].bbox_head.fc_cls.out_features == 80
    # Hungarian class cost 4.0 on the sigmoid logits
    costs = head.assigner.match_costs
    assert type(costs[0]).__name__ == 'FocalLossCost' and costs[0].weight == 4.0
    # no sampling in the two-stage branch; a bounded proposal count
    assert type(model.rpn_head.sampler).__name__ == 'PseudoSampler'
    # every proposal and no gt boxes added as proposals (the released PseudoSampler)
    assert type(model.roi_head[0].bbox_sampler).__name__ == 'PseudoSampler'
    assert cfg.model.train_cfg[1].rpn_proposal.max_per_img == 1000
    # schedule and batch: 12 epochs, steps at 10 and 11 with gamma 0.2, 4 GPUs x 4 images
    assert cfg.train_cfg.max_epochs == 12
    (scheduler, ) = cfg.param_scheduler
    assert scheduler.milestones == [10, 11] and scheduler.gamma == 0.2
    assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer.lr == 2e-4 and cfg.optim_wrapper.clip_grad.max_norm == 0.1


def test_rs_r50_and_swin_configs():
    rs = Config.fromfile(RS_R50_CONFIG)
    brs = Config.fromfile(R50_CONFIG)
    for name in ('bbox_head', 'rpn_head'):
        assert rs.model[name].loss_cls == dict(type='RankSortLoss', method='pairwise', delta=0.5,
                                               loss_weight=brs.model[name].loss_cls.loss_weight)
    assert rs.model.roi_head[0].bbox_head.loss_cls.type == 'RankSortLoss'
    assert rs.model.aux_bbox_head[0].loss_cls.method == 'pairwise'
    assert rs.model.train_cfg == brs.model.train_cfg and rs.param_scheduler == brs.param_scheduler
    swin_t = Config.fromfile(SWIN_T_CONFIG)
    assert swin_t.model.backbone.depths == [2, 2, 6, 2] and swin_t.train_dataloader.batch_size == 4
    swin_l = Config.fromfile(SWIN_L_CONFIG)
    assert swin_l.model.backbone.depths == [2, 2, 18, 2] and swin_l.train_dataloader.batch_size == 2
    for cfg in (swin_t, swin_l):
        assert cfg.model.bbox_head.type == 'RankBasedCoDeformableDETRHead'
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
        assert cfg.param_scheduler[0].milestones == [10, 11]


@pytest.fixture(scope='module')
def official_layout():
    return load_layout('brs-detr_r50_12e_coco')


def test_released_checkpoint_layout_loads_strictly(official_layout):
    """The published BRS-DETR R50 checkpoint (no RoI background row, no ATSS centerness) converts and loads
    strictly into the BRS-DETR R50 config, with the same parameter count."""
    source = random_state_dict(official_layout)
    converted = convert_co_detr_state_dict(source)
    _, model = build_full(R50_CONFIG)
    model.load_state_dict(converted, strict=True)
    assert len(model.state_dict()) == official_layout['num_state_entries']
    assert sum(p.numel() for p in model.parameters()) == official_layout['num_params']
    state = model.state_dict()
    pairs = {
        'roi_head.0.bbox_head.fc_cls.weight': 'roi_head.0.bbox_head.fc_cls.weight',
        'bbox_head.0.atss_cls.weight': 'aux_bbox_head.0.atss_cls.weight',
        'query_head.cls_branches.6.bias': 'bbox_head.cls_branches.6.bias',
        'query_head.transformer.head_pos_embed.weight': 'head_pos_embed.weight',
    }
    for old, new in pairs.items():
        assert torch.equal(source[old], state[new]), old


def test_convert_tool_checks_the_brs_detr_config(tmp_path, official_layout):
    src = tmp_path / 'brs_detr_r50.pth'
    dst = tmp_path / 'brs_detr_r50_converted.pth'
    torch.save({'state_dict': random_state_dict(official_layout, seed=1)}, src)
    done = subprocess.run([sys.executable, CONVERT_TOOL, str(src), str(dst), '--config', R50_CONFIG],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert 'loads strictly' in done.stdout
    # the Co-DETR config (background row, centerness) does not take it
    co_detr = osp.join(ROOT, 'configs', 'co_deformable_detr', 'co_deformable_detr_r50_8xb2-12e_coco.py')
    refused = subprocess.run([sys.executable, CONVERT_TOOL, str(src), str(tmp_path / 'x.pth'), '--config',
                              co_detr], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0


def test_test_mode_build_without_train_cfg():
    model = build_tiny('BRS', train_cfg=None)
    model.eval()
    inputs, samples = make_batch()
    with torch.no_grad():
        results = model.predict(inputs, samples)
    assert len(results[0].pred_instances) == NUM_QUERIES
    assert copy.deepcopy(model.bbox_head.loss_cls).use_sigmoid
