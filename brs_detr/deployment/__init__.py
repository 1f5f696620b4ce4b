"""ONNX export of the detectors (query-head DETRs and single-stage dense detectors) and their onnxruntime runner.

Not imported by ``import brs_detr``: onnx and onnxruntime are optional and only imported where they are used
(:mod:`brs_detr.deployment.dependencies`). docs/deployment.md describes the graphs, the checks and the limits.
"""
from .builder import build_export_wrapper
from .dense_wrapper import DenseDetectorExportWrapper
from .dependencies import MissingDependencyError, import_optional
from .detr_wrapper import DETRExportWrapper
from .errors import UnsupportedExportError
from .exporter import DEFAULT_OPSET, export_context, export_onnx
from .inputs import ResizedImage, build_test_pipeline, default_shape, load_resized, pytorch_predict, synthetic_images
from .msda import multi_scale_deformable_attn_tensor, tensor_msda
from .nms import ExportableNMSop, exportable_nms
from .preprocessing import InGraphPreprocessor

__all__ = [
    'build_export_wrapper', 'DenseDetectorExportWrapper', 'MissingDependencyError', 'import_optional',
    'DETRExportWrapper', 'UnsupportedExportError', 'DEFAULT_OPSET', 'export_context', 'export_onnx', 'ResizedImage',
    'build_test_pipeline', 'default_shape', 'load_resized', 'pytorch_predict', 'synthetic_images',
    'multi_scale_deformable_attn_tensor', 'tensor_msda', 'ExportableNMSop', 'exportable_nms', 'InGraphPreprocessor'
]
