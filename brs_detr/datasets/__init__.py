"""Dataset checks run before training/testing, and an image loader whose errors name the image and its source."""
from .coco_check import CocoCheckReport, DataCheckError, DataCheckPolicy, check_coco_file
from .data_check import check_datasets, name_images_in_load_errors
from .transforms import CheckedLoadImageFromFile, ImageLoadError

__all__ = [
    'CocoCheckReport', 'DataCheckError', 'DataCheckPolicy', 'check_coco_file', 'check_datasets',
    'name_images_in_load_errors', 'CheckedLoadImageFromFile', 'ImageLoadError'
]
