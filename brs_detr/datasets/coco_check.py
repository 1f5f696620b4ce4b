"""Check a COCO-format annotation file and the image files it names, before any training starts.

mmdet's :class:`~mmdet.datasets.CocoDataset` reads the file with pycocotools and then, silently: drops boxes with a
width or height under 1 px, a zero area or no overlap with the image; drops annotations of categories the config does
not train; numbers the config's classes in the order the *file* lists them (a config listing them in another order
names every class wrongly in the evaluation); and drops images without annotations (``filter_empty_gt``). A
truncated JSON fails deep in ``json`` with a position only, and a missing image fails when its batch comes, hours into
training. :func:`check_coco_file` reads the file once and reports all of this with the file, the annotation ids and
what is wrong, so that a training run starts only on data that loads.
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from mmengine.logging import print_log

from .annotation_validity import annotation_problem, repeat_key
from .image_headers import check_image_headers

#: Boxes narrower or lower than this are dropped by mmdet's CocoDataset (``w < 1 or h < 1``).
MIN_BOX_SIZE = 1.0
#: Least IoU of a segmentation's polygon extent with the annotation's box (COCO: 1, the box is their extent).
MIN_POLYGON_BOX_IOU = 0.5
#: Policies for invalid boxes.
BOX_POLICIES = ('warn', 'error')
#: End of the problem of a box whose area is not positive.
NON_POSITIVE_AREA = 'is not positive'
#: How many offending items an error or warning lists.
MAX_LISTED = 5


class DataCheckError(ValueError):
    """The data a config names cannot be trained on or evaluated: the message says which file and what is wrong."""


@dataclass
class DataCheckPolicy:
    """What :func:`check_coco_file` tolerates (config key ``data_check``; see docs/reliability.md).

    Attributes:
        invalid_boxes: ``'warn'`` (default): boxes with a width or height under ``MIN_BOX_SIZE``, a non-positive
            area, or reaching more than ``outside_tolerance`` px outside their image are listed in a warning and
            trained as mmdet does (it drops the degenerate ones and the ones entirely outside the image, keeps the
            rest). COCO train2017 has a few such boxes (e.g. two of height 0). ``'error'``: refuse them.
        max_invalid_box_fraction: Refuse the file anyway when more than this fraction of its boxes is invalid: a
            systematic error (``[x1, y1, x2, y2]`` instead of ``[x, y, w, h]``, boxes of resized images), not noise.
        outside_tolerance: Pixels a box may reach beyond its image before it counts as outside (rounding).
        check_image_files: Check that every image file exists and is not empty (one directory listing per folder
            plus one ``stat`` per image).
        check_image_sizes: With ``check_image_files``, read every image's header and refuse a file whose stored
            size differs from the annotation's ``width``/``height`` (and count EXIF orientation tags); the image
            loader checks each decoded image the same way. ``False`` turns both off.
    """

    invalid_boxes: str = 'warn'
    max_invalid_box_fraction: float = 0.01
    outside_tolerance: float = 1.0
    check_image_files: bool = True
    check_image_sizes: bool = True

    def __post_init__(self) -> None:
        if self.invalid_boxes not in BOX_POLICIES:
            raise DataCheckError(f'data_check.invalid_boxes must be one of {BOX_POLICIES}, got {self.invalid_boxes!r}')


@dataclass
class CocoCheckReport:
    """What :func:`check_coco_file` found in an annotation file that passed."""

    ann_file: str
    num_images: int = 0
    num_annotations: int = 0
    #: Images without any annotation of the config's classes (``filter_empty_gt`` leaves them out of training).
    empty_images: int = 0
    #: ``(annotation id, what is wrong)`` for every invalid box.
    invalid_boxes: List[Tuple[object, str]] = field(default_factory=list)
    #: Annotations per category name that the config does not train (mmdet ignores them).
    ignored_categories: Dict[str, int] = field(default_factory=dict)
    #: Objects (annotations that are neither crowd nor ``ignore``) per class of the config, in the config's order.
    objects_per_class: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    #: ``(annotation id, what is wrong)`` for every malformed annotation (also in ``invalid_boxes``): mmdet cannot
    #: read it (:func:`~brs_detr.datasets.annotation_validity.annotation_problem`).
    malformed: List[Tuple[object, str]] = field(default_factory=list)
    #: Annotations of the config's classes that a model learns from: well-formed, not degenerate, not entirely
    #: outside their image, not ``iscrowd``/``ignore``.
    trainable: int = 0
    #: Annotations of the config's classes marked ``iscrowd`` (mmdet ignores them in training) or ``ignore``.
    crowd_or_ignored: int = 0
    #: ``(annotation id, id of the earlier annotation it repeats)`` (also in ``malformed``): same image, category,
    #: box and crowd flag (:func:`~brs_detr.datasets.annotation_validity.repeat_key`).
    repeated: List[Tuple[object, object]] = field(default_factory=list)
    #: Every well-formed box lies within [0, 1] (normalised coordinates, as YOLO writes them).
    normalised_boxes: bool = False
    #: The image files, as normalised absolute paths (empty when the images were not looked at: ``img_dir=None``).
    image_files: frozenset = frozenset()
    #: EXIF orientation value -> number of images carrying it (read from the headers; brs-detr ignores the tag).
    exif_orientations: Dict[int, int] = field(default_factory=dict)


def format_listed(items: Sequence[object], limit: int = MAX_LISTED) -> str:
    """``a, b, c, ... (N more)``: the first ``limit`` items."""
    shown = ', '.join(str(item) for item in items[:limit])
    return shown + (f', ... ({len(items) - limit} more)' if len(items) > limit else '')


def load_annotation_json(ann_file: str) -> dict:
    """Read a COCO annotation file; any problem raises :class:`DataCheckError` naming the file and the position."""
    if not osp.isfile(ann_file):
        raise DataCheckError(f'annotation file not found: {ann_file}')
    try:
        with open(ann_file, 'rb') as file:
            raw = file.read()
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        raise DataCheckError(f'{ann_file} is not UTF-8 text (byte {error.start}): not a COCO JSON file') from error
    except OSError as error:
        raise DataCheckError(f'cannot read annotation file {ann_file}: {error}') from error
    if not text.strip():
        raise DataCheckError(f'annotation file {ann_file} is empty ({len(raw)} bytes)')
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        stripped = text.rstrip()
        ending = ('' if stripped.endswith(('}', ']')) else
                  f'; the file stops without closing its JSON ({len(raw)} bytes): it is probably truncated')
        raise DataCheckError(f'{ann_file} is not valid JSON: {error.msg} (line {error.lineno}, column '
                             f'{error.colno}){ending}') from error
    if not isinstance(content, dict):
        raise DataCheckError(f'{ann_file}: a COCO annotation file is a JSON object with "images", "annotations" and '
                             f'"categories"; this one is a {type(content).__name__}')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(content.get(key), list):
            raise DataCheckError(f'{ann_file}: "{key}" is missing or not a list (keys: {sorted(content)})')
    return content


def ground_truth_by_image(content: dict, classes: Sequence[str]) -> Dict[object, tuple]:
    """Image id -> what an evaluation compares with: ``(file_name, width, height, sorted (class name, bbox,
    iscrowd) of its annotations of ``classes``)``; category ids are read through their names, as CocoMetric does."""
    names = {category.get('id'): category.get('name') for category in content['categories']
             if isinstance(category, dict)}
    boxes: Dict[object, list] = defaultdict(list)
    for ann in content['annotations']:
        if isinstance(ann, dict) and names.get(ann.get('category_id')) in classes:
            boxes[ann.get('image_id')].append((names[ann['category_id']], repr(ann.get('bbox')),
                                               bool(ann.get('iscrowd', False))))
    return {image.get('id'): (image.get('file_name'), image.get('width'), image.get('height'),
                              tuple(sorted(boxes[image.get('id')])))
            for image in content['images'] if isinstance(image, dict)}


def _index_images(ann_file: str, images: List[dict]) -> Dict[object, dict]:
    """Image id -> image entry. Ids and file names must be unique: two entries of one file each train with their
    own annotations only, so the objects annotated under the other entry are learnt as background."""
    by_id: Dict[object, dict] = {}
    by_file: Dict[str, object] = {}
    for position, image in enumerate(images):
        if not isinstance(image, dict) or 'id' not in image:
            raise DataCheckError(f'{ann_file}: images[{position}] has no "id"')
        missing = [key for key in ('file_name', 'width', 'height') if key not in image]
        if missing:
            raise DataCheckError(f'{ann_file}: image id {image["id"]} has no {", ".join(missing)}')
        if not (isinstance(image['width'], (int, float)) and isinstance(image['height'], (int, float))
                and image['width'] > 0 and image['height'] > 0):
            raise DataCheckError(f'{ann_file}: image id {image["id"]} ({image["file_name"]}) has width '
                                 f'{image["width"]!r} and height {image["height"]!r}: not positive numbers')
        if image['id'] in by_id:
            raise DataCheckError(f'{ann_file}: image id {image["id"]} is used twice ({by_id[image["id"]]["file_name"]}'
                                 f' and {image["file_name"]})')
        file_key = osp.normpath(str(image['file_name']))
        if file_key in by_file:
            raise DataCheckError(f'{ann_file}: image ids {by_file[file_key]} and {image["id"]} are the same file '
                                 f'{image["file_name"]}: each would train with its own annotations only, the objects '
                                 f'annotated under the other id as background. Merge them into one image entry.')
        by_file[file_key] = image['id']
        by_id[image['id']] = image
    return by_id


def _check_categories(ann_file: str, categories: List[dict], classes: Sequence[str]) -> Dict[object, str]:
    """The file's category id -> name; the config's classes must all be there, in the file's order."""
    names = {}
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or 'id' not in category or 'name' not in category:
            raise DataCheckError(f'{ann_file}: categories[{position}] needs "id" and "name", got {category!r}')
        if category['id'] in names:
            raise DataCheckError(f'{ann_file}: category id {category["id"]} is used twice ({names[category["id"]]} '
                                 f'and {category["name"]}); pycocotools keeps only the last, so the annotations of '
                                 f'both would train as {category["name"]}')
        names[category['id']] = category['name']
    file_names = [category['name'] for category in categories]
    if not file_names:
        raise DataCheckError(f'{ann_file}: "categories" is empty: the file names no class (the config trains '
                             f'{format_listed(list(classes), 20)})')
    _check_unique_class_names(ann_file, categories, classes)
    absent = [name for name in classes if name not in file_names]
    if absent:
        near = [f'{name!r} is {file_name!r} there' for name in absent for file_name in file_names
                if str(name).strip().casefold() == str(file_name).strip().casefold()]
        hint = f' ({"; ".join(near)}: names must match exactly, case and spaces too)' if near else ''
        raise DataCheckError(f'{ann_file}: the config\'s classes {absent} are not categories of this file (its '
                             f'categories: {format_listed(file_names, 20)}){hint}. Set metainfo=dict(classes=...) in '
                             f'the dataset config to the names the file uses.')
    in_file_order = [name for name in file_names if name in classes]
    if in_file_order != list(classes):
        raise DataCheckError(f'{ann_file}: the config lists its classes in another order than the file '
                             f'({list(classes)} vs {in_file_order}); mmdet numbers the labels in the file\'s order, '
                             f'so every class would be evaluated and drawn under another name. List the classes in '
                             f'the file\'s order.')
    return names


def _check_unique_class_names(ann_file: str, categories: List[dict], classes: Sequence[str]) -> None:
    """A trained class name must be one category: mmdet gives every category id of that name a label of its own, so
    the model would get more labels than it has classes."""
    ids: Dict[str, List[object]] = defaultdict(list)
    for category in categories:
        ids[category['name']].append(category['id'])
    shared = {name: found for name, found in ids.items() if name in classes and len(found) > 1}
    if shared:
        listed = '; '.join(f'{name!r}: ids {", ".join(map(str, found))}' for name, found in shared.items())
        raise DataCheckError(f'{ann_file}: several categories share a name the config trains ({listed}); mmdet would '
                             f'number each id as a class of its own, more labels than the model has classes. Merge '
                             f'them into one category.')


def _type_hint(value: object, ids: Dict[object, object]) -> str:
    """`` (...)`` when ``value`` is a key of ``ids`` written as another type (``"3"`` for ``3``), else ``''``."""
    same_text = [key for key in ids if str(key) == str(value)]
    if not same_text:
        return ''
    kinds = {str: 'a string', int: 'an integer', float: 'a float'}
    return (f' (here {kinds.get(type(value), type(value).__name__)}, the id {same_text[0]!r} '
            f'{kinds.get(type(same_text[0]), type(same_text[0]).__name__)}: write every id the same way)')


def _box_problem(bbox: object, area: object, image: dict, tolerance: float) -> Optional[str]:
    """What is wrong with a well-formed COCO ``[x, y, w, h]`` box (see :func:`annotation_problem`), or ``None``."""
    x, y, w, h = bbox
    if w < MIN_BOX_SIZE or h < MIN_BOX_SIZE:
        return f'size {w}x{h} (width or height under {MIN_BOX_SIZE:g} px)'
    if area <= 0:
        return f'area {area} {NON_POSITIVE_AREA}'
    width, height = image['width'], image['height']
    beyond = max(-x, -y, x + w - width, y + h - height)
    if beyond > tolerance:
        return f'[x, y, w, h] = {bbox} reaches {beyond:g} px outside the {width}x{height} image'
    return None


def _polygon_problem(segmentation: object, bbox: Sequence[float]) -> Optional[str]:
    """Whether the polygons of a well-formed segmentation outline the object of ``bbox``: the box around them must
    overlap it by an IoU of at least :data:`MIN_POLYGON_BOX_IOU` (COCO's boxes are exactly the polygons' extent).
    Polygons in normalised (0-1) coordinates, or of another image, would train masks far from their boxes."""
    if not isinstance(segmentation, list):
        return None  # an RLE: its size was checked against the image's
    xs = [v for polygon in segmentation for v in polygon[0::2]]
    ys = [v for polygon in segmentation for v in polygon[1::2]]
    extent = (min(xs), min(ys), max(xs), max(ys))
    x, y, w, h = bbox
    inter = max(0, min(extent[2], x + w) - max(extent[0], x)) * max(0, min(extent[3], y + h) - max(extent[1], y))
    union = w * h + (extent[2] - extent[0]) * (extent[3] - extent[1]) - inter
    if union > 0 and inter / union >= MIN_POLYGON_BOX_IOU:
        return None
    return (f'segmentation polygons span [x1, y1, x2, y2] = [{", ".join(f"{v:g}" for v in extent)}], far from '
            f'its bbox {list(bbox)} (IoU {inter / union if union > 0 else 0:.2f}; polygons in normalised coordinates?)')


def _mmdet_keeps(bbox: Sequence[float], image: dict) -> bool:
    """Whether mmdet's ``CocoDataset`` keeps a well-formed box (it drops boxes under 1 px and those that do not
    overlap their image)."""
    x, y, w, h = bbox
    inter_w = max(0, min(x + w, image['width']) - max(x, 0))
    inter_h = max(0, min(y + h, image['height']) - max(y, 0))
    return inter_w * inter_h > 0 and w >= MIN_BOX_SIZE and h >= MIN_BOX_SIZE


def check_coco_file(ann_file: str,
                    img_dir: Optional[str],
                    classes: Sequence[str],
                    policy: Optional[DataCheckPolicy] = None,
                    filter_empty_gt: bool = False,
                    training: bool = False,
                    split: str = 'train',
                    with_mask: bool = False,
                    drops_malformed: bool = True,
                    dataset_type: str = 'CocoDataset',
                    format_only: bool = False) -> CocoCheckReport:
    """Check an annotation file (and the images under ``img_dir``) for a dataset that trains ``classes``.

    Args:
        ann_file: The COCO JSON file.
        img_dir: The folder ``file_name`` is relative to (mmdet's ``data_prefix['img']`` joined with
            ``data_root``); ``None`` skips the image files.
        classes: The config's class names (``metainfo['classes']``).
        policy: What to tolerate (default: :class:`DataCheckPolicy`'s defaults).
        filter_empty_gt: Whether the dataset drops images without annotations (mmdet's
            ``filter_cfg.filter_empty_gt=True`` outside ``test_mode``): then a training file where no image keeps an
            annotation is refused, and a val/test file's images without annotations are warned about (their false
            detections are never evaluated).
        training: Whether the file is a training set: a class without any object is then warned about as a class
            the model cannot learn (else as a class whose AP cannot be measured).
        split: ``'train'``: a file without any annotation to learn from is refused; ``'val'``/``'test'``: a file
            without any annotation to evaluate against, unless ``format_only``.
        with_mask: The pipeline loads masks: malformed segmentations count as malformed annotations.
        drops_malformed: The dataset drops malformed annotations
            (:class:`~brs_detr.datasets.checked_datasets.ValidAnnotationsMixin`); otherwise any is refused.
        dataset_type: The dataset's class name (for messages).
        format_only: The split's evaluator only writes predictions (a test set without annotations is fine).

    Returns:
        The report; its warnings were logged.

    Raises:
        DataCheckError: Unreadable or malformed JSON, inconsistent ids, classes absent from the file or in
            another order, invalid boxes (beyond the policy), missing or empty image files, nothing to train on.
    """
    policy = policy or DataCheckPolicy()
    content = load_annotation_json(ann_file)
    images = _index_images(ann_file, content['images'])
    category_names = _check_categories(ann_file, content['categories'], classes)
    report = CocoCheckReport(ann_file=ann_file, num_images=len(images), num_annotations=len(content['annotations']))
    trained = set(classes)
    annotated_images = set()
    seen_ids = set()
    ignored: Counter = Counter()
    objects: Counter = Counter()
    without_crowd_flag: List[object] = []
    first_of: Dict[object, object] = {}
    largest_coordinate = 0.0
    for position, ann in enumerate(content['annotations']):
        if not isinstance(ann, dict) or not all(key in ann for key in ('id', 'image_id', 'category_id', 'bbox')):
            raise DataCheckError(f'{ann_file}: annotations[{position}] needs "id", "image_id", "category_id" and '
                                 f'"bbox", got {ann!r}'[:500])
        ann_id = ann['id']
        if ann_id in seen_ids:
            raise DataCheckError(f'{ann_file}: annotation id {ann_id} is used twice (pycocotools keeps only one)')
        seen_ids.add(ann_id)
        image = images.get(ann['image_id'])
        if image is None:
            raise DataCheckError(f'{ann_file}: annotation id {ann_id} refers to image id {ann["image_id"]!r}, which '
                                 f'is not in "images"{_type_hint(ann["image_id"], images)}')
        name = category_names.get(ann['category_id'])
        if name is None:
            raise DataCheckError(f'{ann_file}: annotation id {ann_id} has category_id {ann["category_id"]!r}, which '
                                 f'is not in "categories" (ids: {format_listed(sorted(category_names, key=str), 20)})'
                                 f'{_type_hint(ann["category_id"], category_names)}')
        if name not in trained:
            ignored[name] += 1
            continue
        if 'iscrowd' not in ann:
            without_crowd_flag.append(ann_id)
        if ann.get('ignore', False):
            report.crowd_or_ignored += 1
            continue
        malformed = annotation_problem(ann, image, with_mask)
        if malformed is not None:
            report.malformed.append((ann_id, malformed))
            report.invalid_boxes.append((ann_id, malformed))
            continue
        first = first_of.setdefault(repeat_key(ann), ann_id)
        if first != ann_id:
            repeated = f'repeats annotation id {first} (same image, category and box)'
            report.repeated.append((ann_id, first))
            report.malformed.append((ann_id, repeated))
            report.invalid_boxes.append((ann_id, repeated))
            continue
        x, y, w, h = ann['bbox']
        largest_coordinate = max(largest_coordinate, abs(x), abs(y), abs(x + w), abs(y + h))
        objects[name] += not ann.get('iscrowd', False)
        problem = _box_problem(ann['bbox'], ann['area'], image, policy.outside_tolerance)
        if problem is None and with_mask:
            problem = _polygon_problem(ann.get('segmentation'), ann['bbox'])
        if problem is not None:
            report.invalid_boxes.append((ann_id, problem))
        annotated_images.add(ann['image_id'])
        if ann.get('iscrowd', False):
            report.crowd_or_ignored += 1
        elif _mmdet_keeps(ann['bbox'], image) and ann['area'] > 0:
            report.trainable += 1
    report.ignored_categories = dict(ignored)
    report.objects_per_class = {name: objects[name] for name in classes}
    report.empty_images = len(images) - len(annotated_images)
    report.normalised_boxes = bool(first_of) and largest_coordinate <= 1.0
    if without_crowd_flag and split != 'train' and not format_only:
        raise DataCheckError(f'{ann_file}: {len(without_crowd_flag)} annotations have no "iscrowd" (ids '
                             f'{format_listed(without_crowd_flag)}); COCO\'s evaluation reads it from every annotation '
                             f'(KeyError: \'iscrowd\' after the whole {split} inference). Add "iscrowd": 0 (1 for '
                             f'a crowd region).')
    _judge_malformed(report, drops_malformed, dataset_type)
    _judge(report, policy, filter_empty_gt, split)
    report.warnings += _class_count_warnings(report, training)
    _judge_nothing_to_learn(report, split, format_only)
    if img_dir is not None:
        report.image_files = frozenset(osp.normpath(osp.abspath(osp.join(img_dir, str(image['file_name']))))
                                       for image in images.values())
    if policy.check_image_files and img_dir is not None:
        check_image_files(ann_file, img_dir, [image['file_name'] for image in images.values()])
        if policy.check_image_sizes:
            report.exif_orientations = check_image_sizes(ann_file, img_dir, list(images.values()))
    for warning in report.warnings:
        print_log(warning, logger='current', level=logging.WARNING)
    return report


def _judge_nothing_to_learn(report: CocoCheckReport, split: str, format_only: bool) -> None:
    """Refuse a file without images, a training file without any annotation to learn from (all ``iscrowd``,
    ``ignore``, malformed or degenerate: mmdet would train on background alone and exit 0), and an evaluation
    file without any annotation to evaluate against (COCO's mAP is then -1)."""
    ann_file = report.ann_file
    if report.num_images == 0:
        raise DataCheckError(f'{ann_file}: "images" is empty: nothing to {"train on" if split == "train" else "test"}')
    if report.trainable or (split != 'train' and format_only):
        return
    untrained = sum(report.ignored_categories.values())
    reasons = [f'{n} {what}' for n, what in ((report.crowd_or_ignored, 'iscrowd or ignore'),
                                               (len(report.malformed), 'malformed'),
                                               (len(report.invalid_boxes) - len(report.malformed),
                                                'degenerate or outside their image'),
                                               (untrained, 'of classes the config does not train')) if n]
    detail = f' (of its {report.num_annotations} annotations: {", ".join(reasons)})' if report.num_annotations \
        else ' ("annotations" is empty)'
    if split == 'train':
        raise DataCheckError(f'{ann_file}: no annotation to train on{detail}; training would see background only')
    raise DataCheckError(f'{ann_file}: no annotation to evaluate against{detail}; the {split} mAP would be -1. For a '
                         f'test set without annotations (predictions only), set {split}_evaluator.format_only=True')


def _judge_malformed(report: CocoCheckReport, drops_malformed: bool, dataset_type: str) -> None:
    """Malformed annotations can only be trained without when the dataset drops them."""
    if report.malformed and not drops_malformed:
        listed = format_listed([f'id {ann_id}: {problem}' for ann_id, problem in report.malformed])
        raise DataCheckError(f'{report.ann_file}: {len(report.malformed)} annotations are malformed ({listed}); the '
                             f'dataset type {dataset_type} would crash on them or train on them as they are (brs-detr '
                             f'drops them only for CocoDataset and CityscapesDataset). Fix them in the file.')


def _systematic_cause(report: CocoCheckReport) -> str:
    """The likely cause of a file with many invalid boxes, as a question for the message."""
    if len(report.repeated) * 2 > len(report.invalid_boxes):
        return 'the file lists its annotations twice (two exports merged, or one exported twice)?'
    if report.normalised_boxes:
        return 'boxes in normalised 0-1 coordinates, as YOLO writes them, instead of pixels?'
    half = len(report.invalid_boxes) / 2
    if sum(problem.endswith(NON_POSITIVE_AREA) for _, problem in report.invalid_boxes) > half:
        return ('areas of 0 or less: an exporter that does not write them? mmdet drops every box whose "area" is not '
                'positive; write area = w * h (or the mask\'s area)')
    if len(report.malformed) - len(report.repeated) > half:
        return 'annotations that mmdet cannot read, as listed: a file of another format?'
    return 'boxes as [x1, y1, x2, y2] instead of COCO\'s [x, y, w, h]? boxes of resized images?'


def _judge(report: CocoCheckReport, policy: DataCheckPolicy, filter_empty_gt: bool, split: str = 'train') -> None:
    """Turn the findings into warnings, or a :class:`DataCheckError` where the policy says so."""
    ann_file = report.ann_file
    trained = report.num_annotations - sum(report.ignored_categories.values())
    if report.ignored_categories:
        counts = ', '.join(f'{name}: {n}' for name, n in sorted(report.ignored_categories.items()))
        report.warnings.append(f'{ann_file}: {sum(report.ignored_categories.values())} annotations of categories '
                               f'the config does not train are ignored ({counts})')
    if report.num_annotations and trained == 0:
        raise DataCheckError(f'{ann_file}: none of its {report.num_annotations} annotations is of a class the config '
                             f'trains')
    if report.invalid_boxes:
        listed = format_listed([f'id {ann_id}: {problem}' for ann_id, problem in report.invalid_boxes])
        fraction = len(report.invalid_boxes) / max(trained, 1)
        summary = f'{ann_file}: {len(report.invalid_boxes)} of {trained} boxes are invalid ({listed})'
        if policy.invalid_boxes == 'error':
            raise DataCheckError(f'{summary}. Fix them, or set data_check.invalid_boxes=warn to train without the '
                                 'degenerate ones, as mmdet does.')
        if fraction > policy.max_invalid_box_fraction:
            raise DataCheckError(f'{summary}: {fraction:.1%} is more than data_check.max_invalid_box_fraction='
                                 f'{policy.max_invalid_box_fraction:g}. This looks like a systematic error '
                                 f'({_systematic_cause(report)}).')
        dropped = f'brs-detr drops the {len(report.malformed)} malformed or repeated ones, ' if report.malformed \
            else ''
        evaluated = (f'; the {split} evaluation reads the file itself and counts each of the {len(report.repeated)} '
                     f'repeats as one more object that no detection can match (a lower recall and mAP)'
                     if report.repeated and split != 'train' else '')
        report.warnings.append(f'{summary}; {dropped}mmdet drops the degenerate ones and those entirely outside '
                               f'their image (data_check.invalid_boxes=error refuses them){evaluated}')
    if report.empty_images:
        if filter_empty_gt and report.empty_images == report.num_images and split == 'train':
            raise DataCheckError(f'{ann_file}: none of its {report.num_images} images has an annotation of the '
                                 f'config\'s classes: nothing to train on')
        if filter_empty_gt and split != 'train':
            effect = (f'the {split} dataset leaves them out (filter_cfg.filter_empty_gt=True and test_mode=False), so '
                      f'the {split} mAP never counts the false detections on them; set '
                      f'{split}_dataloader.dataset.test_mode=True to evaluate every image')
        else:
            effect = 'filter_empty_gt=True leaves them out of training' if filter_empty_gt else 'they are kept'
        report.warnings.append(f'{ann_file}: {report.empty_images} of {report.num_images} images have no annotation '
                               f'of the config\'s classes; {effect}')


def _class_count_warnings(report: CocoCheckReport, training: bool) -> List[str]:
    """A warning for the classes of the config without a single object in the file."""
    absent = [name for name, count in report.objects_per_class.items() if count == 0]
    if not absent:
        return []
    effect = ('the model gets no positive example of them and will not learn to detect them' if training else
              'their AP cannot be measured (CocoMetric reports nan)')
    return [f'{report.ann_file}: {len(absent)} of the {len(report.objects_per_class)} classes have no object in this '
            f'file ({format_listed(absent, 20)}): {effect}']


def format_class_counts(objects_per_class: Dict[str, int], limit: int = 20) -> str:
    """``'name 12, other 3, ...'`` (the first ``limit`` classes)."""
    items = [f'{name} {count}' for name, count in objects_per_class.items()]
    return ', '.join(items[:limit]) + (f', ... ({len(items) - limit} more classes)' if len(items) > limit else '')


def check_image_files(ann_file: str, img_dir: str, file_names: Iterable[str]) -> None:
    """Every image must exist under ``img_dir``, be readable and non-empty.

    Costs one directory listing per folder plus one ``stat`` and one ``access`` call per image (COCO train2017:
    118K images in one folder).

    Raises:
        DataCheckError: Naming the missing, unreadable or empty files or the folders (the first few), their count
            and ``ann_file``.
    """
    by_folder: Dict[str, List[str]] = defaultdict(list)
    for file_name in file_names:
        path = osp.join(img_dir, file_name)
        by_folder[osp.dirname(path)].append(osp.basename(path))
    missing: List[str] = []
    unreadable: List[str] = []
    empty: List[str] = []
    folders: List[str] = []
    total = 0
    for folder, names in by_folder.items():
        total += len(names)
        try:
            entries = {entry.name: entry for entry in os.scandir(folder)}
        except OSError:
            missing.extend(osp.join(folder, name) for name in names)
            continue
        for name in names:
            path = osp.join(folder, name)
            entry = entries.get(name)
            try:
                size = entry.stat().st_size if entry is not None else None
            except OSError:  # a dangling symbolic link
                size = None
            if size is None:
                missing.append(path)
            elif entry.is_dir():
                folders.append(path)
            elif not os.access(path, os.R_OK):
                unreadable.append(path)
            elif size == 0:
                empty.append(path)
    if missing:
        raise DataCheckError(f'{len(missing)} of the {total} image files that {ann_file} references are missing: '
                             f'{format_listed(missing)}')
    if folders:
        raise DataCheckError(f'{len(folders)} of the {total} image files that {ann_file} references are folders, not '
                             f'files: {format_listed(folders)}')
    if unreadable:
        raise DataCheckError(f'{len(unreadable)} of the {total} image files that {ann_file} references cannot be '
                             f'read (permissions): {format_listed(unreadable)}')
    if empty:
        raise DataCheckError(f'{len(empty)} of the {total} image files that {ann_file} references are empty (0 '
                             f'bytes): {format_listed(empty)}')


def check_image_sizes(ann_file: str, img_dir: str, images: List[dict]) -> Dict[int, int]:
    """Every image's stored size (from its header) must be the annotation's ``width`` x ``height``; log once how
    many images carry an EXIF orientation tag, which brs-detr ignores (see :mod:`brs_detr.datasets.image_headers`).

    Returns:
        EXIF orientation value -> number of images carrying it.

    Raises:
        DataCheckError: Listing the images whose size differs (with a hint: EXIF orientation, resized), whose
            header is not an image's, or which have more pixels than OpenCV decodes.
    """
    mismatches, orientations, unreadable, too_large = check_image_headers(img_dir, images)
    if unreadable:
        raise DataCheckError(f'{len(unreadable)} of the {len(images)} image files that {ann_file} references are not '
                             f'images the loader can decode: {format_listed(unreadable)}')
    if too_large:
        raise DataCheckError(f'{ann_file}: {len(too_large)} of its {len(images)} images are too large for the image '
                             f'loader: {format_listed(too_large)}')
    if mismatches:
        raise DataCheckError(f'{ann_file}: {len(mismatches)} of its {len(images)} images differ in size from their '
                             f'annotation, so their boxes would not fit the pixels trained on: '
                             f'{format_listed(mismatches)}. '
                             f'(data_check.check_image_sizes=False trains anyway.)')
    if orientations:
        counts = ', '.join(f'{value}: {n}' for value, n in sorted(orientations.items()))
        print_log(f'{ann_file}: {sum(orientations.values())} of its {len(images)} images carry an EXIF orientation tag '
                  f'(value: images: {counts}); brs-detr reads their stored pixels and ignores the tag, as mmdet and '
                  f'COCO do, so their boxes must be annotated on the stored pixels (the stored sizes agree with the '
                  f'annotation)', logger='current')
    return dict(orientations)
