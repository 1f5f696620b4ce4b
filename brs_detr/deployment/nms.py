"""Non-maximum suppression that exports to ONNX's ``NonMaxSuppression``.

mmcv 2.x's ``NMSop`` (behind ``mmcv.ops.nms`` and ``batched_nms``, which mmdet's dense heads call) runs a compiled
kernel and has no ONNX symbolic any more (mmcv 2 moved export to MMDeploy). :class:`ExportableNMSop` keeps its
forward (the same kernel, so PyTorch results do not change) and adds a symbolic: one ``NonMaxSuppression`` node
(one batch, one class: ``batched_nms`` has already offset the boxes of each class apart), whose selected indices are
in descending score order, as mmcv's. Both suppress a box whose IoU with a kept box is strictly above the threshold,
with areas ``(x2 - x1) * (y2 - y1)`` (mmcv's ``offset=0``).

:func:`exportable_nms` swaps it into mmcv for the duration of an export.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator
from unittest import mock

import torch
from torch import Tensor

#: mmcv's own NMSop (its compiled kernel), kept before :func:`exportable_nms` replaces it.
MMCV_NMSOP = importlib.import_module('mmcv.ops.nms').NMSop
#: ``max_output_boxes_per_class`` when mmcv's ``max_num`` is not positive (no limit).
UNLIMITED_OUTPUTS = 2**31 - 1
#: The only box-area convention ONNX NonMaxSuppression has (mmcv's ``offset=0``).
SUPPORTED_OFFSET = 0


class UnsupportedNMSError(ValueError):
    """An NMS setting that ONNX's NonMaxSuppression cannot express."""


class ExportableNMSop(torch.autograd.Function):
    """mmcv's ``NMSop`` with an ONNX symbolic (``NonMaxSuppression``); the forward is mmcv's."""

    @staticmethod
    def forward(ctx: Any, bboxes: Tensor, scores: Tensor, iou_threshold: float, offset: int,
                score_threshold: float, max_num: int) -> Tensor:
        """Indices (K,) of the kept boxes in descending score order (mmcv's kernel)."""
        return MMCV_NMSOP.forward(ctx, bboxes, scores, iou_threshold, offset, score_threshold, max_num)

    @staticmethod
    def symbolic(g: Any, bboxes: Any, scores: Any, iou_threshold: float, offset: int, score_threshold: float,
                 max_num: int) -> Any:
        """``NonMaxSuppression`` on boxes (1, N, 4) and scores (1, 1, N); returns the box column (K,)."""
        if offset != SUPPORTED_OFFSET:
            raise UnsupportedNMSError(f'mmcv nms with offset={offset}: ONNX NonMaxSuppression computes box areas '
                                      f'without the +1 offset; set offset=0 in the nms config')
        boxes = g.op('Unsqueeze', bboxes, g.op('Constant', value_t=torch.tensor([0])))
        box_scores = g.op('Unsqueeze', scores, g.op('Constant', value_t=torch.tensor([0, 1])))
        max_outputs = g.op('Constant', value_t=torch.tensor([max_num if max_num > 0 else UNLIMITED_OUTPUTS]))
        iou = g.op('Constant', value_t=torch.tensor([float(iou_threshold)], dtype=torch.float32))
        inputs = [boxes, box_scores, max_outputs, iou]
        if score_threshold > 0:  # mmcv filters scores > threshold only when it is positive
            inputs.append(g.op('Constant', value_t=torch.tensor([float(score_threshold)], dtype=torch.float32)))
        selected = g.op('NonMaxSuppression', *inputs)  # (K, 3): batch, class, box
        box_column = g.op('Gather', selected, g.op('Constant', value_t=torch.tensor(2)), axis_i=1)
        return box_column


@contextlib.contextmanager
def exportable_nms() -> Iterator[None]:
    """Within the block, ``mmcv.ops.nms`` (and so ``batched_nms``/``multiclass_nms``) uses :class:`ExportableNMSop`."""
    nms_module = importlib.import_module('mmcv.ops.nms')  # the module (mmcv.ops.nms is also a function name)
    with mock.patch.object(nms_module, 'NMSop', ExportableNMSop):
        yield
