"""Check the datasets a config names before the Runner starts (``tools/train.py``: train and val, ``tools/test.py``:
test), and make image-loading errors name the image and its annotation file."""
from __future__ import annotations

import logging
import os.path as osp
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.logging import print_log

from mmdet.datasets import CocoDataset

from .checked_datasets import CHECKED_DATASETS, ValidAnnotationsMixin
from .coco_check import (CocoCheckReport, DataCheckError, DataCheckPolicy, check_coco_file, format_listed,
                         format_class_counts, ground_truth_by_image, load_annotation_json)
from .num_classes import dataset_class, split_datasets

#: Config key of the :class:`~brs_detr.datasets.coco_check.DataCheckPolicy` fields.
DATA_CHECK_KEY = 'data_check'
#: Image loading transform of the configs -> the one whose errors name the image and its annotation file.
CHECKED_LOADER = {'LoadImageFromFile': 'CheckedLoadImageFromFile'}


def _children(dataset_cfg: dict) -> List[dict]:
    """The datasets a wrapper (Concat/Repeat/ClassBalanced/MultiImageMix...) holds."""
    if isinstance(dataset_cfg.get('datasets'), (list, tuple)):
        return list(dataset_cfg['datasets'])
    if isinstance(dataset_cfg.get('dataset'), dict):
        return [dataset_cfg['dataset']]
    return []


def _walk(dataset_cfg: dict) -> Iterator[dict]:
    """Every dataset config in a (possibly wrapped) dataset config, wrappers first."""
    yield dataset_cfg
    for child in _children(dataset_cfg):
        yield from _walk(child)


def _reads_coco_json(dataset_class) -> bool:
    """Whether the dataset reads its file as mmdet's CocoDataset does (LVIS, for one, does not), possibly without
    the malformed annotations (:class:`~brs_detr.datasets.checked_datasets.ValidAnnotationsMixin`)."""
    if not (isinstance(dataset_class, type) and issubclass(dataset_class, CocoDataset)):
        return False
    mixin = ValidAnnotationsMixin if issubclass(dataset_class, ValidAnnotationsMixin) else None
    return (dataset_class.load_data_list in (CocoDataset.load_data_list, getattr(mixin, 'load_data_list', None))
            and dataset_class.parse_data_info in (CocoDataset.parse_data_info,
                                                  getattr(mixin, 'parse_data_info', None)))


def loads_masks(dataset_cfg: dict) -> bool:
    """Whether the dataset's pipeline loads instance masks (``LoadAnnotations(with_mask=True)``)."""
    return any(isinstance(t, dict) and str(t.get('type', '')).endswith('LoadAnnotations') and t.get('with_mask')
               for t in dataset_cfg.get('pipeline') or [])


def _join(root: Optional[str], path: str) -> str:
    return path if not root or osp.isabs(path) else osp.join(root, path)


def resolved_paths(dataset_cfg: dict) -> Tuple[str, str]:
    """``(ann_file, image folder)`` of a COCO dataset config, joined with ``data_root`` as mmengine does."""
    root = dataset_cfg.get('data_root')
    prefix = (dataset_cfg.get('data_prefix') or {}).get('img', '')
    return _join(root, dataset_cfg.get('ann_file', '')), _join(root, prefix)


def image_folders(cfg: Config, splits: Sequence[str]) -> Dict[str, str]:
    """The image folder of every dataset of these splits that names one: config key -> folder (``data_root``
    joined with ``data_prefix['img']``)."""
    folders = {key: resolved_paths(dataset_cfg)[1] for key, dataset_cfg in split_datasets(cfg, splits)}
    return {key: folder for key, folder in folders.items() if folder}


def check_datasets(cfg: Config, splits: Sequence[str]) -> List[CocoCheckReport]:
    """Check the COCO-format datasets (and evaluator annotation files) of ``<split>_dataloader`` for each split.

    Args:
        cfg: The config, with ``--cfg-options`` applied.
        splits: ``'train'``, ``'val'``, ``'test'``.

    Returns:
        One report per distinct annotation file checked.

    Raises:
        DataCheckError: See :func:`~brs_detr.datasets.coco_check.check_coco_file`.
    """
    options = dict(cfg.get(DATA_CHECK_KEY) or {})
    try:
        policy = DataCheckPolicy(**options)
    except TypeError as error:
        raise DataCheckError(f'{DATA_CHECK_KEY}: {error} (fields: invalid_boxes, max_invalid_box_fraction, '
                             f'outside_tolerance, check_image_files, check_image_sizes)') from error
    done: Dict[tuple, CocoCheckReport] = {}
    reports_of: Dict[str, List[CocoCheckReport]] = {}
    start = time.perf_counter()
    for split in splits:
        split_reports: List[CocoCheckReport] = []
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        for dataset_cfg in _walk(loader['dataset']):
            if _children(dataset_cfg):
                continue
            leaf_class = dataset_class(dataset_cfg)
            if not _reads_coco_json(leaf_class):
                name = getattr(leaf_class, '__name__', dataset_cfg.get('type'))
                print_log(f'data check: {split} dataset {name} is not read like a COCO JSON file; not checked',
                          logger='current')
                continue
            ann_file, img_dir = resolved_paths(dataset_cfg)
            classes = tuple((dataset_cfg.get('metainfo') or {}).get('classes') or
                            leaf_class.METAINFO['classes'])
            filter_empty_gt = _drops_empty_images(dataset_cfg)
            local_images = dataset_cfg.get('backend_args') is None
            with_mask = loads_masks(dataset_cfg)
            key = (ann_file, img_dir, classes, filter_empty_gt, with_mask)
            if key not in done:
                done[key] = check_coco_file(ann_file, img_dir if local_images else None, classes, policy,
                                            filter_empty_gt=filter_empty_gt, training=split == 'train',
                                            split=split, with_mask=with_mask,
                                            drops_malformed=issubclass(leaf_class, ValidAnnotationsMixin),
                                            dataset_type=leaf_class.__name__,
                                            format_only=_format_only(cfg.get(f'{split}_evaluator')))
            split_reports.append(done[key])
        _check_evaluator_files(split, cfg.get(f'{split}_evaluator'), split_reports)
        reports_of[split] = split_reports
    _warn_about_shared_images(reports_of)
    for report in done.values():
        print_log(f'data check: {report.ann_file}: {report.num_images} images, {report.num_annotations} annotations'
                  f', {len(report.warnings)} warnings; objects per class: '
                  f'{format_class_counts(report.objects_per_class)}', logger='current')
    if done:
        print_log(f'data check: {len(done)} annotation files checked in {time.perf_counter() - start:.2f} s '
                  f'(skip it with --skip-data-check)', logger='current')
    return list(done.values())


def _drops_empty_images(dataset_cfg: dict) -> bool:
    """Whether mmdet's ``BaseDetDataset.filter_data`` leaves out the images without annotations of this dataset
    (``filter_cfg.filter_empty_gt`` outside ``test_mode``)."""
    return (not dataset_cfg.get('test_mode', False)
            and bool((dataset_cfg.get('filter_cfg') or {}).get('filter_empty_gt', False)))


def _warn_about_shared_images(reports_of: Dict[str, List[CocoCheckReport]]) -> None:
    """Warn when images of the val or test set are also training images (the same file): the split's mAP then
    partly measures what the model memorised, silently higher than on unseen images."""
    trained = frozenset().union(*(report.image_files for report in reports_of.get('train', [])))
    for split in ('val', 'test'):
        for report in reports_of.get(split, []):
            shared = sorted(report.image_files & trained)
            if not shared:
                continue
            total = len(report.image_files)
            which = 'all' if len(shared) == total else f'{len(shared)} of the {total}'
            report.warnings.append(f'{report.ann_file}: {which} {split} images are also training images '
                                   f'({format_listed(shared, 3)}): the {split} mAP measures partly what the model '
                                   f'memorised, not how it does on unseen images. Put each image in one split.')
            print_log(report.warnings[-1], logger='current', level=logging.WARNING)


def _format_only(evaluator_cfg) -> bool:
    """Whether the split's evaluators only write predictions (``format_only=True``: nothing is evaluated)."""
    evaluators = evaluator_cfg if isinstance(evaluator_cfg, (list, tuple)) else [evaluator_cfg]
    evaluators = [e for e in evaluators if isinstance(e, dict)]
    return bool(evaluators) and all(e.get('format_only', False) for e in evaluators)


def _check_evaluator_files(split: str, evaluator_cfg, reports: List[CocoCheckReport]) -> None:
    """The evaluators' ``ann_file`` (read only after the first epoch) must exist, be valid JSON and, where it is
    another file than the dataset's, hold the same ground truth for the dataset's images: CocoMetric matches the
    predictions to its ground truth by image id, so a file of other images (the training file, another split) gives
    a wrong mAP without any error."""
    evaluators = evaluator_cfg if isinstance(evaluator_cfg, (list, tuple)) else [evaluator_cfg]
    checked = {osp.realpath(report.ann_file) for report in reports}
    for evaluator in evaluators:
        ann_file = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
        if not ann_file or osp.realpath(ann_file) in checked or evaluator.get('backend_args') is not None:
            continue
        evaluated = load_annotation_json(ann_file)
        for report in reports:
            classes = tuple(report.objects_per_class)
            truth = ground_truth_by_image(evaluated, classes)
            differ = [f'image id {image_id} ({expected[0]}): {_difference(truth.get(image_id), expected)}'
                      for image_id, expected in ground_truth_by_image(load_annotation_json(report.ann_file),
                                                                      classes).items()
                      if truth.get(image_id) != expected]
            if differ:
                raise DataCheckError(f'{split}_evaluator.ann_file {ann_file} is not the ground truth of the {split} '
                                     f'dataset ({report.ann_file}): {len(differ)} of its {report.num_images} images '
                                     f'differ ({format_listed(differ, 3)}); the {split} mAP would compare the '
                                     f'predictions with the boxes of other images. Point {split}_evaluator.ann_file '
                                     f'at {report.ann_file}.')
        checked.add(osp.realpath(ann_file))


def _difference(evaluated: Optional[tuple], expected: tuple) -> str:
    """How an image's ground truth in the evaluator's file (``None``: absent) differs from the dataset's (see
    :func:`~brs_detr.datasets.coco_check.ground_truth_by_image`)."""
    if evaluated is None:
        return 'absent from the evaluator\'s file'
    if evaluated[0] != expected[0]:
        return f'{evaluated[0]} there'
    if evaluated[1:3] != expected[1:3]:
        return f'{evaluated[1]}x{evaluated[2]} there, {expected[1]}x{expected[2]} in the dataset'
    return f'other boxes there ({len(evaluated[3])} objects, {len(expected[3])} in the dataset)'


def use_checked_loading(cfg: Config, splits: Sequence[str]) -> None:
    """Load the data of these splits as the tools do: :func:`name_images_in_load_errors`, and the datasets of
    :data:`~brs_detr.datasets.checked_datasets.CHECKED_DATASETS` replaced by their subclasses without malformed
    annotations (told whether their pipeline loads masks, and their config key for messages)."""
    name_images_in_load_errors(cfg, splits)
    for key, dataset_cfg in split_datasets(cfg, splits):
        if dataset_cfg.get('type') in CHECKED_DATASETS:
            dataset_cfg['type'] = CHECKED_DATASETS[dataset_cfg['type']]
            dataset_cfg['with_mask'] = loads_masks(dataset_cfg)
            dataset_cfg['config_key'] = key


def name_images_in_load_errors(cfg: Config, splits: Sequence[str]) -> None:
    """Replace ``LoadImageFromFile`` in the pipelines of these splits by ``CheckedLoadImageFromFile`` (same
    arguments), telling it the annotation file of its dataset and whether to check image sizes
    (``data_check.check_image_sizes``)."""
    check_size = bool((cfg.get(DATA_CHECK_KEY) or {}).get('check_image_sizes', True))
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        for dataset_cfg in _walk(loader['dataset']):
            ann_file = resolved_paths(dataset_cfg)[0] if dataset_cfg.get('ann_file') else None
            for transform in dataset_cfg.get('pipeline') or []:
                if isinstance(transform, dict) and transform.get('type') in CHECKED_LOADER:
                    transform['type'] = CHECKED_LOADER[transform['type']]
                    transform['ann_file'] = ann_file
                    transform['check_size'] = check_size


__all__ = ['DataCheckError', 'DataCheckPolicy', 'check_datasets', 'image_folders', 'name_images_in_load_errors',
           'resolved_paths', 'use_checked_loading']
