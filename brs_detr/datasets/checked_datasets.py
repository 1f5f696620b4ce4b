"""mmdet's COCO-format datasets without the annotations mmdet cannot train on (``tools/train.py``/``test.py`` use them).

The tools replace ``CocoDataset`` and ``CityscapesDataset`` in the configs by the subclasses below
(:func:`brs_detr.datasets.data_check.use_checked_loading`), the way they replace ``LoadImageFromFile``.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, List, Optional, Union

from mmengine.logging import print_log

from mmdet.datasets import CityscapesDataset, CocoDataset
from mmdet.registry import DATASETS

from .annotation_validity import annotation_problem, repeat_key


class PipelineError(RuntimeError):
    """A transform of a dataset's pipeline failed on a sample: the message names the transform and the image."""


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

    A transform that fails on a sample (``Resize(scale=[0, 0])``: a ``TypeError`` from deep in mmcv) raises
    :class:`PipelineError` naming the transform's config key and the image, instead of the transform's exception
    through the DataLoader's frames.

    Args:
        with_mask: The pipeline loads masks (``LoadAnnotations(with_mask=True)``): segmentations are checked too.
        config_key: The dataset's config key (``train_dataloader.dataset``), for messages.
        Other arguments: the parent dataset's.
    """

    def __init__(self, *args, with_mask: bool = False, config_key: Optional[str] = None, **kwargs) -> None:
        self.with_mask = with_mask
        self.config_key = config_key
        self.num_dropped_annotations = 0
        super().__init__(*args, **kwargs)

    def prepare_data(self, idx: int) -> Any:
        """The parent's, except that a transform of the pipeline that fails on a sample raises
        :class:`PipelineError` naming the transform (its place in the pipeline config) and the image."""
        try:
            return super().prepare_data(idx)
        except Exception as error:  # noqa: B902  (re-raised, named; brs-detr's own errors name their cause already)
            if type(error).__module__.split('.')[0] == 'brs_detr':
                raise
            described = self._describe_pipeline_failure(idx, error)
            if described is None:
                raise
            raise PipelineError(described) from error

    def _describe_pipeline_failure(self, idx: int, error: BaseException) -> Optional[str]:
        """``transform N (Name) of <key>.pipeline failed on <image>: <error>``, or ``None`` when no transform of
        the pipeline raised ``error``."""
        transforms = list(getattr(self.pipeline, 'transforms', []))
        index = None
        tb = error.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get('self')
            for position, transform in enumerate(transforms):
                if owner is transform:
                    index = position
            tb = tb.tb_next
        if index is None:
            return None
        pipeline = (f'{self.config_key}.pipeline' if self.config_key else
                    f'the pipeline of the dataset of {self.ann_file}')
        image = self.get_data_info(idx).get('img_path', f'sample {idx}')
        message = traceback.format_exception_only(type(error), error)[-1].strip()
        return (f'{pipeline}.{index} ({type(transforms[index]).__name__}) failed on {image}: {message} (check the '
                f'arguments of that transform; --debug shows the traceback)')

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        image = raw_data_info['raw_img_info']
        annotations = raw_data_info['raw_ann_info']
        kept, seen = [], set()
        for ann in annotations:
            if annotation_problem(ann, image, self.with_mask) is not None:
                continue
            key = repeat_key(ann)
            if key not in seen:
                seen.add(key)
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
