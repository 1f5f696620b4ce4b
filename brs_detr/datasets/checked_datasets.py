"""mmdet's COCO-format datasets without the annotations mmdet cannot train on (``tools/train.py``/``test.py`` use them).

The tools replace ``CocoDataset`` and ``CityscapesDataset`` in the configs by the subclasses below
(:func:`brs_detr.datasets.data_check.use_checked_loading`), the way they replace ``LoadImageFromFile``.
"""
from __future__ import annotations

import logging
from typing import List, Union

from mmengine.logging import print_log

from mmdet.datasets import CityscapesDataset, CocoDataset
from mmdet.registry import DATASETS

from .annotation_validity import annotation_problem, repeat_key


class ValidAnnotationsMixin:
    """Drops the annotations :func:`~brs_detr.datasets.annotation_validity.annotation_problem` rejects before the
    parent's ``parse_data_info`` reads them.

    What changed, and why: mmdet crashes on a box of three numbers, strings or ``null`` and on a missing area,
    trains on a box of infinite size, and (with masks) crashes on a missing segmentation or an RLE of another size,
    rasterises garbage from a corrupt RLE and exhausts the memory on a polygon holding ``null``; an annotation repeated
    in the file (same image, category and box) trains its object twice. The data check
    reports these annotations (file, ids, what is wrong; refused above ``data_check.max_invalid_box_fraction``);
    here they are dropped, so that nothing malformed reaches the model even with ``--skip-data-check``. Everything
    else is the parent's.

    Args:
        with_mask: The pipeline loads masks (``LoadAnnotations(with_mask=True)``): segmentations are checked too.
        Other arguments: the parent dataset's.
    """

    def __init__(self, *args, with_mask: bool = False, **kwargs) -> None:
        self.with_mask = with_mask
        self.num_dropped_annotations = 0
        super().__init__(*args, **kwargs)

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        image = raw_data_info['raw_img_info']
        annotations = raw_data_info['raw_ann_info']
        kept, seen = [], set()
        for ann in annotations:
            if annotation_problem(ann, image, self.with_mask) is None and repeat_key(ann) not in seen:
                seen.add(repeat_key(ann))
                kept.append(ann)
        self.num_dropped_annotations += len(annotations) - len(kept)
        return super().parse_data_info({**raw_data_info, 'raw_ann_info': kept})

    def load_data_list(self) -> List[dict]:
        self.num_dropped_annotations = 0
        data_list = super().load_data_list()
        if self.num_dropped_annotations:
            print_log(f'{self.ann_file}: {self.num_dropped_annotations} malformed or repeated annotations dropped (the '
                      f'data check lists them)', logger='current', level=logging.WARNING)
        return data_list


@DATASETS.register_module()
class CheckedCocoDataset(ValidAnnotationsMixin, CocoDataset):
    """mmdet's :class:`~mmdet.datasets.CocoDataset` without malformed annotations (:class:`ValidAnnotationsMixin`)."""


@DATASETS.register_module()
class CheckedCityscapesDataset(ValidAnnotationsMixin, CityscapesDataset):
    """mmdet's :class:`~mmdet.datasets.CityscapesDataset` without malformed annotations
    (:class:`ValidAnnotationsMixin`)."""


#: Dataset type of the configs -> its checked subclass (same arguments plus ``with_mask``).
CHECKED_DATASETS = {'CocoDataset': 'CheckedCocoDataset', 'CityscapesDataset': 'CheckedCityscapesDataset'}
