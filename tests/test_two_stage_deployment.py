"""ONNX export of the two-stage detectors (brs_detr.deployment.two_stage_wrapper), on tiny models with random weights.

* RoIAlign: the exported op (brs_detr.deployment.roi_align) gives mmcv's kernel's features in onnxruntime (float64,
  aligned or not, adaptive or fixed sampling, boxes partly outside the map); mmcv 2.1's own symbolic does not.
* RoI extractor: the level assignment in tensors (brs_detr.deployment.roi_extractor) equals mmdet's
  SingleRoIExtractor (float64, a level without RoIs, a RoI scale factor), and its graph pools a level that got no
  RoI in the export example.
* Export + onnxruntime parity, every detection compared (boxes, scores, labels in order, mask IoU): the tiny
  rank-based Faster R-CNN, the tiny BRS Mask R-CNN (static; dynamic at sizes where an FPN level has more anchors
  than the RPN's nms_pre), a tiny Cascade Mask R-CNN with mmdet's softmax heads and with the rank-based ones, and a
  graph traced on an image without any detection that detects on another.
* What is not exported is named; demo --onnx draws the masks (slow).
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS_DIR, REPO_ROOT
from test_deployment import DEMO, run

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

MASK_RCNN_CONFIG = CONFIGS_DIR / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py'
#: Compare every detection (the tiny configs keep at most 100 per image).
ALL_DETECTIONS = 100


def tiny_mask_rcnn_cfg() -> Config:
    return Config.fromfile(str(MASK_RCNN_CONFIG))


def tiny_faster_rcnn_cfg() -> Config:
    """The tiny BRS Mask R-CNN without its mask branch: a rank-based (BRS) Faster R-CNN."""
    cfg = tiny_mask_rcnn_cfg()
    cfg.model.type = 'FasterRCNN'
    cfg.model.data_preprocessor.pad_mask = False
    roi_head = cfg.model.roi_head
    roi_head.type = 'StandardRoIHead'
    for key in ('mask_roi_extractor', 'mask_head', 'max_masks_per_batch'):
        roi_head.pop(key)
    cfg.model.test_cfg.rcnn.pop('mask_thr_binary')
    return cfg


def tiny_cascade_mask_rcnn_cfg(rank_based: bool) -> Config:
    """Three class-agnostic box stages and FCN mask heads on the tiny backbone: mmdet's Shared2FCBBoxHead (softmax
    with a background class) or, as the RS/BRS Cascade R-CNN configs, the rank-based heads (sigmoid scores)."""
    cfg = tiny_mask_rcnn_cfg()
    roi_head = cfg.model.roi_head
    channels, num_classes = roi_head.bbox_head.in_channels, roi_head.bbox_head.num_classes
    if rank_based:
        stage_head = dict(roi_head.bbox_head, reg_class_agnostic=True)
    else:
        stage_head = dict(type='Shared2FCBBoxHead', in_channels=channels, fc_out_channels=128, roi_feat_size=7,
                          num_classes=num_classes, reg_class_agnostic=True, bbox_coder=roi_head.bbox_head.bbox_coder)
    cfg.model.type = 'CascadeRCNN'
    cfg.model.roi_head = dict(
        type='CascadeRoIHead', num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=roi_head.bbox_roi_extractor, bbox_head=[copy.deepcopy(stage_head) for _ in range(3)],
        mask_roi_extractor=roi_head.mask_roi_extractor,
        mask_head=dict(type='FCNMaskHead', num_convs=2, in_channels=channels, conv_out_channels=channels,
                       num_classes=num_classes))
    cfg.model.train_cfg = None  # inference only (the training config is per stage for a cascade)
    return cfg


def random_detector(cfg: Config, seed: int = 0):
    from brs_detr.deployment.detector import load_detector
    torch.manual_seed(seed)
    return load_detector(cfg, None)


def export_and_check(model, tmp_path: Path, example, images: Sequence, dynamic: bool = False) -> List:
    """Export ``model`` traced on ``example`` and compare onnxruntime with PyTorch on ``images``, every detection."""
    from brs_detr.deployment import build_export_wrapper, export_onnx
    from brs_detr.deployment.ort_runner import ONNXRuntimeDetector
    from brs_detr.deployment.parity import check_parity
    path = tmp_path / 'model.onnx'
    export_onnx(build_export_wrapper(model), example.graph_inputs(), str(path), dynamic_shape=dynamic)
    rows = check_parity(model, ONNXRuntimeDetector(str(path), model.cfg), images, top_k=ALL_DETECTIONS)
    assert all(row.ok for row in rows), rows
    return rows


# ---------------------------------------------------------------------------------------------- RoIAlign
def export_module(module: torch.nn.Module, inputs: Tuple[torch.Tensor, ...], dynamic_axes: dict) -> bytes:
    """``module`` as an ONNX model (opset 17, TorchScript exporter as brs_detr's export) with inputs ``input<i>``."""
    names = [f'input{index}' for index in range(len(inputs))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the known deprecation of the TorchScript exporter, attributed to its caller
        warnings.filterwarnings('ignore', 'You are using the legacy TorchScript-based ONNX export', DeprecationWarning)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)  # mmcv's shape assertions
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=17, input_names=names,
                          dynamic_axes=dynamic_axes)
    return buffer.getvalue()


def run_onnx(model: bytes, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    session = ort.InferenceSession(model)
    return session.run(None, {f'input{index}': tensor.numpy() for index, tensor in enumerate(inputs)})[0]


#: RoIs (batch index, x1 y1 x2 y2) in input pixels of a 48 x 64 image: large, small, partly and wholly outside the
#: feature map, thinner than a feature pixel.
ROIS = [[1, 3.3, 5.1, 40.2, 30.7], [0, 10., 10., 20., 22.], [0, 50., 2., 63.9, 47.5], [1, -5., -3., 2., 3.],
        [0, 30., 30., 30.5, 31.], [1, 70., 10., 90., 20.], [0, 0., 0., 64., 48.]]


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_exported_roi_align_equals_mmcv(aligned, sampling_ratio):
    """float64 in onnxruntime against mmcv's kernel, for any number of RoIs; the graph of mmcv 2.1's own symbolic is
    refused by onnxruntime at opset 17 (its Squeeze has an ``axes`` attribute)."""
    from mmcv.ops import RoIAlign

    from brs_detr.deployment.roi_align import exportable_roi_align
    generator = torch.Generator().manual_seed(sampling_ratio)
    layer = RoIAlign(output_size=(7, 5), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned).eval()
    feats = torch.randn(2, 3, 12, 16, dtype=torch.float64, generator=generator)
    rois = torch.tensor(ROIS, dtype=torch.float64)
    expected = layer(feats, rois).numpy()
    with exportable_roi_align():
        model = export_module(layer, (feats, rois[:2]), {'input1': {0: 'rois'}})
    np.testing.assert_allclose(run_onnx(model, (feats, rois)), expected, rtol=1e-12, atol=1e-12)
    assert len(run_onnx(model, (feats, rois[:0]))) == 0
    with pytest.raises(Exception, match='axes'):
        ort.InferenceSession(export_module(layer, (feats, rois), {}))  # mmcv's symbolic


# ---------------------------------------------------------------------------------------------- RoI extractor
def level_rois(sizes: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """RoIs of the given square sizes at random places of a 2-image batch of 256 x 320 inputs."""
    sizes = torch.tensor(sizes, dtype=torch.float64)
    corners = torch.rand(len(sizes), 2, dtype=torch.float64, generator=generator) * 60
    batch = torch.arange(len(sizes), dtype=torch.float64)[:, None] % 2
    return torch.cat([batch, corners, corners + sizes[:, None]], 1)


def test_roi_extractor_without_branch_equals_mmdet_and_exports_every_level():
    """mmdet's extractor assigns RoIs below 112 px (level 0), 112-224 px (level 1), above (level 2); in float64 the
    tensor version gives the same features with a level left empty and with a RoI scale factor. Traced on RoIs that
    leave level 1 empty, mmdet's version drops level 1 from the graph; the exportable one pools it."""
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    from brs_detr.deployment.exporter import export_context
    from brs_detr.deployment.roi_extractor import single_roi_extractor_forward
    extractor = SingleRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0), out_channels=4,
                                   featmap_strides=[8, 16, 32], finest_scale=56).eval()
    generator = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(2, 4, 256 // stride, 320 // stride, dtype=torch.float64, generator=generator)
                  for stride in (8, 16, 32))
    all_levels = level_rois([20, 40, 120, 200, 240, 250, 30], generator)
    levels_0_and_2 = all_levels[[0, 1, 4, 5]]
    assert set(extractor.map_roi_levels(all_levels, 3).tolist()) == {0, 1, 2}
    assert set(extractor.map_roi_levels(levels_0_and_2, 3).tolist()) == {0, 2}
    for rois, scale in ((all_levels, None), (levels_0_and_2, None), (all_levels, 1.5)):
        torch.testing.assert_close(single_roi_extractor_forward(extractor, feats, rois, scale),
                                   extractor(feats, rois, scale), rtol=0, atol=0)

    class Extract(torch.nn.Module):
        def forward(self, feat0, feat1, feat2, rois):
            return extractor((feat0, feat1, feat2), rois)

    inputs32 = tuple(feat.float() for feat in feats)
    with export_context():
        model = export_module(Extract(), (*inputs32, levels_0_and_2.float()), {'input3': {0: 'rois'}})
    np.testing.assert_allclose(run_onnx(model, (*inputs32, all_levels.float())),
                               extractor(inputs32, all_levels.float()).numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- post-processing
def test_branch_free_batched_nms_equals_mmcv():
    """The same kept boxes, scores and order as mmcv's batched_nms, on its unsplit and its per-class split path, and
    nothing from nothing."""
    from mmcv.ops import batched_nms as mmcv_batched_nms

    from brs_detr.deployment.two_stage_wrapper import batched_nms
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(400, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(400, 2, generator=generator) * 40], 1)
    scores = torch.rand(400, generator=generator)
    classes = torch.randint(0, 7, (400, ), generator=generator)
    for split_thr in (10**4, 50):  # mmcv splits per class above split_thr boxes
        expected = mmcv_batched_nms(boxes, scores, classes, dict(type='nms', iou_threshold=0.5, split_thr=split_thr))
        ours = batched_nms(boxes, scores, classes, dict(type='nms', iou_threshold=0.5, split_thr=split_thr))
        assert torch.equal(ours[1], expected[1]) and torch.equal(ours[0], expected[0])
    dets, keep = batched_nms(boxes[:0], scores[:0], classes[:0], dict(type='nms', iou_threshold=0.5))
    assert dets.shape == (0, 5) and keep.shape == (0, )


def test_pasted_masks_equal_mmdet_cpu_paste():
    """Against FCNMaskHead._predict_by_feat_single on the CPU (one mask at a time in its box widened by a pixel):
    large boxes with confident edges (pixels beyond the widened box would pass the threshold if pasted), small,
    zero-width and partly outside boxes."""
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmengine.config import ConfigDict

    from brs_detr.deployment.mask_paste import paste_masks
    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10.3, 20.7, 170.2, 150.9], [0., 0., 240., 200.], [50., 60., 58.5, 64.], [30., 30., 30., 80.],
                          [-20., 150., 60., 230.], [100.5, 10.5, 101.5, 11.5]])
    mask_probs = torch.rand(len(boxes), 28, 28, generator=generator) ** 0.3  # mostly above 0.5, edges included
    height, width = 200, 240
    expected = FCNMaskHead(num_classes=1, num_convs=0)._predict_by_feat_single(
        mask_probs[:, None], boxes.clone(), torch.zeros(len(boxes), dtype=torch.long),
        dict(scale_factor=(1.0, 1.0), ori_shape=(height, width)), ConfigDict(mask_thr_binary=0.5), rescale=True,
        activate_map=True)
    ours = paste_masks(mask_probs, boxes, torch.tensor(height), torch.tensor(width), 0.5)
    assert ours.dtype == torch.bool and torch.equal(ours, expected) and ours[0].sum() > 1000


def test_rpn_proposals_equal_mmdet():
    """The wrapper's RPN post-processing gives the proposals of mmdet's RPNHead.predict (rescale=False), at a size
    whose FPN levels all have fewer anchors than nms_pre (mmdet does not sort them) and one whose finest level has
    more (mmdet keeps the nms_pre best)."""
    from mmdet.structures import DetDataSample

    from brs_detr.deployment import build_export_wrapper
    model = random_detector(tiny_mask_rcnn_cfg())
    wrapper = build_export_wrapper(model)
    for height, width in ((96, 128), (256, 320)):
        image = torch.randint(0, 256, (1, 3, height, width), generator=torch.Generator().manual_seed(height)).float()
        with torch.no_grad():
            inputs, image_size = wrapper.preprocessor(image)
            feats = model.extract_feat(inputs)
            sample = DetDataSample(metainfo=dict(img_shape=(height, width), scale_factor=(1.0, 1.0)))
            expected = model.rpn_head.predict(feats, [sample], rescale=False)[0].bboxes
            ours = wrapper.proposals(feats, image_size)
        assert len(ours) > 100 and torch.equal(ours, expected)


# ---------------------------------------------------------------------------------------------- detectors
def test_rank_based_faster_rcnn_export_matches_pytorch(tmp_path):
    from brs_detr.deployment import synthetic_images
    rows = export_and_check(random_detector(tiny_faster_rcnn_cfg()), tmp_path, synthetic_images([(96, 128)])[0],
                            synthetic_images([(96, 128)] * 2, seed=4))
    assert all(row.compared > 10 and row.mask_iou is None for row in rows)
    names = [output.name for output in onnx.load(str(tmp_path / 'model.onnx')).graph.output]
    operators = {node.op_type for node in onnx.load(str(tmp_path / 'model.onnx')).graph.node}
    assert names == ['boxes', 'scores', 'labels'] and {'RoiAlign', 'NonMaxSuppression'} <= operators


def test_mask_rcnn_dynamic_export_matches_pytorch_with_masks(tmp_path):
    """Masks of the original image size (0.8 scale factor: 96x128 -> 120x160); at 256x320 the finest FPN level has
    3840 anchors, more than the RPN's nms_pre (1000), at 96x128 only 576."""
    from brs_detr.deployment import synthetic_images
    from brs_detr.deployment.ort_runner import ONNXRuntimeDetector
    model = random_detector(tiny_mask_rcnn_cfg())
    images = synthetic_images([(96, 128), (64, 160), (256, 320)], seed=4)
    rows = export_and_check(model, tmp_path, synthetic_images([(96, 128)])[0], images, dynamic=True)
    assert all(row.compared > 10 and row.mask_iou > 0.999 for row in rows), [(row.compared, row.mask_iou) for row in rows]
    outputs = ONNXRuntimeDetector(str(tmp_path / 'model.onnx'), model.cfg).run(images[0])
    assert outputs[3].dtype == bool and outputs[3].shape == (len(outputs[0]), 120, 160) and outputs[3].any()


@pytest.mark.parametrize('rank_based', [False, True], ids=['mmdet-heads', 'rank-based-heads'])
def test_cascade_mask_rcnn_export_matches_pytorch(tmp_path, rank_based):
    from brs_detr.deployment import synthetic_images
    rows = export_and_check(random_detector(tiny_cascade_mask_rcnn_cfg(rank_based)), tmp_path,
                            synthetic_images([(96, 128)])[0], synthetic_images([(96, 128)] * 2, seed=4))
    assert all(row.compared > 10 and row.mask_iou is not None for row in rows), rows


def test_graph_traced_without_detections_detects(tmp_path):
    """The score threshold is set between the best scores of two images: the graph traced on the one without any
    detection (every filter empty while tracing) gives the other's detections and masks, and vice versa."""
    from brs_detr.deployment import synthetic_images
    from brs_detr.deployment.inputs import pytorch_predict
    model = random_detector(tiny_mask_rcnn_cfg())
    images = synthetic_images([(96, 128)] * 6, seed=5)
    best = [float(pytorch_predict(model, image).scores.max()) for image in images]
    low, high = images[int(np.argmin(best))], images[int(np.argmax(best))]
    assert max(best) - min(best) > 1e-4
    model.roi_head.test_cfg.score_thr = (max(best) + min(best)) / 2
    assert len(pytorch_predict(model, low).scores) == 0 and len(pytorch_predict(model, high).scores) > 0
    rows = export_and_check(model, tmp_path, low, [low, high])
    assert [row.onnx_count for row in rows] == [0, len(pytorch_predict(model, high).scores)]


def test_unexported_parts_are_named():
    from brs_detr.deployment import UnsupportedExportError, build_export_wrapper
    cfg = tiny_mask_rcnn_cfg()
    cfg.model.roi_head.bbox_roi_extractor.roi_layer.pool_mode = 'max'
    cfg.model.test_cfg.rcnn.mask_thr_binary = -1
    with pytest.raises(UnsupportedExportError, match=r'MaskRCNN \(two-stage\): not exported: ') as error:
        build_export_wrapper(random_detector(cfg))
    assert "roi_head.bbox_roi_extractor: RoIAlign(pool_mode='max') is not exported" in str(error.value)
    assert 'test_cfg.rcnn.mask_thr_binary < 0' in str(error.value)
    cfg = tiny_mask_rcnn_cfg()
    cfg.model.roi_head.bbox_roi_extractor.type = 'GenericRoIExtractor'
    with pytest.raises(UnsupportedExportError, match='roi_head.bbox_roi_extractor GenericRoIExtractor'):
        build_export_wrapper(random_detector(cfg))


# ---------------------------------------------------------------------------------------------- demo
@pytest.mark.slow
def test_demo_onnx_draws_the_masks(tmp_path, toy_coco_root):
    """pytorch2onnx on the tiny BRS Mask R-CNN as a user runs it, then demo --onnx against the PyTorch demo's
    inferencer on toy images: the same boxes, labels and masks in preds/*.json and the same picture."""
    from pycocotools import mask as mask_utils

    from brs_detr.apis import BRSDetInferencer
    from test_deployment import EXPORT_TOOL
    checkpoint, out = tmp_path / 'mask.pth', tmp_path / 'mask.onnx'
    model = random_detector(tiny_mask_rcnn_cfg())
    torch.nn.init.constant_(model.roi_head.mask_head.conv_logits.bias, 0.1)  # untrained masks on the toy images
    torch.save({'state_dict': model.state_dict()}, checkpoint)              # are (almost) empty without it
    images = sorted((toy_coco_root / 'val').iterdir())[:2]
    done = run([EXPORT_TOOL, MASK_RCNN_CONFIG, checkpoint, '--out', out, '--images', *images], cwd=REPO_ROOT)
    assert 'min mask IoU' in done.stdout and 'onnxruntime matches PyTorch' in done.stdout
    run([DEMO, *images, MASK_RCNN_CONFIG, '--onnx', out, '--out-dir', tmp_path / 'onnx', '--score-thr', '0.05'],
        cwd=REPO_ROOT)
    BRSDetInferencer(str(MASK_RCNN_CONFIG), str(checkpoint), device='cpu', show_progress=False)(
        [str(image) for image in images], out_dir=str(tmp_path / 'torch'), pred_score_thr=0.05, no_save_pred=False)
    for image in images:
        preds = [json.loads((tmp_path / side / 'preds' / f'{image.stem}.json').read_text())
                 for side in ('onnx', 'torch')]
        order = matched_order(preds[0], preds[1])
        assert len(order) > 0 and preds[0]['labels'] == [preds[1]['labels'][index] for index in order]
        masks = [mask_utils.decode(pred['masks']).astype(bool) for pred in preds]  # (H, W, N)
        assert masks[0].shape == masks[1].shape and masks[0].any()
        assert (masks[0] != masks[1][:, :, order]).mean() < 1e-4
        # mmdet's visualizer jitters each mask's colour at random: outside the drawn masks the pictures agree, inside
        # them the ONNX picture is coloured
        drawn_masks = masks[0][:, :, np.array(preds[0]['scores']) > 0.05].any(axis=2)
        drawn = [cv2.imread(str(tmp_path / side / 'vis' / f'{image.stem}.png')) for side in ('onnx', 'torch')]
        assert (drawn[0] != drawn[1]).any(axis=2)[~drawn_masks].mean() < 1e-3
        assert (drawn[0] != cv2.imread(str(image))).any(axis=2)[drawn_masks].mean() > 0.9


def matched_order(pred: dict, reference: dict, score_atol: float = 1e-4, box_atol: float = 1e-3) -> List[int]:
    """For each detection of ``pred`` (preds/*.json), the index of the ``reference`` detection with the same label,
    a score within ``score_atol`` and a box within ``box_atol`` pixels, each used once; fails unless both have the
    same detections. Random weights give scores a few 1e-8 apart, which float rounding may order either way."""
    assert len(pred['labels']) == len(reference['labels'])
    free = list(range(len(reference['labels'])))
    order = []
    for label, score, box in zip(pred['labels'], pred['scores'], pred['bboxes']):
        same = [index for index in free if reference['labels'][index] == label
                and abs(reference['scores'][index] - score) <= score_atol
                and np.abs(np.subtract(reference['bboxes'][index], box)).max() <= box_atol]
        assert same, f'no PyTorch detection for label {label}, score {score}, box {box}'
        order.append(same[0])
        free.remove(same[0])
    return order
