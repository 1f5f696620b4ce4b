"""Co-Deformable-DETR (brs_detr.models: CoDETR and its heads) on CPU with the tiny config."""
import copy
import json
import logging
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import brs_detr  # noqa: F401  (registers the models)
from brs_detr.models.dense_heads import PositiveCoords
from brs_detr.models.layers import CoDeformableDetrTransformerDecoder
from mmdet.models.layers import DeformableDetrTransformerDecoder
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs', 'co_deformable_detr')
TINY_CONFIG = osp.join(CONFIG_DIR,
                       'co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py')
DATA_DIR = osp.join(ROOT, 'tests', 'data')
NUM_DEC_LAYERS = 2  # tiny config
NUM_CLASSES = 3
NUM_QUERIES = 30
IMG_SIZE = 128

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)


def build_tiny(**overrides):
    cfg = Config.fromfile(TINY_CONFIG)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def make_sample(boxes, labels, img_shape=(IMG_SIZE, IMG_SIZE), scale=1.0):
    """A data sample as the data preprocessor hands it to the model."""
    sample = DetDataSample(
        metainfo=dict(
            img_shape=img_shape,
            ori_shape=(round(img_shape[0] / scale),
                       round(img_shape[1] / scale)),
            batch_input_shape=(IMG_SIZE, IMG_SIZE),
            pad_shape=(IMG_SIZE, IMG_SIZE),
            scale_factor=(scale, scale)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long))
    return sample


def make_batch(empty_second=False):
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, IMG_SIZE, IMG_SIZE)
    first = make_sample([[10, 10, 60, 70], [70, 20, 120, 100]], [0, 2])
    if empty_second:
        second = make_sample([], [], img_shape=(96, 128))
    else:
        second = make_sample([[5, 30, 50, 90]], [1], img_shape=(96, 128))
    return inputs, [first, second]


def expected_loss_keys(num_dec_layers):
    keys = set()
    for suffix in ['', '_aux0', '_aux1']:
        for name in ['loss_cls', 'loss_bbox', 'loss_iou']:
            keys.add(f'{name}{suffix}')
            for layer in range(num_dec_layers - 1):
                keys.add(f'd{layer}.{name}{suffix}')
    keys |= {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'}
    keys |= {'loss_rpn_cls', 'loss_rpn_bbox'}
    keys |= {'loss_cls0', 'acc0', 'loss_bbox0'}  # RoI head
    keys |= {'loss_cls1', 'loss_bbox1', 'loss_centerness1'}  # ATSS head
    return keys


def total(value):
    return sum(value) if isinstance(value, (list, tuple)) else value


@pytest.fixture(scope='module')
def trained_step():
    """One forward + backward of the tiny model on a batch of 2."""
    model = build_tiny()
    model.train()
    inputs, samples = make_batch()
    losses = model.loss(inputs, samples)
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return model, losses


def test_train_step_loss_keys_finite(trained_step):
    _, losses = trained_step
    assert set(losses) == expected_loss_keys(NUM_DEC_LAYERS)
    for key, value in losses.items():
        assert torch.isfinite(total(value)).all(), key
        if key.startswith(('loss', 'd', 'enc')):
            assert total(value) > 0, key


@pytest.mark.parametrize('name', [
    'backbone.conv1.weight', 'neck.convs.0.conv.weight',
    'encoder.layers.0.self_attn.sampling_offsets.weight',
    'decoder.layers.1.cross_attn.value_proj.weight',
    'query_embedding.weight', 'pos_trans_fc.weight', 'memory_trans_fc.weight',
    'bbox_head.cls_branches.0.weight', 'bbox_head.reg_branches.2.4.weight',
    'bbox_head.reg_branches.0.4.weight',
    'downsample.0.weight', 'rpn_head.rpn_conv.weight',
    'roi_head.0.bbox_head.fc_cls.weight',
    'roi_head.0.bbox_head.shared_fcs.0.weight',
    'aux_bbox_head.0.atss_cls.weight', 'aux_bbox_head.0.atss_centerness.weight',
    'aux_pos_trans.0.weight', 'aux_pos_trans.1.weight',
    'aux_pos_trans_norm.1.weight', 'pos_feats_trans.0.weight',
    'pos_feats_trans.1.weight', 'head_pos_embed.weight'
])
def test_gradients_reach(trained_step, name):
    model, _ = trained_step
    param = dict(model.named_parameters())[name]
    assert param.grad is not None, name
    assert torch.isfinite(param.grad).all(), name
    assert param.grad.abs().sum() > 0, name


def test_empty_gt_in_one_image():
    model = build_tiny()
    model.train()
    inputs, samples = make_batch(empty_second=True)
    losses = model.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(NUM_DEC_LAYERS)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.aux_pos_trans[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_predict_in_image_coordinates(eval_module):
    model = build_tiny(eval_module=eval_module)
    model.eval()
    inputs, _ = make_batch()
    # the second image was resized by 0.5 and padded: boxes go back to 192x256
    samples = [
        make_sample([], []),
        make_sample([], [], img_shape=(96, 128), scale=0.5)
    ]
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=True)
    for result, (ori_h, ori_w) in zip(results, [(128, 128), (192, 256)]):
        pred = result.pred_instances
        num = len(pred)
        assert pred.bboxes.shape == (num, 4)
        assert pred.scores.shape == pred.labels.shape == (num, )
        assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()
        assert (pred.bboxes[:, 0::2] >= 0).all()
        assert (pred.bboxes[:, 0::2] <= ori_w).all()
        assert (pred.bboxes[:, 1::2] <= ori_h).all()
        if eval_module == 'detr':
            # top-k over queries x classes, no NMS: always max_per_img results
            assert num == NUM_QUERIES
            assert (pred.scores[:-1] >= pred.scores[1:]).all()
    if eval_module == 'detr':
        # rescale=True maps the 128x96 input of image 2 back to 256x192
        assert results[1].pred_instances.bboxes[:, 0::2].max() > 128


def test_query_head_prediction_has_no_nms():
    """Duplicate boxes survive: the same query may be kept for two classes."""
    model = build_tiny()
    model.eval()
    head = model.bbox_head
    cls_scores = torch.full((1, 1, NUM_QUERIES, NUM_CLASSES), -10.0)
    cls_scores[0, 0, 0] = 5.0  # one query, confident for all 3 classes
    boxes = torch.full((1, 1, NUM_QUERIES, 4), 0.5)
    results = head.predict_by_feat(
        cls_scores, boxes,
        [dict(img_shape=(100, 100), scale_factor=(1.0, 1.0))])
    top = results[0][:NUM_CLASSES]
    assert sorted(top.labels.tolist()) == [0, 1, 2]
    assert torch.allclose(top.bboxes, top.bboxes[:1].expand(NUM_CLASSES, 4))


def _decoder_pair(look_forward_twice):
    cfg = Config.fromfile(TINY_CONFIG).model.decoder
    cfg = cfg.to_dict()
    cfg.pop('look_forward_twice')
    cfg.pop('num_cp')  # ours only (activation checkpointing, off in the config)
    torch.manual_seed(0)
    ours = CoDeformableDetrTransformerDecoder(
        look_forward_twice=look_forward_twice, **copy.deepcopy(cfg))
    reference = DeformableDetrTransformerDecoder(**cfg)
    reference.load_state_dict(ours.state_dict())
    reg_branches = torch.nn.ModuleList(
        torch.nn.Linear(64, 4) for _ in range(cfg['num_layers']))
    return ours, reference, reg_branches


def _decoder_inputs(num_queries=5, batch_size=2):
    torch.manual_seed(2)
    shapes = torch.tensor([[8, 8], [4, 4], [2, 2], [1, 1]])
    num_value = int(shapes.prod(1).sum())
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    return dict(
        query=torch.randn(batch_size, num_queries, 64),
        query_pos=torch.randn(batch_size, num_queries, 64),
        value=torch.randn(batch_size, num_value, 64),
        key_padding_mask=None,
        reference_points=torch.rand(batch_size, num_queries, 4) * 0.8 + 0.1,
        spatial_shapes=shapes,
        level_start_index=starts,
        valid_ratios=torch.ones(batch_size, len(shapes), 2))


def test_decoder_look_forward_twice():
    ours, reference, reg_branches = _decoder_pair(look_forward_twice=True)
    inputs = _decoder_inputs()
    states, refs = ours(**inputs, reg_branches=reg_branches)
    ref_states, ref_refs = reference(**inputs, reg_branches=reg_branches)
    # same values as Deformable-DETR, but the references keep their graph
    assert torch.allclose(states, ref_states, atol=1e-6)
    assert torch.allclose(refs, ref_refs, atol=1e-6)
    assert refs.requires_grad and not ref_refs.requires_grad
    # the head's box of layer 1, reg(h_1) + inverse_sigmoid(refs[0]), sends
    # gradient into the regression branch of layer 0
    box_1 = (reg_branches[1](states[1]) + inverse_sigmoid(refs[0])).sigmoid()
    box_1.sum().backward()
    assert reg_branches[0].weight.grad.abs().sum() > 0

    plain, _, branches = _decoder_pair(look_forward_twice=False)
    _, plain_refs = plain(**inputs, reg_branches=branches)
    assert not plain_refs.requires_grad


def test_decoder_inverse_sigmoid_eps():
    ours, _, reg_branches = _decoder_pair(look_forward_twice=True)
    assert ours.inverse_sigmoid_eps == 1e-5
    for branch in reg_branches:
        torch.nn.init.zeros_(branch.weight)
        torch.nn.init.zeros_(branch.bias)
    inputs = _decoder_inputs()
    inputs['reference_points'][..., 0] = 0.0
    _, refs = ours(**inputs, reg_branches=reg_branches)
    # sigmoid(log(eps / 1)) = eps / (1 + eps)
    assert torch.allclose(refs[..., 0], torch.tensor(1e-5 / (1 + 1e-5)))


def test_reference_indexing_and_mixed_selection():
    """Layer l predicts from references[l] (the initial one for l = 0);
    its prediction is the refined reference references[l + 1]. Content
    queries are the learned embedding (mixed selection)."""
    model = build_tiny()
    model.eval()
    inputs, samples = make_batch()
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        enc_out, dec_in = model.forward_encoder_only(feats, samples)
        pre_dec, _ = model.pre_decoder(**enc_out)
        dec_in.update(pre_dec)
        out = model.forward_decoder(**dec_in)
        _, coords = model.bbox_head(out['hidden_states'], out['references'])
    assert torch.equal(pre_dec['query'][0], model.query_embedding.weight)
    assert torch.equal(pre_dec['query'][1], model.query_embedding.weight)
    assert pre_dec['query_pos'].shape == (2, NUM_QUERIES, 64)
    assert not torch.allclose(pre_dec['query_pos'][0], pre_dec['query_pos'][1])
    assert len(out['references']) == NUM_DEC_LAYERS + 1
    assert torch.equal(out['references'][0], pre_dec['reference_points'])
    for layer in range(NUM_DEC_LAYERS):
        assert torch.allclose(coords[layer], out['references'][layer + 1],
                              atol=1e-5)


def _positive_coords(num_pos_per_image, num_anchors=40):
    """Synthetic dense-head assignment with the given positive counts."""
    batch = len(num_pos_per_image)
    coords = torch.tensor([10., 20., 50., 60.]).repeat(batch, num_anchors, 1)
    coords += torch.arange(num_anchors, dtype=torch.float32)[None, :, None]
    labels = torch.full((batch, num_anchors), NUM_CLASSES, dtype=torch.long)
    targets = torch.zeros(batch, num_anchors, 4)
    for img, num_pos in enumerate(num_pos_per_image):
        labels[img, :num_pos] = img % NUM_CLASSES
        targets[img, :num_pos] = torch.tensor([0., 0., 100., 80.])
    feats = torch.randn(batch, num_anchors, 64)
    return PositiveCoords(coords, labels, targets, feats, 'rcnn')


def test_positive_queries_padded_with_negatives():
    head = build_tiny().bbox_head
    metas = [dict(img_shape=(100, 200)), dict(img_shape=(100, 200))]
    targets = head.get_aux_targets(_positive_coords([5, 2]), metas, ())
    num_queries = head.min_pos_coords  # max(9, min(30, 5))
    assert targets['coords'].shape == (2, num_queries, 4)
    assert targets['feats'].shape == (2, num_queries, 64)
    assert (targets['label_weights'] == 1).all()
    for img, num_pos in enumerate([5, 2]):
        labels = targets['labels'][img]
        assert (labels[:num_pos] == img).all()
        assert (labels[num_pos:] == NUM_CLASSES).all()  # negatives as padding
        assert (targets['bbox_weights'][img, :num_pos] == 1).all()
        assert (targets['bbox_weights'][img, num_pos:] == 0).all()
        # normalized (cx, cy, w, h) w.r.t. img_shape (h=100, w=200)
        assert torch.allclose(targets['bbox_targets'][img, :num_pos],
                              torch.tensor([0.25, 0.4, 0.5, 0.8]))
    assert (targets['coords'] > 0).all() and (targets['coords'] < 1).all()


def test_positive_queries_subsampled_with_seeded_generator():
    heads = [build_tiny(bbox_head=dict(aux_sampling_seed=seed)).bbox_head
             for seed in (7, 7, 8)]
    metas = [dict(img_shape=(100, 200))] * 2
    pos = _positive_coords([40, 35], num_anchors=60)
    chosen = [head.get_aux_targets(pos, metas, ())['coords'] for head in heads]
    assert chosen[0].shape == (2, NUM_QUERIES, 4)  # max_pos_coords = 30
    assert torch.equal(chosen[0], chosen[1])
    assert not torch.equal(chosen[0], chosen[2])
    assert 'cpu' in heads[0]._generators


def test_dense_head_features_follow_anchor_locations():
    """For dense heads (feats=None) every anchor gets the feature of its
    location in the flattened multi-level maps."""
    head = build_tiny().bbox_head
    maps = (torch.randn(1, 64, 4, 4), torch.randn(1, 64, 2, 2))
    num_locations = 20
    pos = _positive_coords([num_locations], num_anchors=num_locations)
    pos = pos._replace(feats=None)
    targets = head.get_aux_targets(pos, [dict(img_shape=(100, 200))], maps)
    flat = torch.cat([m.flatten(2) for m in maps], 2)[0].t()
    assert torch.equal(targets['feats'][0], flat[:NUM_QUERIES])


def test_auxiliary_maps_give_each_image_its_own_roi_features():
    """The maps cut from the encoder memory are contiguous: mmcv's RoIAlign reads its input as contiguous memory
    and pooled another image's features for every image but the first of a batch from the strided view."""
    model = build_tiny()
    torch.manual_seed(2)
    img_feats = [torch.zeros(2, 64, size, size) for size in (16, 8, 4, 2)]
    memory = torch.randn(2, sum(size * size for size in (16, 8, 4, 2)), 64)
    maps = model.memory_to_feature_maps(memory, img_feats)
    assert all(level.is_contiguous() for level in maps)
    extractor = model.roi_head[0].bbox_roi_extractor
    box = [10., 12., 90., 100.]
    in_batch = extractor(maps[:4], torch.tensor([[1.] + box]))
    alone = extractor([level[1:] for level in maps[:4]], torch.tensor([[0.] + box]))
    torch.testing.assert_close(in_batch, alone)


def test_invalid_eval_module():
    with pytest.raises(ValueError, match='eval_module'):
        build_tiny(eval_module='rpn')


@pytest.mark.parametrize('config, layout', [
    ('co_deformable_detr_r50_8xb2-12e_coco.py',
     'layouts/co-deformable-detr_r50_12e_coco_co-detr-paper.json'),
    ('co_deformable_detr_swin-t-p4-w7_8xb2-12e_coco.py',
     'layouts/co-deformable-detr_swin-t_12e_coco_co-detr-paper.json'),
])
def test_full_config_matches_original_parameter_count(config, layout):
    cfg = Config.fromfile(osp.join(CONFIG_DIR, config))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    with open(osp.join(DATA_DIR, layout)) as file:
        original = json.load(file)
    assert sum(p.numel() for p in model.parameters()) == original['num_params']
    assert len(model.state_dict()) == original['num_state_entries']
    # original settings
    assert model.num_queries == 300 and model.mixed_selection
    assert model.decoder.look_forward_twice and model.decoder.num_layers == 6
    assert model.bbox_head.loss_cls.loss_weight == 2.0
    assert model.aux_bbox_head[0].loss_bbox.loss_weight == 24.0
    assert model.roi_head[0].bbox_head.loss_bbox.loss_weight == 120.0
    assert cfg.optim_wrapper.clip_grad.max_norm == 0.1
    assert cfg.train_dataloader.batch_size * 8 == 16


def test_test_mode_build_without_train_cfg():
    """``mmdet.apis.init_detector`` builds with ``train_cfg=None``."""
    model = build_tiny(train_cfg=None)
    model.eval()
    assert model.bbox_head.train_cfg is None
    inputs, samples = make_batch()
    with torch.no_grad():
        results = model.predict(inputs, samples)
    assert len(results[0].pred_instances) == NUM_QUERIES
