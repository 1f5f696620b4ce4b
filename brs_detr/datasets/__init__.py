"""Data: checks run before training/testing, an image loader whose errors name the image and its source, and the
toy COCO generator (:mod:`~brs_detr.datasets.toy_coco`, behind ``tools/make_toy_coco.py``).

Names are imported on first access; importing :mod:`brs_detr.datasets.transforms` registers
:class:`CheckedLoadImageFromFile` in mmdet's TRANSFORMS, :mod:`brs_detr.datasets.checked_datasets` the datasets
without malformed annotations in DATASETS (:func:`brs_detr.register_all_modules` does).
"""
from brs_detr.lazy_import import lazy_exports

_EXPORTS = {
    '.annotation_validity': ['annotation_problem'],
    '.checked_datasets': ['CheckedCityscapesDataset', 'CheckedCocoDataset', 'ValidAnnotationsMixin'],
    '.coco_check': ['CocoCheckReport', 'DataCheckError', 'DataCheckPolicy', 'check_coco_file'],
    '.data_check': ['check_datasets', 'name_images_in_load_errors', 'use_checked_loading'],
    '.transforms': ['CheckedLoadImageFromFile', 'ImageLoadError'],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
