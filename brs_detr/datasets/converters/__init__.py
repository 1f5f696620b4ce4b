"""Converters of other annotation formats to COCO JSON (the logic of ``tools/dataset_converters/``).

One module per format (:mod:`.voc`: Pascal VOC XML, :mod:`.yolo`: YOLO txt), sharing :mod:`.coco_output` (image
sizes, box checks, the atomic COCO file checked like ``tools/train.py`` checks it, the summary).
"""
from .coco_output import ConversionError, run_conversion
from .voc import DIFFICULT_POLICIES, convert_voc
from .yolo import convert_yolo

__all__ = ['ConversionError', 'DIFFICULT_POLICIES', 'convert_voc', 'convert_yolo', 'run_conversion']
