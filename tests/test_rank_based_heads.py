"""Rank-based CNN heads (ATSS, RPN, RoI box head) switched between RS, BRS, AP and BAP by config, on CPU.

Tiny models: 3 classes, 64 px images, feature maps of at most 16 x 16, random init (no weights downloaded).
"""
import glob
import logging
import os.path as osp
from typing import Dict, List

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import brs_detr  # noqa: F401  (registers the losses)
import brs_detr.models.dense_heads.rank_based_atss_head  # noqa: F401  (registers RankBasedATSSHead)
import brs_detr.models.dense_heads.rank_based_rpn_head  # noqa: F401  (registers RankBasedRPNHead)
import brs_detr.models.roi_heads.bbox_heads  # noqa: F401  (registers the rank-based box heads)
from brs_detr.models.dense_heads.rank_based_atss_head import RankBasedATSSHead
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RANK_BASED_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'rank_based', '*.py')))
NUM_CLASSES = 3
IMG_SIZE = 64
CHANNELS = 8

#: The four ranking losses, each with its published delta.
LOSSES = {
    'RS': dict(type='RankSortLoss', delta=0.5, loss_weight=1.0),
    'BRS': dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0),
    'AP': dict(type='APLoss', delta=1.0, loss_weight=1.0),
    'BAP': dict(type='BucketedAPLoss', delta=1.0, loss_weight=1.0),
}
WITH_SORT = {'RS': True, 'BRS': True, 'AP': False, 'BAP': False}

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------- helpers
def make_sample(boxes: List[List[float]], labels: List[int]) -> DetDataSample:
    """A data sample as the data preprocessor hands it to the model (64 x 64, no resize)."""
    sample = DetDataSample(metainfo=dict(img_shape=(IMG_SIZE, IMG_SIZE), ori_shape=(IMG_SIZE, IMG_SIZE),
                                         pad_shape=(IMG_SIZE, IMG_SIZE), batch_input_shape=(IMG_SIZE, IMG_SIZE),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       labels=torch.tensor(labels, dtype=torch.long))
    return sample


def batch_with_empty_image() -> List[DetDataSample]:
    """Two images: one with three objects, one without any ground truth."""
    return [make_sample([[4, 6, 30, 34], [20, 18, 60, 58], [36, 2, 52, 22]], [0, 2, 1]), make_sample([], [])]


def features(strides, batch: int = 2, seed: int = 0) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, CHANNELS, IMG_SIZE // s, IMG_SIZE // s, generator=generator) for s in strides]


def capture_targets(head) -> List[torch.Tensor]:
    """Record the targets every call of ``head.loss_cls`` receives."""
    seen = []
    original = head.loss_cls.forward

    def spy(logits, targets):
        seen.append(targets.detach().clone())
        return original(logits, targets)

    head.loss_cls.forward = spy
    return seen


def check_losses(losses: Dict[str, torch.Tensor], expected_keys: set) -> torch.Tensor:
    assert set(losses) == expected_keys
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (key, value)
    return sum(losses.values())


def grad_norm(module: torch.nn.Module) -> float:
    return float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))


# ----------------------------------------------------------------------------------------------- ATSS
ATSS_STRIDES = (8, 16)


def build_atss(loss: str, **overrides) -> RankBasedATSSHead:
    cfg = dict(
        type='RankBasedATSSHead', num_classes=NUM_CLASSES, in_channels=CHANNELS, feat_channels=CHANNELS,
        stacked_convs=1, norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=4, scales_per_octave=1,
                              strides=list(ATSS_STRIDES)),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=LOSSES[loss], loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.6),
                      max_per_img=20))
    cfg.update(overrides)
    torch.manual_seed(0)
    head = MODELS.build(ConfigDict(cfg))
    head.init_weights()
    return head


@pytest.mark.parametrize('loss', list(LOSSES))
def test_atss_loss_step(loss):
    head = build_atss(loss)
    assert head.use_iou_targets is WITH_SORT[loss]
    assert not any('centerness' in name for name, _ in head.named_parameters())
    assert head.atss_cls.out_channels == NUM_CLASSES  # sigmoid, no background column
    seen = capture_targets(head)
    losses = head.loss(features(ATSS_STRIDES), batch_with_empty_image())
    keys = {'loss_rank', 'loss_sort', 'loss_bbox'} if WITH_SORT[loss] else {'loss_rank', 'loss_bbox'}
    total = check_losses(losses, keys)
    assert losses['loss_rank'] > 0
    # value matching (Eq. 17): the box loss has the value of the ranking loss
    torch.testing.assert_close(losses['loss_bbox'], losses['loss_rank'] + losses.get('loss_sort', 0))
    total.backward()
    for module in (head.atss_cls, head.atss_reg, head.cls_convs, head.reg_convs):
        assert grad_norm(module) > 0
    # one call over all anchors x classes of the batch; only the first image has positives
    (targets,) = seen
    num_anchors = sum((IMG_SIZE // s) ** 2 for s in ATSS_STRIDES)
    assert targets.shape == (2 * num_anchors * NUM_CLASSES,)
    per_image = targets.view(2, num_anchors, NUM_CLASSES)
    assert (per_image[0] > 0).any() and not (per_image[1] > 0).any()
    if not WITH_SORT[loss]:
        assert set(targets[targets > 0].unique().tolist()) == {1.0}


@pytest.mark.parametrize('loss', ['BRS', 'BAP'])
def test_atss_batch_without_ground_truth(loss):
    head = build_atss(loss)
    feats = [f.requires_grad_() for f in features(ATSS_STRIDES)]
    losses = head.loss(feats, [make_sample([], []), make_sample([], [])])
    total = check_losses(losses, set(losses))
    assert float(total.detach()) == 0
    total.backward()  # connected to the graph, zero gradient
    assert all(f.grad is not None and float(f.grad.abs().sum()) == 0 for f in feats)


def test_atss_iou_targets_are_overlaps_of_decoded_predictions():
    """Constant regression deltas: every positive's target is IoU(decode(anchor, delta), gt), decoded here with
    an independent coder of the same settings."""
    head = build_atss('BRS')
    torch.nn.init.zeros_(head.atss_reg.weight)
    delta = torch.tensor([0.5, -0.3, 0.4, -0.2])
    with torch.no_grad():
        head.atss_reg.bias.copy_(delta)
    gt = [[10, 12, 42, 40]]
    seen = capture_targets(head)
    head.loss(features(ATSS_STRIDES, batch=1), [make_sample(gt, [1])])
    targets = seen[0].view(-1, NUM_CLASSES)
    anchors = torch.cat(head.prior_generator.grid_priors([(IMG_SIZE // s, IMG_SIZE // s) for s in ATSS_STRIDES],
                                                         device='cpu'))
    pos = (targets > 0).nonzero()
    assert len(pos) > 0 and (pos[:, 1] == 1).all()  # positives sit in their gt's class column
    coder = TASK_UTILS.build(dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]))
    decoded = coder.decode(anchors[pos[:, 0]], delta.expand(len(pos), 4))
    expected = bbox_overlaps(decoded, torch.tensor(gt, dtype=torch.float32)).squeeze(1)
    anchor_ious = bbox_overlaps(anchors[pos[:, 0]], torch.tensor(gt, dtype=torch.float32)).squeeze(1)
    assert not torch.allclose(expected, anchor_ious)  # the targets do depend on the predicted deltas
    torch.testing.assert_close(targets[pos[:, 0], 1], expected)


@pytest.mark.parametrize('loss', ['RS', 'BAP'])
def test_atss_predict(loss):
    head = build_atss(loss)
    head.eval()
    with torch.no_grad():
        results = head.predict(features(ATSS_STRIDES), batch_with_empty_image(), rescale=True)
    assert len(results) == 2
    for result in results:
        num = len(result)
        assert 0 < num <= 20
        assert result.bboxes.shape == (num, 4) and result.scores.shape == (num,) and result.labels.shape == (num,)
        assert ((result.scores >= 0) & (result.scores <= 1)).all()
        assert ((result.labels >= 0) & (result.labels < NUM_CLASSES)).all()


def test_atss_rejects_dead_box_weight_and_centerness():
    with pytest.raises(ValueError, match='loss_weight=2.0 has no effect'):
        build_atss('BRS', loss_bbox=dict(type='GIoULoss', loss_weight=2.0))
    build_atss('BRS', loss_bbox=dict(type='GIoULoss', loss_weight=2.0), value_matched_bbox=False)
    with pytest.raises(ValueError, match='no centerness branch'):
        build_atss('BRS', loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True))
    with pytest.raises(TypeError, match='must be a ranking loss'):
        build_atss('BRS', loss_cls=dict(type='FocalLoss', use_sigmoid=True))


def test_atss_without_value_matching_keeps_weighted_giou():
    """value_matched_bbox=False: loss_bbox is the score-weighted mean GIoU loss times its loss_weight."""
    head = build_atss('RS', value_matched_bbox=False, loss_bbox=dict(type='GIoULoss', loss_weight=2.0))
    losses = head.loss(features(ATSS_STRIDES), batch_with_empty_image())
    assert 0 < losses['loss_bbox'].item() <= 2 * 2.0  # GIoU loss lies in [0, 2]
    assert not torch.isclose(losses['loss_bbox'], losses['loss_rank'] + losses['loss_sort'])


# ----------------------------------------------------------------------------------------------- mixin
def test_targets_and_weights_on_hand_made_boxes():
    """IoU targets against mmdet's bbox_overlaps, score weights and value matching on a hand-made case."""
    head = build_atss('RS')
    seen = capture_targets(head)
    # 4 predictions x 3 classes: prediction 0 (class 2) and 2 (class 0) are positive, 1 background, 3 ignored
    logits = torch.tensor([[0.0, -1.0, 2.0], [1.0, 0.5, -2.0], [3.0, -1.0, 0.0], [5.0, 5.0, 5.0]],
                          requires_grad=True)
    labels = torch.tensor([2, NUM_CLASSES, 0, NUM_CLASSES])
    valid = torch.tensor([True, True, True, False])
    preds = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]], requires_grad=True)
    gts = torch.tensor([[2.0, 1.0, 12.0, 9.0], [0.0, 0.0, 20.0, 20.0]])
    losses = head.rank_based_loss(logits, labels, valid, preds, gts, preds, gts)
    ious = bbox_overlaps(preds.detach(), gts, is_aligned=True)
    expected = torch.zeros(4, NUM_CLASSES)
    expected[0, 2], expected[2, 0] = ious[0], ious[1]
    expected[3] = -1
    torch.testing.assert_close(seen[0], expected.reshape(-1))
    # box loss: GIoU per positive weighted by its max class probability, then value-matched
    giou = head.loss_bbox(preds, gts, reduction_override='none')
    weights = torch.sigmoid(torch.tensor([2.0, 3.0]))
    unmatched = (weights * giou).sum() / weights.sum()
    scale = (losses['loss_rank'] + losses['loss_sort']) / unmatched
    torch.testing.assert_close(losses['loss_bbox'], unmatched * scale)
    losses['loss_bbox'].backward()
    assert logits.grad is None or float(logits.grad.abs().sum()) == 0  # weights and ratio are detached
    assert float(preds.grad.abs().sum()) > 0


def test_positive_with_zero_iou_stays_positive():
    head = build_atss('BRS')
    seen = capture_targets(head)
    logits = torch.zeros(2, NUM_CLASSES)
    preds = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    gts = torch.tensor([[30.0, 30.0, 40.0, 40.0]])  # disjoint: IoU 0
    head.rank_based_loss(logits, torch.tensor([1, NUM_CLASSES]), torch.ones(2, dtype=torch.bool), preds, gts,
                         preds, gts)
    assert float(seen[0].view(2, NUM_CLASSES)[0, 1]) == pytest.approx(head.min_positive_target)


# ----------------------------------------------------------------------------------------------- RPN
RPN_STRIDES = (8, 16)


def build_rpn(loss: str, **overrides):
    cfg = dict(
        type='RankBasedRPNHead', in_channels=CHANNELS, feat_channels=CHANNELS,
        anchor_generator=dict(type='AnchorGenerator', scales=[4], ratios=[0.5, 1.0, 2.0], strides=list(RPN_STRIDES)),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_decoded_bbox=True, loss_cls=LOSSES[loss], loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        head_weight=0.2,
        train_cfg=ConfigDict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=ConfigDict(nms_pre=200, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0))
    cfg.update(overrides)
    torch.manual_seed(0)
    head = MODELS.build(cfg)
    head.init_weights()
    return head


def rpn_sample(sample: DetDataSample) -> DetDataSample:
    sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)  # as TwoStageDetector does
    return sample


@pytest.mark.parametrize('loss', list(LOSSES))
def test_rpn_loss_step(loss):
    head = build_rpn(loss)
    assert head.rpn_cls.out_channels == 3  # one sigmoid objectness per anchor
    seen = capture_targets(head)
    losses = head.loss(features(RPN_STRIDES), [rpn_sample(s) for s in batch_with_empty_image()])
    keys = {'loss_rpn_rank', 'loss_rpn_bbox'} | ({'loss_rpn_sort'} if WITH_SORT[loss] else set())
    total = check_losses(losses, keys)
    torch.testing.assert_close(losses['loss_rpn_bbox'], losses['loss_rpn_rank'] + losses.get('loss_rpn_sort', 0))
    total.backward()
    for module in (head.rpn_cls, head.rpn_reg, head.rpn_conv):
        assert grad_norm(module) > 0
    (targets,) = seen
    num_anchors = 3 * sum((IMG_SIZE // s) ** 2 for s in RPN_STRIDES)
    assert targets.shape == (2 * num_anchors,)  # all anchors of both images, no sampling
    assert (targets > 0).any() and (targets == 0).sum() > 256 and (targets < 0).any()  # ignored band kept out


def test_rpn_head_weight_scales_every_loss():
    feats = features(RPN_STRIDES)
    batch = [rpn_sample(s) for s in batch_with_empty_image()]
    low = build_rpn('BRS', head_weight=0.2).loss(feats, batch)
    full = build_rpn('BRS', head_weight=1.0).loss(feats, batch)
    for key in low:
        torch.testing.assert_close(low[key], 0.2 * full[key])


def test_rpn_iou_targets_use_the_head_coder():
    """Constant regression deltas: every positive target is IoU(decode(anchor, delta), gt) with the head's stds
    (the released BRS RPN decoded them with hard-coded stds and without anchors)."""
    stds = [0.2, 0.2, 0.5, 0.5]
    head = build_rpn('RS', bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=stds))
    torch.nn.init.zeros_(head.rpn_reg.weight)
    delta = torch.tensor([0.3, 0.2, -0.4, 0.3])
    with torch.no_grad():
        head.rpn_reg.bias.copy_(delta.repeat(3))
    gt = [[8, 10, 40, 36]]
    seen = capture_targets(head)
    head.loss(features(RPN_STRIDES, batch=1), [rpn_sample(make_sample(gt, [0]))])
    anchors = torch.cat(head.prior_generator.grid_priors([(IMG_SIZE // s, IMG_SIZE // s) for s in RPN_STRIDES],
                                                         device='cpu'))
    pos = (seen[0] > 0).nonzero().squeeze(1)
    assert len(pos) > 0
    coder = TASK_UTILS.build(dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=stds))
    decoded = coder.decode(anchors[pos], delta.expand(len(pos), 4))
    expected = bbox_overlaps(decoded, torch.tensor(gt, dtype=torch.float32)).squeeze(1)
    torch.testing.assert_close(seen[0][pos], expected)


def test_rpn_with_l1_on_deltas():
    head = build_rpn('BRS', reg_decoded_bbox=False, loss_bbox=dict(type='L1Loss', loss_weight=1.0))
    losses = head.loss(features(RPN_STRIDES), [rpn_sample(s) for s in batch_with_empty_image()])
    check_losses(losses, {'loss_rpn_rank', 'loss_rpn_sort', 'loss_rpn_bbox'})
    torch.testing.assert_close(losses['loss_rpn_bbox'], losses['loss_rpn_rank'] + losses['loss_rpn_sort'])


def test_rpn_rejects_a_sampler():
    train_cfg = build_rpn('BRS').train_cfg.copy()
    train_cfg.sampler = dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False)
    with pytest.raises(ValueError, match='no sampling'):
        build_rpn('BRS', train_cfg=train_cfg)


def test_rpn_predict():
    head = build_rpn('BRS')
    head.eval()
    with torch.no_grad():
        results = head.predict(features(RPN_STRIDES), batch_with_empty_image())
    for result in results:
        num = len(result)
        assert 0 < num <= 50 and result.bboxes.shape == (num, 4) and result.scores.shape == (num,)


# ----------------------------------------------------------------------------------------------- Faster R-CNN
def faster_rcnn_cfg(loss: str) -> ConfigDict:
    """A tiny Faster R-CNN (ResNet-18 at 1/8 width, 3-level FPN) with the rank-based RPN and RoI box head."""
    rank_loss = LOSSES[loss]
    return ConfigDict(
        type='FasterRCNN',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type='ResNet', depth=18, base_channels=8, stem_channels=8, num_stages=4, out_indices=(0, 1, 2),
                      frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
                      style='pytorch', init_cfg=None),
        neck=dict(type='FPN', in_channels=[8, 16, 32], out_channels=CHANNELS, num_outs=3),
        rpn_head=dict(
            type='RankBasedRPNHead', in_channels=CHANNELS, feat_channels=CHANNELS,
            anchor_generator=dict(type='AnchorGenerator', scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_decoded_bbox=True, loss_cls=rank_loss, loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
            head_weight=0.2),
        roi_head=dict(
            type='StandardRoIHead',
            bbox_roi_extractor=dict(type='SingleRoIExtractor',
                                    roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                                    out_channels=CHANNELS, featmap_strides=[4, 8, 16]),
            bbox_head=dict(
                type='RankBasedShared2FCBBoxHead', in_channels=CHANNELS, fc_out_channels=32, roi_feat_size=7,
                num_classes=NUM_CLASSES, reg_class_agnostic=False, reg_decoded_bbox=True,
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
                loss_cls=rank_loss, loss_bbox=dict(type='GIoULoss', loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=200, max_per_img=100, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                    match_low_quality=False, ignore_iof_thr=-1),
                      sampler=dict(type='RandomSampler', num=10**9, pos_fraction=1.0, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=100, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.40, nms=dict(type='nms', iou_threshold=0.5), max_per_img=20)))


def detector_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, IMG_SIZE, IMG_SIZE), generator=generator, dtype=torch.uint8)
              for _ in range(2)]
    return dict(inputs=images, data_samples=batch_with_empty_image())


@pytest.mark.parametrize('loss', list(LOSSES))
def test_faster_rcnn_loss_step(loss):
    torch.manual_seed(0)
    model = MODELS.build(faster_rcnn_cfg(loss))
    model.init_weights()
    bbox_head = model.roi_head.bbox_head
    assert bbox_head.fc_cls.weight.shape == (NUM_CLASSES, 32)  # no background column
    seen = capture_targets(bbox_head)
    data = model.data_preprocessor(detector_inputs(), training=True)
    losses = model(**data, mode='loss')
    sort = WITH_SORT[loss]
    keys = {'loss_rpn_rank', 'loss_rpn_bbox', 'loss_rank', 'loss_bbox'}
    keys |= {'loss_rpn_sort', 'loss_sort'} if sort else set()
    total = check_losses(losses, keys)
    torch.testing.assert_close(losses['loss_bbox'], losses['loss_rank'] + losses.get('loss_sort', 0))
    total.backward()
    for module in (bbox_head.fc_cls, bbox_head.fc_reg, bbox_head.shared_fcs, model.rpn_head.rpn_cls,
                   model.rpn_head.rpn_reg, model.backbone):
        assert grad_norm(module) > 0
    # all proposals plus the 3 gt boxes of the first image enter the RoI ranking loss, RoIs x classes flattened
    (targets,) = seen
    assert targets.numel() % NUM_CLASSES == 0 and targets.numel() // NUM_CLASSES > 3
    assert (targets > 0).sum() >= 3


def test_faster_rcnn_predict():
    torch.manual_seed(0)
    cfg = faster_rcnn_cfg('BRS')
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    data = model.data_preprocessor(detector_inputs(), training=False)
    with torch.no_grad():
        results = model(**data, mode='predict')  # published score_thr 0.40
        model.roi_head.test_cfg.score_thr = 0.0
        permissive = model(**data, mode='predict')
    for result in results + permissive:
        pred = result.pred_instances
        num = len(pred)
        assert num <= 20
        assert pred.bboxes.shape == (num, 4) and pred.scores.shape == (num,) and pred.labels.shape == (num,)
    for result in results:
        assert (result.pred_instances.scores > 0.40).all()
    for result in permissive:
        pred = result.pred_instances
        assert len(pred) > 0
        assert ((pred.scores > 0) & (pred.scores < 1)).all()
        assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()


def test_cascade_rcnn_loss_and_predict():
    """Two class-agnostic rank-based stages in mmdet's CascadeRoIHead: per-stage losses, refinement, predict."""
    cfg = faster_rcnn_cfg('BRS')
    cfg.type = 'CascadeRCNN'
    stage_head = dict(cfg.roi_head.bbox_head, reg_class_agnostic=True)
    cfg.roi_head = dict(type='CascadeRoIHead', num_stages=2, stage_loss_weights=[1, 1],
                        bbox_roi_extractor=cfg.roi_head.bbox_roi_extractor, bbox_head=[stage_head, stage_head])
    stage_train = cfg.train_cfg.rcnn
    cfg.train_cfg.rcnn = [stage_train, dict(stage_train, assigner=dict(stage_train.assigner, pos_iou_thr=0.6,
                                                                          neg_iou_thr=0.6, min_pos_iou=0.6))]
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    data = model.data_preprocessor(detector_inputs(), training=True)
    losses = model(**data, mode='loss')
    keys = {'loss_rpn_rank', 'loss_rpn_sort', 'loss_rpn_bbox'}
    keys |= {f's{stage}.{name}' for stage in range(2) for name in ('loss_rank', 'loss_sort', 'loss_bbox')}
    total = check_losses(losses, keys)
    total.backward()
    assert all(grad_norm(head) > 0 for head in model.roi_head.bbox_head)
    model.eval()
    model.roi_head.test_cfg.score_thr = 0.0
    with torch.no_grad():
        results = model(**model.data_preprocessor(detector_inputs(), training=False), mode='predict')
    for result in results:
        pred = result.pred_instances
        num = len(pred)
        assert 0 < num <= 20 and pred.bboxes.shape == (num, 4) and pred.scores.shape == (num,)
        assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()


@pytest.mark.parametrize('class_agnostic', [False, True])
def test_roi_box_head_iou_targets_use_the_gt_class_regression(class_agnostic):
    """Hand-made RoIs: the target of a positive is the IoU of the box decoded from its gt class's deltas (or the
    class-agnostic deltas) with its gt; background RoIs are negatives in every column."""
    head = MODELS.build(dict(type='RankBasedShared2FCBBoxHead', in_channels=CHANNELS, fc_out_channels=16,
                             num_classes=NUM_CLASSES, reg_class_agnostic=class_agnostic,
                             loss_cls=LOSSES['RS']))
    seen = capture_targets(head)
    rois = torch.tensor([[0, 4.0, 4.0, 30.0, 28.0], [0, 30.0, 30.0, 60.0, 62.0], [1, 10.0, 8.0, 40.0, 44.0]])
    labels = torch.tensor([2, NUM_CLASSES, 0])
    gts = torch.tensor([[6.0, 2.0, 32.0, 30.0], [0.0, 0.0, 0.0, 0.0], [12.0, 6.0, 38.0, 48.0]])
    generator = torch.Generator().manual_seed(1)
    deltas = torch.randn(3, 4 if class_agnostic else 4 * NUM_CLASSES, generator=generator, requires_grad=True)
    logits = torch.randn(3, NUM_CLASSES, generator=generator, requires_grad=True)
    losses = head.loss(logits, deltas, rois, labels, torch.ones(3), gts, torch.ones(3, 4))
    coder = TASK_UTILS.build(dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]))
    pos = torch.tensor([0, 2])
    own = deltas.detach() if class_agnostic else deltas.detach().view(3, NUM_CLASSES, 4)[pos, labels[pos]]
    own = own[pos] if class_agnostic else own
    ious = bbox_overlaps(coder.decode(rois[pos, 1:], own), gts[pos], is_aligned=True)
    expected = torch.zeros(3, NUM_CLASSES)
    expected[0, 2], expected[2, 0] = ious[0], ious[1]
    torch.testing.assert_close(seen[0], expected.reshape(-1))
    torch.testing.assert_close(losses['loss_bbox'], losses['loss_rank'] + losses['loss_sort'])
    sum(losses.values()).backward()
    assert float(deltas.grad.abs().sum()) > 0 and float(logits.grad.abs().sum()) > 0


def test_roi_box_head_sigmoid_scores_with_class_agnostic_regression():
    """The per-image predict path: sigmoid scores, per-class NMS, and the raw (aug-test) layout."""
    head = MODELS.build(dict(type='RankBasedShared2FCBBoxHead', in_channels=CHANNELS, fc_out_channels=16,
                             num_classes=NUM_CLASSES, reg_class_agnostic=True))
    rois = torch.tensor([[0, 2.0, 2.0, 30.0, 30.0], [0, 30.0, 30.0, 60.0, 62.0]])
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -2.0]])
    deltas = torch.zeros(2, 4)
    meta = dict(img_shape=(IMG_SIZE, IMG_SIZE), scale_factor=(1.0, 1.0))
    raw = head._predict_by_feat_single(rois, logits, deltas, meta, rcnn_test_cfg=None)
    torch.testing.assert_close(raw.scores, torch.cat([logits.sigmoid(), torch.zeros(2, 1)], dim=1))
    cfg = ConfigDict(score_thr=0.5, nms=dict(type='nms', iou_threshold=0.5), max_per_img=10)
    result = head._predict_by_feat_single(rois, logits, deltas, meta, rcnn_test_cfg=cfg)
    keep = logits.sigmoid() > 0.5
    assert len(result) == int(keep.sum())
    torch.testing.assert_close(result.scores.sort().values, logits.sigmoid()[keep].sort().values)
    assert sorted(result.labels.tolist()) == sorted(keep.nonzero()[:, 1].tolist())


# ----------------------------------------------------------------------------------------------- configs
def test_rank_based_configs_exist():
    names = {osp.basename(p) for p in RANK_BASED_CONFIGS}
    for algo in ('rs-atss', 'brs-atss', 'ap-atss', 'bap-atss'):
        assert f'{algo}_r50_fpn_4xb4-12e_coco.py' in names
    for algo in ('rs-faster-rcnn', 'brs-faster-rcnn', 'rs-cascade-rcnn', 'brs-cascade-rcnn', 'rs-mask-rcnn',
                 'brs-mask-rcnn', 'rs-paa', 'brs-paa', 'ap-paa', 'bap-paa'):
        assert f'{algo}_r50_fpn_4xb4-12e_coco.py' in names


@pytest.mark.parametrize('path', RANK_BASED_CONFIGS, ids=osp.basename)
def test_rank_based_config_builds(path):
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    name = osp.basename(path)
    expected_loss = {'rs': 'RankSortLoss', 'brs': 'BucketedRankSortLoss', 'ap': 'APLoss',
                     'bap': 'BucketedAPLoss'}[name.split('-')[0]]
    if hasattr(model, 'bbox_head'):
        heads = [model.bbox_head]
    else:
        roi_heads = model.roi_head.bbox_head
        heads = [model.rpn_head] + (list(roi_heads) if isinstance(roi_heads, torch.nn.ModuleList) else [roi_heads])
    for head in heads:
        assert type(head.loss_cls).__name__ == expected_loss
        if expected_loss.endswith('RankSortLoss'):
            assert head.value_matched_bbox and head.loss_bbox.loss_weight == 1.0
        else:  # the released AP/BAP heads: a fixed box-loss weight (ATSS 2.0, PAA 1.0), no value matching
            assert not head.value_matched_bbox and head.loss_bbox.loss_weight == (2.0 if 'atss' in name else 1.0)
            assert head.loss_cls.delta == (1.0 if 'atss' in name else 0.5)
        assert head.use_iou_targets is expected_loss.endswith('RankSortLoss')
    assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 16
    if 'atss' in name or 'paa' in name:  # one-stage
        if 'timm' in name:  # a timm backbone (not in the paper): AdamW as for transformer-era backbones
            assert cfg.optim_wrapper.optimizer.type == 'AdamW' and cfg.optim_wrapper.optimizer.lr == 2e-4
        else:  # the released SGD setting
            assert cfg.optim_wrapper.optimizer.type == 'SGD' and cfg.optim_wrapper.optimizer.lr == 0.008
        assert not hasattr(model.bbox_head, 'atss_centerness')
        return
    assert cfg.optim_wrapper.optimizer.lr == 0.012
    assert model.rpn_head.head_weight == 0.2 and model.rpn_head.reg_decoded_bbox
    assert cfg.model.train_cfg.rpn.sampler.type == 'PseudoSampler'
    assert cfg.model.test_cfg.rcnn.score_thr == (0.60 if 'lvis' in name else 0.40)  # the released thresholds
    rcnn_train = cfg.model.train_cfg.rcnn
    for stage_train, head in zip(rcnn_train if isinstance(rcnn_train, list) else [rcnn_train], heads[1:]):
        assert TASK_UTILS.build(stage_train.sampler).num > 10**6  # all proposals
        assert head.fc_cls.out_features == head.num_classes  # no background column
        if 'cascade' in name:
            assert head.reg_class_agnostic
    if 'cascade' in name:
        assert cfg.model.roi_head.stage_loss_weights == [1, 1, 1]
