"""ONNX export of the detectors (query-head DETRs, single-stage dense and two-stage detectors) and their onnxruntime
runner.

Not imported by ``import brs_detr``: onnx and onnxruntime are optional and only imported where they are used
(:mod:`brs_detr.deployment.dependencies`). docs/deployment.md describes the graphs, the checks and the limits.
Names are imported on first access (``tools/deployment/pytorch2onnx.py --help`` needs neither torch nor mmdet).
"""
from brs_detr.lazy_import import lazy_exports

_EXPORTS = {
    '.builder': ['build_export_wrapper'],
    '.defaults': ['DEFAULT_OPSET'],
    '.dense_wrapper': ['DenseDetectorExportWrapper'],
    '.dependencies': ['MissingDependencyError', 'import_optional'],
    '.detr_wrapper': ['DETRExportWrapper'],
    '.errors': ['UnsupportedExportError'],
    '.exporter': ['export_context', 'export_onnx'],
    '.inputs': ['ResizedImage', 'build_test_pipeline', 'default_shape', 'load_resized', 'pytorch_predict',
                'synthetic_images'],
    '.mask_paste': ['paste_masks'],
    '.msda': ['multi_scale_deformable_attn_tensor', 'tensor_msda'],
    '.nms': ['ExportableNMSop', 'exportable_nms'],
    '.preprocessing': ['InGraphPreprocessor'],
    '.roi_align': ['ExportableRoIAlignFunction', 'exportable_roi_align'],
    '.roi_extractor': ['exportable_roi_extractor', 'single_roi_extractor_forward'],
    '.two_stage_wrapper': ['TwoStageDetectorExportWrapper'],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
