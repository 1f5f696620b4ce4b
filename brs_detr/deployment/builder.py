"""Pick the exportable inference wrapper of a detector, or name why there is none."""
from __future__ import annotations

from torch import nn

from mmdet.models.detectors import DeformableDETR, SingleStageDetector, TwoStageDetector

from .dense_wrapper import DenseDetectorExportWrapper
from .detr_wrapper import DETRExportWrapper
from .errors import UnsupportedExportError


def build_export_wrapper(detector: nn.Module) -> nn.Module:
    """The ``(image, scale_factor) -> (boxes, scores, labels)`` module to export for ``detector``.

    * :class:`DeformableDETR` and subclasses (Co-Deformable-DETR, BRS-DETR): :class:`DETRExportWrapper`.
    * :class:`SingleStageDetector` (ATSS, PAA, RetinaNet, ...): :class:`DenseDetectorExportWrapper`.

    Raises:
        UnsupportedExportError: Any other detector; two-stage detectors (Faster/Mask/Cascade R-CNN) are named with
            the module that stops them.
    """
    if isinstance(detector, DeformableDETR):
        return DETRExportWrapper(detector).eval()
    if isinstance(detector, TwoStageDetector):
        raise UnsupportedExportError(
            f'{type(detector).__name__} (two-stage): its RoI head ({type(detector.roi_head).__name__} with '
            f'SingleRoIExtractor) is not exported: the extractor picks each RoI\'s feature level with a Python branch '
            f'on the number of RoIs per level, which tracing freezes, and mmcv 2.1\'s RoIAlign ONNX symbolic shifts '
            f'boxes by half a pixel a second time at opset >= 16 (docs/deployment.md). Export a single-stage or '
            f'DETR model instead')
    if isinstance(detector, SingleStageDetector) and not hasattr(detector, 'roi_head'):
        return DenseDetectorExportWrapper(detector).eval()
    raise UnsupportedExportError(f'{type(detector).__name__}: no ONNX export for this detector type (exported: '
                                 f'DeformableDETR family, single-stage dense detectors)')
