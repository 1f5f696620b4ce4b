"""YOLO txt labels to COCO JSON (``tools/dataset_converters/yolo2coco.py``).

A YOLO data set keeps one ``.txt`` file per image, one object per line: ``class cx cy w h`` with the box centre and
size divided by the image's width and height (the decoded image: EXIF orientation applied, as Ultralytics does), and
the class index into a class list: ``names`` of a ``data.yaml`` (Ultralytics; a list or ``{index: name}``) or the
lines of ``classes.txt`` / ``obj.names`` (darknet). Labels are found where Ultralytics looks for them: the image path
with its last ``images`` folder replaced by ``labels`` and the extension by ``.txt``.

Splits:

* ``data.yaml`` with ``train:`` / ``val:`` / ``test:`` image folders (relative to its ``path:``, else to the
  yaml's folder) -> ``<split>.json`` each;
* else ``images/<split>/`` folders -> ``<split>.json`` each;
* else ``images/`` -> ``all.json``.

``file_name`` is relative to the data root (``images/train/000001.jpg``). An image without a label file is a
background image (kept, no objects); a label file without its image, an unknown class index, a line that is not
five numbers (segmentation labels are not converted) or a box reaching outside the image is an error naming the
file and line.
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .coco_output import (Box, ConversionError, ImageEntry, checked_box, decoded_image_size, read_class_names,
                          summary, write_coco_file)

#: Image file extensions of a YOLO data set (Ultralytics' list, minus video).
YOLO_IMAGE_EXTENSIONS = ('.bmp', '.dng', '.jpeg', '.jpg', '.mpo', '.png', '.tif', '.tiff', '.webp', '.pfm')
#: Class-list files looked for in the data root, in this order.
CLASS_LIST_FILES = ('data.yaml', 'dataset.yaml', 'classes.txt', 'obj.names')
#: Splits of ``data.yaml`` and of ``images/<split>/``.
YOLO_SPLITS = ('train', 'val', 'test')
#: Numbers per label line: class, centre x, centre y, width, height.
LABEL_FIELDS = 5


@dataclass
class YoloSplit:
    """One output: its name and the folder of its images."""
    name: str
    image_dir: str


def find_class_list(data_root: str, classes_file: Optional[str] = None) -> str:
    """The class-list file: ``classes_file``, else the first of :data:`CLASS_LIST_FILES` in ``data_root``.

    Raises:
        ConversionError: None is there.
    """
    if classes_file is not None:
        return classes_file
    for name in CLASS_LIST_FILES:
        if osp.isfile(osp.join(data_root, name)):
            return osp.join(data_root, name)
    raise ConversionError(f'{data_root} has no class list ({", ".join(CLASS_LIST_FILES)}): pass --classes FILE')


def _yaml_splits(yaml_path: str) -> List[YoloSplit]:
    import yaml

    with open(yaml_path, encoding='utf-8') as file:
        content = yaml.safe_load(file) or {}
    base = osp.dirname(yaml_path)
    if isinstance(content.get('path'), str):
        base = osp.join(base, content['path'])
    splits = []
    for split in YOLO_SPLITS:
        value = content.get(split)
        if value is None:
            continue
        if not isinstance(value, str) or value.endswith('.txt'):
            raise ConversionError(f'{yaml_path}: {split}: {value!r}; only one image folder per split is supported '
                                  '(not image lists)')
        splits.append(YoloSplit(split, osp.normpath(osp.join(base, value))))
    return splits


def plan_yolo_splits(data_root: str, class_list: str, splits: Optional[Sequence[str]] = None) -> List[YoloSplit]:
    """The splits of a YOLO data set (module docstring); only ``splits`` if given.

    Raises:
        ConversionError: No image folder, a split that is not there.
    """
    if not osp.isdir(data_root):
        raise ConversionError(f'data root not found: {data_root}')
    found: List[YoloSplit] = []
    if class_list.endswith(('.yaml', '.yml')):
        found = _yaml_splits(class_list)
    if not found:
        images = osp.join(data_root, 'images')
        if not osp.isdir(images):
            raise ConversionError(f'{data_root} has no images/ folder (and {class_list} names no split folders)')
        found = [YoloSplit(split, osp.join(images, split)) for split in YOLO_SPLITS
                 if osp.isdir(osp.join(images, split))] or [YoloSplit('all', images)]
    if splits:
        names = [split.name for split in found]
        absent = [split for split in splits if split not in names]
        if absent:
            raise ConversionError(f'{data_root} has no split {", ".join(absent)} (it has: {", ".join(names)})')
        found = [split for split in found if split.name in splits]
    for split in found:
        if not osp.isdir(split.image_dir):
            raise ConversionError(f'the {split.name} image folder {split.image_dir} does not exist')
    return found


def label_dir_of(image_dir: str) -> str:
    """Ultralytics' label folder of an image folder: its last ``images`` component becomes ``labels``."""
    parts = osp.normpath(image_dir).split(os.sep)
    if 'images' not in parts:
        raise ConversionError(f'{image_dir}: the image folder must lie under an "images" folder (its labels are in '
                              'the matching "labels" folder)')
    index = len(parts) - 1 - parts[::-1].index('images')
    parts[index] = 'labels'
    return os.sep.join(parts)


def parse_label_file(path: str, num_classes: int, width: int, height: int) -> List[Box]:
    """The boxes of one label file, in pixels of the decoded image.

    Raises:
        ConversionError: A line that is not ``class cx cy w h``, an unknown class index, a box outside the image.
    """
    boxes = []
    with open(path, encoding='utf-8') as file:
        for line_number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f'{path} line {line_number}'
            if len(fields) != LABEL_FIELDS:
                raise ConversionError(f'{where}: {len(fields)} values, expected {LABEL_FIELDS} (class cx cy w h)'
                                      + ('; segmentation labels are not converted' if len(fields) > LABEL_FIELDS
                                         else ''))
            try:
                label = int(fields[0])
                cx, cy, w, h = (float(value) for value in fields[1:])
            except ValueError:
                raise ConversionError(f'{where}: {line.strip()!r} is not "class cx cy w h" (an integer and four '
                                      'numbers)') from None
            if not 0 <= label < num_classes:
                raise ConversionError(f'{where}: unknown class index {label} (the class list has {num_classes} '
                                      f'classes, 0..{num_classes - 1})')
            x1, y1, x2, y2 = checked_box((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                         (cy + h / 2) * height, width, height, f'{where} (class {label})')
            boxes.append(Box(label, x1, y1, x2, y2))
    return boxes


def _split_entries(split: YoloSplit, data_root: str, num_classes: int) -> Tuple[List[ImageEntry], int]:
    """The images of one split with their boxes; and how many have no label file."""
    label_dir = label_dir_of(split.image_dir)
    images: Dict[str, str] = {}  # stem -> image file name
    for name in sorted(os.listdir(split.image_dir)):
        stem, extension = osp.splitext(name)
        if extension.lower() in YOLO_IMAGE_EXTENSIONS:
            if stem in images:
                raise ConversionError(f'{split.image_dir} has two images named {stem}: {images[stem]} and {name} '
                                      '(their labels would share one file)')
            images[stem] = name
    if not images:
        raise ConversionError(f'{split.image_dir} holds no image ({", ".join(YOLO_IMAGE_EXTENSIONS)})')
    labels = {osp.splitext(name)[0] for name in os.listdir(label_dir) if name.endswith('.txt')} \
        if osp.isdir(label_dir) else set()
    orphans = sorted(labels - set(images))
    if orphans:
        raise ConversionError(f'{len(orphans)} label files of {label_dir} have no image in {split.image_dir}: '
                              f'{", ".join(name + ".txt" for name in orphans[:5])}')
    entries, background = [], 0
    for stem, name in images.items():
        image_path = osp.join(split.image_dir, name)
        width, height = decoded_image_size(image_path)
        entry = ImageEntry(osp.relpath(image_path, data_root), width, height)
        if stem in labels:
            entry.boxes = parse_label_file(osp.join(label_dir, f'{stem}.txt'), num_classes, width, height)
        else:
            background += 1
        entries.append(entry)
    return entries, background


def convert_yolo(data_root: str, out_dir: str, classes_file: Optional[str] = None,
                 splits: Optional[Sequence[str]] = None, log=print) -> Dict[str, str]:
    """Convert a YOLO data set into COCO files in ``out_dir`` (see the module docstring).

    Args:
        data_root: The data set's folder (``images/``, ``labels/``, ``data.yaml`` or ``classes.txt``).
        out_dir: Folder of the output files.
        classes_file: The class list (default: :func:`find_class_list`).
        splits: The splits to convert (default: all).
        log: Receives the summary lines.

    Returns:
        Split -> written file.

    Raises:
        ConversionError: The first problem found, naming its file and line.
    """
    class_list = find_class_list(data_root, classes_file)
    class_names = read_class_names(class_list)
    log(f'classes (from {class_list}): {", ".join(class_names)}')
    written = {}
    for split in plan_yolo_splits(data_root, class_list, splits):
        entries, background = _split_entries(split, data_root, len(class_names))
        out_file = osp.join(out_dir, f'{split.name}.json')
        report = write_coco_file(entries, class_names, out_file, data_root, f'converted from YOLO {data_root}')
        notes = [f'{background} images without a label file (background images)'] if background else []
        log(summary(out_file, report, notes + [f'file names relative to {data_root}']))
        written[split.name] = out_file
    return written
