"""BRS-DETR's rank-based auxiliary heads inside the tiny Co-Deformable-DETR (CPU).

The tiny Co-DETR config is loaded and its auxiliary heads are replaced by the rank-based ones: a
:class:`RankBasedRPNHead` over all anchors, a :class:`CoStandardRoIHead` with a :class:`RankBasedShared2FCBBoxHead`
over all proposals and a :class:`CoRankBasedATSSHead`, all trained with BRS (weights 1 / 5 / 5 as released).
"""
import copy
import logging
import os.path as osp
from typing import Dict, List

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import brs_detr  # noqa: F401  (registers the models)
from brs_detr.models.dense_heads import CoRankBasedATSSHead, PositiveCoords
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_CONFIG = osp.join(ROOT, 'configs', 'co_deformable_detr', 'co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py')
NUM_CLASSES = 3
NUM_DEC_LAYERS = 2
IMG_SIZE = 128
#: Unusual RPN coder stds: the IoU targets must be decoded with these, not with hard-coded ones.
RPN_STDS = [0.5, 0.5, 0.7, 0.7]

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)


def rank_based_tiny_cfg(loss_type: str = 'BucketedRankSortLoss') -> Config:
    """The tiny Co-DETR config with BRS-DETR's rank-based auxiliary heads."""
    cfg = Config.fromfile(TINY_CONFIG)
    model = cfg.model
    embed_dims = model.rpn_head.in_channels
    model.rpn_head = dict(
        type='RankBasedRPNHead',
        in_channels=embed_dims,
        feat_channels=embed_dims,
        anchor_generator=model.rpn_head.anchor_generator,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=RPN_STDS),
        loss_cls=dict(type=loss_type, delta=0.5, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        reg_decoded_bbox=True)
    roi_box = model.roi_head[0].bbox_head
    model.roi_head[0].bbox_head = dict(
        type='RankBasedShared2FCBBoxHead',
        in_channels=roi_box.in_channels,
        fc_out_channels=roi_box.fc_out_channels,
        roi_feat_size=7,
        num_classes=NUM_CLASSES,
        bbox_coder=roi_box.bbox_coder,
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        loss_cls=dict(type=loss_type, delta=0.5, loss_weight=5.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0))
    atss = model.aux_bbox_head[0]
    model.aux_bbox_head[0] = dict(
        type='CoRankBasedATSSHead',
        num_classes=NUM_CLASSES,
        in_channels=embed_dims,
        stacked_convs=1,
        feat_channels=embed_dims,
        anchor_generator=atss.anchor_generator,
        bbox_coder=atss.bbox_coder,
        reg_decoded_bbox=True,
        loss_cls=dict(type=loss_type, delta=0.5, loss_weight=5.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0))
    # no sampling: all anchors for the RPN, all proposals (plus the gts) for the RoI head
    model.train_cfg[1].rpn.sampler = dict(type='PseudoSampler')
    model.train_cfg[1].rcnn.sampler = dict(type='RandomSampler', num=10**9, pos_fraction=1.0, neg_pos_ub=-1,
                                           add_gt_as_proposals=True)
    return cfg


def build_model(loss_type: str = 'BucketedRankSortLoss'):
    cfg = rank_based_tiny_cfg(loss_type)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    return model


def make_sample(boxes, labels, img_shape=(IMG_SIZE, IMG_SIZE)) -> DetDataSample:
    sample = DetDataSample(metainfo=dict(img_shape=img_shape, ori_shape=img_shape,
                                         batch_input_shape=(IMG_SIZE, IMG_SIZE), pad_shape=(IMG_SIZE, IMG_SIZE),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       labels=torch.tensor(labels, dtype=torch.long))
    return sample


def make_batch(kind: str = 'normal'):
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, IMG_SIZE, IMG_SIZE)
    if kind == 'normal':  # the second image is smaller than the padded batch
        samples = [make_sample([[10, 10, 60, 70], [70, 20, 120, 100]], [0, 2]),
                   make_sample([[5, 30, 50, 90]], [1], img_shape=(96, 128))]
    elif kind == 'empty':  # no ground truth at all: no head finds a positive
        samples = [make_sample([], []), make_sample([], [], img_shape=(96, 128))]
    elif kind == 'tiny':
        # 2x2 px boxes between anchor centres: ATSS (centre-inside test) and the RPN (IoU < 0.3) find no
        # positive; the RoI head still has the gts as proposals
        samples = [make_sample([[9, 9, 11, 11]], [0]), make_sample([[41, 49, 43, 51]], [1])]
    else:
        raise ValueError(kind)
    return inputs, samples


def expected_loss_keys() -> set:
    keys = set()
    for suffix in ['', '_aux0', '_aux1']:
        for name in ['loss_cls', 'loss_bbox', 'loss_iou']:
            keys.add(f'{name}{suffix}')
            keys |= {f'd{layer}.{name}{suffix}' for layer in range(NUM_DEC_LAYERS - 1)}
    keys |= {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'}
    keys |= {'loss_rpn_rank', 'loss_rpn_sort', 'loss_rpn_bbox'}
    keys |= {'loss_rank0', 'loss_sort0', 'loss_bbox0'}  # RoI head (no acc: no background column)
    keys |= {'loss_rank1', 'loss_sort1', 'loss_bbox1'}  # ATSS head (no centerness)
    return keys


class Recorder:
    """Records what the auxiliary heads compute during one ``model.loss`` call."""

    def __init__(self, model) -> None:
        self.ranking_targets: Dict[str, torch.Tensor] = {}
        self.pos_coords: List[PositiveCoords] = []
        self.aux_feats = None
        self.roi_inputs: Dict[str, object] = {}
        self.rpn_inputs: Dict[str, object] = {}
        self.num_proposals: List[int] = []
        heads = dict(rpn=model.rpn_head, roi=model.roi_head[0].bbox_head, atss=model.aux_bbox_head[0])
        for name, head in heads.items():
            head.loss_cls.register_forward_pre_hook(self._targets_hook(name))

        get_aux_targets = model.bbox_head.get_aux_targets

        def spy_aux_targets(pos_coords, batch_img_metas, mlvl_feats):
            self.pos_coords.append(pos_coords)
            self.aux_feats = mlvl_feats
            return get_aux_targets(pos_coords, batch_img_metas, mlvl_feats)

        model.bbox_head.get_aux_targets = spy_aux_targets

        roi_box_loss = model.roi_head[0].bbox_head.loss

        def spy_roi_box_loss(cls_score, bbox_pred, rois, labels, *args, **kwargs):
            self.roi_inputs.update(rois=rois.detach(), labels=labels)
            return roi_box_loss(cls_score, bbox_pred, rois, labels, *args, **kwargs)

        model.roi_head[0].bbox_head.loss = spy_roi_box_loss

        roi_loss = model.roi_head[0].loss

        def spy_roi_loss(x, rpn_results_list, batch_data_samples):
            self.num_proposals = [len(results) for results in rpn_results_list]
            return roi_loss(x, rpn_results_list, batch_data_samples)

        model.roi_head[0].loss = spy_roi_loss

        rpn_loss_by_feat = model.rpn_head.loss_by_feat

        def spy_rpn_loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas, *args, **kwargs):
            self.rpn_inputs.update(bbox_preds=[p.detach() for p in bbox_preds],
                                   batch_gt_instances=batch_gt_instances, batch_img_metas=batch_img_metas)
            return rpn_loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas, *args, **kwargs)

        model.rpn_head.loss_by_feat = spy_rpn_loss_by_feat

    def _targets_hook(self, name: str):
        def hook(module, args):
            self.ranking_targets[name] = args[1].detach()
        return hook


def loss_value(value) -> torch.Tensor:
    return sum(value) if isinstance(value, (list, tuple)) else value


@pytest.fixture(scope='module')
def trained_step():
    """One forward + backward of the tiny model with rank-based auxiliary heads on a batch of 2."""
    model = build_model()
    recorder = Recorder(model)
    inputs, samples = make_batch()
    losses = model.loss(inputs, samples)
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return model, losses, recorder, samples


def test_head_types_and_weights(trained_step):
    model, *_ = trained_step
    assert isinstance(model.aux_bbox_head[0], CoRankBasedATSSHead)
    assert not hasattr(model.aux_bbox_head[0], 'atss_centerness')
    assert model.roi_head[0].bbox_head.fc_cls.out_features == NUM_CLASSES  # no background column
    assert model.rpn_head.head_weight * model.rpn_head.loss_cls.loss_weight == 1.0
    assert model.roi_head[0].bbox_head.loss_cls.loss_weight == 5.0
    assert model.aux_bbox_head[0].loss_cls.loss_weight == 5.0


def test_loss_keys_present_and_finite(trained_step):
    _, losses, _, _ = trained_step
    assert set(losses) == expected_loss_keys()
    for key, value in losses.items():
        value = loss_value(value)
        assert torch.isfinite(value).all(), key
        assert value > 0, key


def test_box_losses_are_value_matched(trained_step):
    _, losses, _, _ = trained_step
    for rank, sort, bbox in [('loss_rpn_rank', 'loss_rpn_sort', 'loss_rpn_bbox'),
                             ('loss_rank0', 'loss_sort0', 'loss_bbox0'), ('loss_rank1', 'loss_sort1', 'loss_bbox1')]:
        torch.testing.assert_close(losses[bbox].detach(), (losses[rank] + losses[sort]).detach())


@pytest.mark.parametrize('name', [
    'rpn_head.rpn_conv.weight', 'rpn_head.rpn_cls.weight', 'rpn_head.rpn_reg.weight',
    'roi_head.0.bbox_head.fc_cls.weight', 'roi_head.0.bbox_head.fc_reg.weight',
    'roi_head.0.bbox_head.shared_fcs.0.weight',
    'aux_bbox_head.0.atss_cls.weight', 'aux_bbox_head.0.atss_reg.weight', 'aux_bbox_head.0.cls_convs.0.conv.weight',
    'aux_bbox_head.0.scales.0.scale', 'downsample.0.weight', 'encoder.layers.0.ffn.layers.1.weight',
    'aux_pos_trans.0.weight', 'aux_pos_trans.1.weight', 'pos_feats_trans.0.weight', 'pos_feats_trans.1.weight',
    'bbox_head.cls_branches.0.weight', 'backbone.conv1.weight',
])
def test_gradients_reach(trained_step, name):
    model, *_ = trained_step
    param = dict(model.named_parameters())[name]
    assert param.grad is not None, name
    assert torch.isfinite(param.grad).all(), name
    assert param.grad.abs().sum() > 0, name


def _ranking_positives(targets: torch.Tensor):
    """Positive rows of a one-vs-all ranking target vector and their class, from (K * C,) targets."""
    targets = targets.reshape(-1, NUM_CLASSES)
    is_pos = (targets > 0).any(dim=1)
    return is_pos, targets.argmax(dim=1)


def test_atss_positive_queries_are_its_ranking_positives(trained_step):
    model, _, recorder, samples = trained_step
    assert len(recorder.pos_coords) == 2  # RoI head first, then ATSS
    atss_coords = recorder.pos_coords[1]
    assert atss_coords.head_type == 'dense' and atss_coords.feats is None
    labels = atss_coords.labels.reshape(-1)
    handed_pos = labels < NUM_CLASSES
    rank_pos, rank_cls = _ranking_positives(recorder.ranking_targets['atss'])
    assert handed_pos.sum() > 0
    assert torch.equal(handed_pos, rank_pos)
    assert torch.equal(labels[handed_pos], rank_cls[rank_pos])

    # and they are the ATSS assignment itself, recomputed independently on the same features
    head = model.aux_bbox_head[0]
    metas = [sample.metainfo for sample in samples]
    gts = [sample.gt_instances for sample in samples]
    sizes = [feat.shape[-2:] for feat in recorder.aux_feats]
    anchors, valid = head.get_anchors(sizes, metas, device='cpu')
    exp_anchors, exp_labels, _, exp_targets, _, _ = head.get_targets(anchors, valid, gts, metas)
    assert torch.equal(atss_coords.coords, torch.cat(exp_anchors, dim=1))
    assert torch.equal(atss_coords.labels, torch.cat(exp_labels, dim=1))
    pos = atss_coords.labels < NUM_CLASSES
    assert torch.equal(atss_coords.targets[pos], torch.cat(exp_targets, dim=1)[pos])
    # every handed-over positive's target is one of its image's gt boxes
    for img, sample in enumerate(samples):
        img_targets = atss_coords.targets[img][pos[img]]
        overlaps = bbox_overlaps(img_targets, sample.gt_instances.bboxes)
        assert torch.allclose(overlaps.max(dim=1).values, torch.ones(len(img_targets)))


def test_roi_positive_queries_are_its_ranking_positives(trained_step):
    _, _, recorder, samples = trained_step
    roi_coords = recorder.pos_coords[0]
    assert roi_coords.head_type == 'rcnn' and roi_coords.feats is not None
    rois, labels = recorder.roi_inputs['rois'], recorder.roi_inputs['labels']
    # all proposals (plus the gts), no sampling
    counts = torch.bincount(rois[:, 0].long(), minlength=len(samples)).tolist()
    assert counts == [num + len(sample.gt_instances) for num, sample in zip(recorder.num_proposals, samples)]
    rank_pos, rank_cls = _ranking_positives(recorder.ranking_targets['roi'])
    assert torch.equal(rank_pos, labels < NUM_CLASSES)
    assert torch.equal(rank_cls[rank_pos], labels[rank_pos])
    num_keep = roi_coords.labels.shape[1]
    for img in range(len(samples)):
        in_img = rois[:, 0] == img
        img_labels, img_rois = labels[in_img], rois[in_img, 1:]
        num_pos = int((img_labels < NUM_CLASSES).sum())
        assert 0 < num_pos <= num_keep  # every ranking positive is handed over
        handed = roi_coords.labels[img]
        assert torch.equal(handed, img_labels[:num_keep])
        assert torch.equal(roi_coords.coords[img], img_rois[:num_keep])
        assert (handed[:num_pos] < NUM_CLASSES).all() and (handed[num_pos:] == NUM_CLASSES).all()


def test_rpn_iou_targets_use_its_own_coder(trained_step):
    model, _, recorder, _ = trained_step
    head = model.rpn_head
    assert list(head.bbox_coder.stds) == RPN_STDS
    bbox_preds = recorder.rpn_inputs['bbox_preds']
    gts, metas = recorder.rpn_inputs['batch_gt_instances'], recorder.rpn_inputs['batch_img_metas']
    anchors, valid = head.get_anchors([p.shape[-2:] for p in bbox_preds], metas, device='cpu')
    labels, _, gt_targets, _, _ = head.get_targets(anchors, valid, gts, metas)
    labels = torch.cat(labels, dim=1).reshape(-1)
    gt_targets = torch.cat(gt_targets, dim=1).reshape(-1, 4)
    flat_anchors = torch.cat([torch.cat(img_anchors) for img_anchors in anchors])
    deltas = torch.cat([p.permute(0, 2, 3, 1).reshape(p.size(0), -1, 4) for p in bbox_preds], 1).reshape(-1, 4)
    pos = labels == 0
    assert pos.sum() > 0
    decoded = head.bbox_coder.decode(flat_anchors[pos], deltas[pos])
    expected = bbox_overlaps(decoded, gt_targets[pos], is_aligned=True).clamp_min(1e-6)
    targets = recorder.ranking_targets['rpn']
    assert torch.equal(targets > 0, pos)
    torch.testing.assert_close(targets[pos], expected)


@pytest.mark.parametrize('kind', ['empty', 'tiny'])
def test_batch_without_auxiliary_positives(kind):
    model = build_model()
    recorder = Recorder(model)
    inputs, samples = make_batch(kind)
    losses = model.loss(inputs, samples)
    assert set(losses) == expected_loss_keys()
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert (recorder.ranking_targets['atss'] <= 0).all()
    assert (recorder.ranking_targets['rpn'] <= 0).all()
    atss_coords = recorder.pos_coords[1]
    assert (atss_coords.labels == NUM_CLASSES).all()
    if kind == 'empty':
        assert (recorder.pos_coords[0].labels == NUM_CLASSES).all()
    else:  # the gts are proposals of the RoI head
        assert (recorder.pos_coords[0].labels < NUM_CLASSES).sum() == 2
    for value in losses.values():
        assert torch.isfinite(loss_value(value)).all()
    # the padded negative queries still train the positive-query projections
    assert model.aux_pos_trans[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('loss_type', ['RankSortLoss', 'BucketedAPLoss'])
def test_other_ranking_losses(loss_type):
    model = build_model(loss_type)
    inputs, samples = make_batch()
    losses = model.loss(inputs, samples)
    with_sort = loss_type == 'RankSortLoss'
    for key in ['loss_rpn_sort', 'loss_sort0', 'loss_sort1']:
        assert (key in losses) == with_sort
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.aux_bbox_head[0].atss_cls.weight.grad.abs().sum() > 0


def test_predict_with_the_rank_based_heads():
    model = build_model()
    model.eval()
    inputs, samples = make_batch()
    with torch.no_grad():
        for module in ['one-stage', 'two-stage']:
            model.eval_module = module
            results = model.predict(inputs, copy.deepcopy(samples))
            for result in results:
                pred = result.pred_instances
                assert len(pred.bboxes) > 0 and torch.isfinite(pred.bboxes).all()
                assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
