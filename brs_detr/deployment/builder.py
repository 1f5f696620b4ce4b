"""Pick the exportable inference wrapper of a detector, or name why there is none."""
from __future__ import annotations

from torch import nn

from mmdet.models.detectors import DeformableDETR, SingleStageDetector, TwoStageDetector

from .dense_wrapper import DenseDetectorExportWrapper
from .detr_wrapper import DETRExportWrapper
from .errors import UnsupportedExportError
from .two_stage_wrapper import TwoStageDetectorExportWrapper


def build_export_wrapper(detector: nn.Module) -> nn.Module:
    """The ``(image, scale_factor) -> (boxes, scores, labels[, masks])`` module to export for ``detector``.

    * :class:`DeformableDETR` and subclasses (Co-Deformable-DETR, BRS-DETR): :class:`DETRExportWrapper`.
    * :class:`TwoStageDetector` (Faster R-CNN, Mask R-CNN, Cascade (Mask) R-CNN and the rank-based ones):
      :class:`TwoStageDetectorExportWrapper` (``masks`` too for a mask head).
    * :class:`SingleStageDetector` (ATSS, PAA, RetinaNet, ...): :class:`DenseDetectorExportWrapper`.

    Raises:
        UnsupportedExportError: Any other detector, or a part of a two-stage detector whose test-time computation
            is not exported (named).
    """
    if isinstance(detector, DeformableDETR):
        return DETRExportWrapper(detector).eval()
    if isinstance(detector, TwoStageDetector):
        return TwoStageDetectorExportWrapper(detector).eval()
    if isinstance(detector, SingleStageDetector) and not hasattr(detector, 'roi_head'):
        return DenseDetectorExportWrapper(detector).eval()
    raise UnsupportedExportError(f'{type(detector).__name__}: no ONNX export for this detector type (exported: '
                                 f'DeformableDETR family, two-stage and single-stage dense detectors)')
