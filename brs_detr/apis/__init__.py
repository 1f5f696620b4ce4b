"""High-level APIs: the inference demo (:class:`BRSDetInferencer`), the dataset browser (:func:`browse_dataset`),
and the logic of ``tools/train.py`` / ``tools/test.py`` (:mod:`brs_detr.apis.launch`, ``train``, ``test``).

Not imported by ``import brs_detr`` (it pulls in mmdet's inferencer); ``from brs_detr.apis import ...`` registers
brs-detr's modules and installs its safe checkpoint loader first, as ``import brs_detr`` does.
"""
from .browse_dataset import browse_dataset
from .det_inferencer import BRSDetInferencer, read_rgb
from .drawing import visualizer_config, write_png
from .image_inputs import IMG_EXTENSIONS, ImageInputError, check_image_readable, collect_images, output_names
from .runtime import DeviceError, resolve_device
from .test import has_display
from .weights import WeightsMismatchError, load_weights_strictly

__all__ = [
    'BRSDetInferencer', 'browse_dataset', 'read_rgb', 'visualizer_config', 'write_png', 'IMG_EXTENSIONS',
    'ImageInputError', 'check_image_readable', 'collect_images', 'output_names', 'DeviceError', 'has_display',
    'resolve_device', 'WeightsMismatchError', 'load_weights_strictly'
]
