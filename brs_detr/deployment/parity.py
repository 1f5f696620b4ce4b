"""The check after export: onnxruntime against the PyTorch model on the same images, as a table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from mmengine.structures import InstanceData
from torch import nn

from .defaults import BOX_RTOL, MASK_MIN_IOU, SCORE_ATOL, TOP_K
from .inputs import ResizedImage, pytorch_predict
from .ort_runner import ONNXRuntimeDetector


@dataclass
class ParityRow:
    """One image of the check."""
    name: str
    shape: tuple
    torch_count: int
    onnx_count: int
    compared: int
    labels_equal: bool
    box_error: float
    score_error: float
    ok: bool
    #: The lowest IoU of a compared detection's ONNX mask with PyTorch's (None: a model without masks).
    mask_iou: Optional[float] = None


def mask_iou(masks: np.ndarray, reference: np.ndarray) -> float:
    """The lowest IoU of ``masks[i]`` with ``reference[i]`` (N, H, W bool); two empty masks agree (IoU 1); masks of
    different image sizes have IoU 0."""
    if masks.shape[1:] != reference.shape[1:]:
        return 0.0
    if len(masks) == 0:
        return 1.0
    masks, reference = masks.reshape(len(masks), -1), reference.reshape(len(reference), -1)
    intersection = (masks & reference).sum(1)
    union = (masks | reference).sum(1)
    return float(np.min(np.where(union > 0, intersection / np.maximum(union, 1), 1.0), initial=1.0))


def compare(name: str, shape: tuple, reference: InstanceData, boxes: np.ndarray, scores: np.ndarray,
            labels: np.ndarray, masks: Optional[np.ndarray] = None, top_k: int = TOP_K, box_rtol: float = BOX_RTOL,
            score_atol: float = SCORE_ATOL, mask_min_iou: float = MASK_MIN_IOU) -> ParityRow:
    """Compare the first ``top_k`` detections of onnxruntime with PyTorch's, in order.

    The box error is ``max |onnx - torch| / max(|torch|, 1)`` over their coordinates (relative, with a floor of
    one pixel); the labels must be equal one by one; each side must have at least the compared number. With
    ``masks`` (N, H0, W0 bool), each compared detection's mask must overlap PyTorch's ``masks`` with an IoU of at
    least ``mask_min_iou`` (:func:`mask_iou`).
    """
    ref_boxes, ref_scores = reference.bboxes.numpy(), reference.scores.numpy()
    ref_labels = reference.labels.numpy()
    compared = min(top_k, len(ref_scores))
    if len(scores) < compared:
        return ParityRow(name, shape, len(ref_scores), len(scores), compared, False, float('inf'), float('inf'), False,
                         None if masks is None else 0.0)
    box_error = float(np.max(np.abs(boxes[:compared] - ref_boxes[:compared]) /
                             np.maximum(np.abs(ref_boxes[:compared]), 1.0), initial=0.0))
    score_error = float(np.max(np.abs(scores[:compared] - ref_scores[:compared]), initial=0.0))
    labels_equal = bool(np.array_equal(labels[:compared], ref_labels[:compared]))
    ok = labels_equal and box_error <= box_rtol and score_error <= score_atol
    iou = None
    if masks is not None:
        ref_masks = reference.masks.numpy() if 'masks' in reference else np.zeros((0, 0, 0), bool)
        iou = mask_iou(masks[:compared], ref_masks[:compared]) if len(ref_masks) >= compared else 0.0
        ok = ok and iou >= mask_min_iou
    return ParityRow(name, shape, len(ref_scores), len(scores), compared, labels_equal, box_error, score_error, ok,
                     iou)


def check_parity(model: nn.Module, runner: ONNXRuntimeDetector, images: Sequence[ResizedImage],
                 top_k: int = TOP_K) -> List[ParityRow]:
    """:func:`compare` onnxruntime with the model's own ``test_step`` on every image."""
    return [compare(image.name, image.shape, pytorch_predict(model, image), *runner.run(image), top_k=top_k)
            for image in images]


def parity_table(rows: Sequence[ParityRow]) -> str:
    """A Markdown table of :func:`check_parity`'s rows."""
    with_masks = any(row.mask_iou is not None for row in rows)
    lines = ['| image | input HxW | PyTorch dets | ONNX dets | compared (top-k) | labels and order | '
             'max box rel. error | max score error | ' + ('min mask IoU | ' if with_masks else '') + 'result |',
             '|---|---|---:|---:|---:|---|---:|---:|' + ('---:|' if with_masks else '') + '---|']
    for row in rows:
        iou = (f'{row.mask_iou:.4f} | ' if row.mask_iou is not None else '- | ') if with_masks else ''
        lines.append(f'| {row.name} | {row.shape[0]}x{row.shape[1]} | {row.torch_count} | {row.onnx_count} | '
                     f'{row.compared} | {"same" if row.labels_equal else "DIFFERENT"} | {row.box_error:.2e} | '
                     f'{row.score_error:.2e} | {iou}{"ok" if row.ok else "FAIL"} |')
    return '\n'.join(lines)
