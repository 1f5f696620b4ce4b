"""mmcv's RoIAlign with an ONNX symbolic that gives the same result as its kernel at opset >= 16.

mmcv 2.1's ``RoIAlignFunction.symbolic`` was written for ONNX ``RoiAlign`` before opset 16: it subtracts half a
pixel (``0.5 / spatial_scale``) from the boxes itself for ``aligned=True`` and emits ``Squeeze`` with an ``axes``
attribute. At opset 16 ``RoiAlign`` got ``coordinate_transformation_mode``, ``half_pixel`` by default, which shifts
the boxes by half a pixel again, and ``Squeeze`` takes its axes as an input since opset 13: onnxruntime refuses the
graph (tests/test_two_stage_deployment.py checks that), and with the ``Squeeze`` repaired every RoI feature would be
sampled half a feature pixel off. :class:`ExportableRoIAlignFunction` keeps mmcv's forward (its kernel, so PyTorch
results do not change) and emits one ``RoiAlign`` with ``coordinate_transformation_mode`` = ``half_pixel`` for
``aligned=True`` and ``output_half_pixel`` (the pre-16 behaviour) for ``aligned=False``, without shifting the boxes;
both agree with mmcv's kernel: the same sampling grid (``sampling_ratio``, or ``ceil(roi size / output size)``
points per bin when it is 0), the same bilinear weights and border rule, the minimum RoI size of 1 only without
``aligned``.

:func:`exportable_roi_align` swaps it into mmcv for the duration of an export.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator
from unittest import mock

import torch
from torch import Tensor, nn

#: mmcv's module (``mmcv.ops.roi_align`` is also the name of a function) and its autograd Function.
ROI_ALIGN_MODULE = importlib.import_module('mmcv.ops.roi_align')
MMCV_ROI_ALIGN = ROI_ALIGN_MODULE.RoIAlignFunction
#: ONNX ``coordinate_transformation_mode`` that reproduces mmcv's ``aligned`` flag.
COORDINATE_MODES = {True: 'half_pixel', False: 'output_half_pixel'}
#: The pooling mode whose ONNX definition equals mmcv's (onnxruntime's ``max`` takes the maximum of the weighted
#: corner values, mmcv the maximum of the interpolated samples).
SUPPORTED_POOL_MODE = 'avg'


class UnsupportedRoIAlignError(ValueError):
    """A RoIAlign setting that ONNX ``RoiAlign`` does not compute as mmcv does."""


def check_exportable_roi_layer(layer: nn.Module, owner: str) -> None:
    """Raise :class:`UnsupportedRoIAlignError` unless ``layer`` is an mmcv ``RoIAlign`` that exports exactly.

    Args:
        layer (nn.Module): A RoI extractor's ``roi_layers[i]``.
        owner (str): Who holds it, for the message (e.g. ``'roi_head.bbox_roi_extractor'``).
    """
    if not isinstance(layer, ROI_ALIGN_MODULE.RoIAlign):
        raise UnsupportedRoIAlignError(f'{owner} uses {type(layer).__name__}: only mmcv RoIAlign is exported')
    if layer.use_torchvision:
        raise UnsupportedRoIAlignError(f'{owner}: RoIAlign(use_torchvision=True) is not exported; use mmcv\'s kernel')
    if layer.pool_mode != SUPPORTED_POOL_MODE:
        raise UnsupportedRoIAlignError(f'{owner}: RoIAlign(pool_mode={layer.pool_mode!r}) is not exported: ONNX '
                                       f'RoiAlign max pooling differs from mmcv\'s; use pool_mode="avg"')


class ExportableRoIAlignFunction(torch.autograd.Function):
    """mmcv's ``RoIAlignFunction`` with an ONNX symbolic for opset >= 16; the forward is mmcv's."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, rois: Tensor, output_size: Any, spatial_scale: float = 1.0,
                sampling_ratio: int = 0, pool_mode: str = 'avg', aligned: bool = True) -> Tensor:
        """(num_rois, C, out_h, out_w) features of ``rois`` (num_rois, 5: batch index, x1 y1 x2 y2) in ``input``
        (N, C, H, W), by mmcv's kernel."""
        return MMCV_ROI_ALIGN.forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, pool_mode,
                                      aligned)

    @staticmethod
    def symbolic(g: Any, input: Any, rois: Any, output_size: Any, spatial_scale: float, sampling_ratio: int,
                 pool_mode: str, aligned: bool) -> Any:
        """One ``RoiAlign`` node; the batch index and the boxes are split from ``rois`` with ``Gather``."""
        if pool_mode != SUPPORTED_POOL_MODE:
            raise UnsupportedRoIAlignError(f'RoIAlign(pool_mode={pool_mode!r}) is not exported: ONNX RoiAlign max '
                                           f'pooling differs from mmcv\'s; use pool_mode="avg"')
        output_height, output_width = torch.nn.modules.utils._pair(output_size)
        batch_indices = g.op('Gather', rois, g.op('Constant', value_t=torch.tensor(0)), axis_i=1)
        batch_indices = g.op('Cast', batch_indices, to_i=torch.onnx.TensorProtoDataType.INT64)
        boxes = g.op('Gather', rois, g.op('Constant', value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)
        return g.op('RoiAlign', input, boxes, batch_indices, output_height_i=output_height,
                    output_width_i=output_width, spatial_scale_f=float(spatial_scale),
                    sampling_ratio_i=max(0, int(sampling_ratio)), mode_s=pool_mode,
                    coordinate_transformation_mode_s=COORDINATE_MODES[bool(aligned)])


@contextlib.contextmanager
def exportable_roi_align() -> Iterator[None]:
    """Within the block, mmcv's ``RoIAlign`` modules (and ``mmcv.ops.roi_align``'s module-level function they call)
    use :class:`ExportableRoIAlignFunction`."""
    with mock.patch.object(ROI_ALIGN_MODULE, 'roi_align', ExportableRoIAlignFunction.apply):
        yield
