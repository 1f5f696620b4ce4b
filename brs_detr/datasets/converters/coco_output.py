"""What the dataset converters share: image sizes as the loader sees them, box checks, the COCO file and its summary.

Every converter (:mod:`.voc`, :mod:`.yolo`) reads its format into :class:`ImageEntry` objects, with boxes as pixel
edges ``x1 y1 x2 y2`` in the decoded image (what mmdet's loader gives the model), checked by :func:`checked_box`.
:func:`write_coco_file` then writes the COCO JSON atomically and runs the data check of ``tools/train.py`` on it
(:func:`~brs_detr.datasets.coco_check.check_coco_file`: ids, categories, boxes, image files), whose report gives the
summary (images, objects per class).
"""
from __future__ import annotations

import json
import os
import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from ..coco_check import CocoCheckReport, DataCheckError, DataCheckPolicy, check_coco_file, format_class_counts

#: EXIF orientations that turn the image by 90 degrees (the decoded image has width and height swapped).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
#: The EXIF tag of the orientation.
EXIF_ORIENTATION_TAG = 0x0112
#: Pixels a box may reach beyond its image before it is refused (then it is clipped to the image): the data check's
#: default tolerance.
OUTSIDE_TOLERANCE = DataCheckPolicy.outside_tolerance
#: Smallest width and height of a box (mmdet's CocoDataset drops smaller ones).
MIN_BOX_SIZE = 1.0
#: Digits boxes are rounded to in the JSON (a hundredth of a pixel).
BOX_DECIMALS = 2
#: Exit status of a converter tool stopped by bad input (argparse's status for bad arguments).
USAGE_ERROR_STATUS = 2


class ConversionError(DataCheckError):
    """The input data set cannot be converted: the message names the file and what is wrong with it."""


@dataclass
class Box:
    """One object: its class index in the class list, its pixel edges, whether it is ignored (COCO ``iscrowd``)."""
    label: int
    x1: float
    y1: float
    x2: float
    y2: float
    iscrowd: bool = False


@dataclass
class ImageEntry:
    """One image of the output: ``file_name`` relative to the image root, its decoded size, its objects."""
    file_name: str
    width: int
    height: int
    boxes: List[Box] = field(default_factory=list)


def decoded_image_size(path: str) -> Tuple[int, int]:
    """``(width, height)`` of an image as mmdet's loader decodes it: OpenCV turns it by its EXIF orientation.

    Only the header is read (PIL opens images lazily).

    Raises:
        ConversionError: The file is missing or not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    if not osp.isfile(path):
        raise ConversionError(f'image file not found: {path}')
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ConversionError(f'cannot read the size of image {path}: {error}') from error
    if width <= 0 or height <= 0:
        raise ConversionError(f'image {path} has size {width}x{height}')
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def checked_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int, where: str) -> Tuple[float, ...]:
    """The box clipped to its image, if it reaches at most :data:`OUTSIDE_TOLERANCE` px outside.

    Args:
        x1, y1, x2, y2: Pixel edges (``x2 - x1`` is the width).
        width, height: The decoded image size.
        where: What the box is, for messages (file, line or object).

    Raises:
        ConversionError: The box is not finite, reaches further outside, or is under :data:`MIN_BOX_SIZE` px.
    """
    values = (x1, y1, x2, y2)
    if not all(v == v and abs(v) != float('inf') for v in values):
        raise ConversionError(f'{where}: box {list(values)} is not finite')
    beyond = max(-x1, -y1, x2 - width, y2 - height)
    if beyond > OUTSIDE_TOLERANCE:
        raise ConversionError(f'{where}: box x1 y1 x2 y2 = {_rounded(values)} reaches {beyond:g} px outside the '
                              f'{width}x{height} image')
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if x2 - x1 < MIN_BOX_SIZE or y2 - y1 < MIN_BOX_SIZE:
        raise ConversionError(f'{where}: box x1 y1 x2 y2 = {_rounded(values)} is {x2 - x1:g}x{y2 - y1:g} px (width '
                              f'and height must be at least {MIN_BOX_SIZE:g} px; are x and y swapped?)')
    return x1, y1, x2, y2


def _rounded(values: Sequence[float]) -> List[float]:
    return [round(float(v), BOX_DECIMALS) for v in values]


def coco_dict(images: Sequence[ImageEntry], classes: Sequence[str], description: str) -> dict:
    """The COCO detection dict: image ids from 1 in the given order, category ids 1..N in the class list's order."""
    coco_images, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(dict(id=image_id, file_name=image.file_name, width=image.width, height=image.height))
        for box in image.boxes:
            x, y, w, h = _rounded((box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1))
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=box.label + 1,
                                    bbox=[x, y, w, h], area=round(w * h, BOX_DECIMALS), iscrowd=int(box.iscrowd),
                                    segmentation=[]))
    categories = [dict(id=index + 1, name=name, supercategory='none') for index, name in enumerate(classes)]
    return dict(info=dict(description=description), licenses=[], images=coco_images, annotations=annotations,
                categories=categories)


def write_coco_file(images: Sequence[ImageEntry], classes: Sequence[str], out_file: str, img_root: str,
                    description: str) -> CocoCheckReport:
    """Write the COCO JSON atomically, then check it as ``tools/train.py`` will (boxes, ids, image files).

    Args:
        images: The converted images (their ``file_name`` relative to ``img_root``).
        classes: The class names; category ``i + 1`` is ``classes[i]``.
        out_file: Destination; written to a temporary file next to it and renamed (never half-written).
        img_root: The folder the file names are relative to (``data_root`` + ``data_prefix['img']`` in a config).
        description: ``info.description`` of the file.

    Returns:
        The data check's report (its ``objects_per_class`` is the summary).

    Raises:
        ConversionError: No image to write; or the written file fails the data check (it is then removed).
    """
    from brs_detr.fileio.atomic_io import atomic_write_text

    if not images:
        raise ConversionError(f'no image to write into {out_file}')
    atomic_write_text(json.dumps(coco_dict(images, classes, description)), out_file)
    try:
        return check_coco_file(out_file, img_root, classes, DataCheckPolicy(invalid_boxes='error'))
    except DataCheckError as error:
        os.remove(out_file)
        raise ConversionError(f'the converted file fails the data check and was removed: {error}') from error


def summary(out_file: str, report: CocoCheckReport, notes: Optional[Sequence[str]] = None) -> str:
    """One line per output file: images, objects, objects per class, and notes (ignored objects ...)."""
    objects = sum(report.objects_per_class.values())
    line = (f'{out_file}: {report.num_images} images, {objects} objects '
            f'({format_class_counts(report.objects_per_class, limit=50)})')
    return line + ''.join(f'; {note}' for note in notes or [])


def run_conversion(tool: str, convert: Callable[[], object]) -> int:
    """A converter tool's exit status: 0, or 2 after ``<tool>: error: <message>`` for a :class:`ConversionError`."""
    try:
        convert()
    except ConversionError as error:
        print(f'{tool}: error: {error}', file=sys.stderr)
        return USAGE_ERROR_STATUS
    return 0


def read_class_names(path: str) -> List[str]:
    """Class names from a text file (one per line, ``classes.txt`` / ``obj.names``) or a YOLO ``data.yaml``
    (``names`` as a list or as ``{index: name}``).

    Raises:
        ConversionError: The file is missing, empty, has duplicates or no ``names``.
    """
    if not osp.isfile(path):
        raise ConversionError(f'class list not found: {path}')
    if path.endswith(('.yaml', '.yml')):
        names = _yaml_names(path)
    else:
        with open(path, encoding='utf-8') as file:
            names = [line.strip() for line in file if line.strip()]
    if not names:
        raise ConversionError(f'{path} lists no class')
    doubles = sorted({name for name in names if names.count(name) > 1})
    if doubles:
        raise ConversionError(f'{path} lists {", ".join(doubles)} more than once')
    return names


def _yaml_names(path: str) -> List[str]:
    import yaml

    try:
        with open(path, encoding='utf-8') as file:
            content = yaml.safe_load(file)
    except yaml.YAMLError as error:
        raise ConversionError(f'{path} is not valid YAML: {error}') from error
    names = content.get('names') if isinstance(content, dict) else None
    if isinstance(names, dict):
        indices = sorted(names)
        if indices != list(range(len(indices))):
            raise ConversionError(f'{path}: "names" must number the classes 0..{len(indices) - 1}, got {indices}')
        names = [names[index] for index in indices]
    if not isinstance(names, list):
        found = sorted(content) if isinstance(content, dict) else content
        raise ConversionError(f'{path} has no "names" list (found: {found})')
    return [str(name) for name in names]
