"""High-level APIs: the inference demo (:class:`BRSDetInferencer`), the dataset browser (:func:`browse_dataset`),
and the logic of ``tools/train.py`` / ``tools/test.py`` (:mod:`brs_detr.apis.launch`, ``train``, ``test``).

What the tools' argument parsers need is in :mod:`brs_detr.apis.cli` (light: no torch, mmcv or mmdet). The names
below are imported on first access.
"""
from brs_detr.lazy_import import lazy_exports

_EXPORTS = {
    '.dataset_browser': ['browse_dataset'],
    '.cli': ['ToolInputError', 'has_display'],
    '.det_inferencer': ['BRSDetInferencer', 'read_rgb'],
    '.drawing': ['visualizer_config', 'write_png'],
    '.image_inputs': ['IMG_EXTENSIONS', 'ImageInputError', 'check_image_readable', 'collect_images', 'output_names'],
    '.runtime': ['DeviceError', 'resolve_device'],
    '.weights': ['WeightsMismatchError', 'load_weights_strictly'],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
