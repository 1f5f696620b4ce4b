"""Generate a small, deterministic COCO-format detection dataset of coloured shapes.

Every image holds a few large, high-contrast filled shapes (rectangles, ellipses, triangles) on a noisy grey
background. Each class is one (shape, colour) pair, so a tiny detector learns it in a few hundred iterations.
Boxes are the exact tight boxes of the drawn pixels (shapes never touch), areas are the drawn pixel counts, and
each annotation's ``segmentation`` is the exact mask of its drawn pixels (COCO compressed RLE), so the set also
serves instance segmentation (Mask R-CNN).

Layout written under OUT_DIR (the default data root of ``configs/_base_/datasets/toy_coco_detection.py``)::

    OUT_DIR/
        annotations/instances_train.json
        annotations/instances_val.json
        train/000001.png ...
        val/000001.png ...

With ``annotation_format='voc'`` or ``'yolo'`` the same images and objects are written in the layout of those formats
instead (to try ``tools/dataset_converters/``), with no COCO file::

    OUT_DIR/VOC2007/Annotations/000001.xml ...          (voc: 1-based inclusive pixel boxes, as VOC numbers them;
    OUT_DIR/VOC2007/JPEGImages/000001.png ...            the validation images continue the numbering)
    OUT_DIR/VOC2007/ImageSets/Main/{train,val}.txt

    OUT_DIR/images/{train,val}/000001.png ...           (yolo: one "class cx cy w h" line per object, normalised)
    OUT_DIR/labels/{train,val}/000001.txt ...
    OUT_DIR/data.yaml                                    (names: the class list)

The whole dataset is generated in a temporary directory next to OUT_DIR and renamed into place, so OUT_DIR is either
absent or complete. Same arguments give byte-identical files.

Command line: ``python tools/make_toy_coco.py data/toy_coco --num-train 200 --num-val 50``.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

#: Default class names; they must match ``metainfo.classes`` of configs/_base_/datasets/toy_coco_detection.py.
DEFAULT_CLASSES = ('rectangle', 'ellipse', 'triangle')
#: Shape drawn for the i-th class (cycled when there are more classes than shapes).
SHAPE_KINDS = ('rectangle', 'ellipse', 'triangle')
#: Saturated BGR colours, far from the grey background, one per class (cycled).
PALETTE_BGR = ((40, 40, 230), (40, 210, 40), (230, 60, 30), (20, 220, 230), (220, 40, 220), (230, 220, 30),
               (0, 120, 255), (160, 0, 120))

#: Background: mean grey level range and Gaussian noise standard deviation (uint8 units).
BACKGROUND_GREY_RANGE = (90, 160)
BACKGROUND_NOISE_STD = 8.0
#: Object side length as a fraction of the shorter image side.
OBJECT_SIZE_RANGE = (0.2, 0.45)
#: Free pixels kept between two objects so that every box holds exactly one object.
OBJECT_GAP = 3
#: Objects per image (inclusive range) and how many placements are tried per object.
OBJECTS_PER_IMAGE = (1, 3)
PLACEMENT_TRIES = 50
IMAGE_EXTENSIONS = {'png': '.png', 'jpg': '.jpg'}
JPEG_QUALITY = 95
#: Annotation layouts :func:`make_toy_coco` writes.
ANNOTATION_FORMATS = ('coco', 'voc', 'yolo')
#: Year folder of the VOC layout.
VOC_YEAR_DIR = 'VOC2007'


@dataclass
class DrawnObject:
    """One drawn shape.

    Attributes:
        category_id: COCO category id (1-based).
        bbox: Tight box of the drawn pixels, COCO ``[x, y, w, h]`` (integers, pixel-aligned).
        area: Number of drawn pixels.
        segmentation: The drawn pixels as COCO compressed RLE (``size`` [h, w], ``counts`` str).
    """
    category_id: int
    bbox: List[int]
    area: int
    segmentation: Dict


def _draw_shape(mask: np.ndarray, kind: str, x0: int, y0: int, w: int, h: int, rng: np.random.Generator) -> None:
    """Fill one shape into ``mask`` (uint8, (H, W)) inside the rectangle (x0, y0, w, h)."""
    x1, y1 = x0 + w - 1, y0 + h - 1
    if kind == 'rectangle':
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, thickness=-1)
    elif kind == 'ellipse':
        center = (x0 + w // 2, y0 + h // 2)
        axes = (max((w - 1) // 2, 1), max((h - 1) // 2, 1))
        cv2.ellipse(mask, center, axes, 0, 0, 360, 255, thickness=-1)
    elif kind == 'triangle':
        apex_x = int(rng.integers(x0, x1 + 1))
        points = np.array([[apex_x, y0], [x0, y1], [x1, y1]], dtype=np.int32)
        cv2.fillPoly(mask, [points], 255)
    else:
        raise ValueError(f'unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}')


def make_image(height: int, width: int, num_classes: int,
               rng: np.random.Generator) -> Tuple[np.ndarray, List[DrawnObject]]:
    """Draw one image and return it with its objects.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        num_classes: Number of classes; class i uses ``SHAPE_KINDS[i % 3]`` and ``PALETTE_BGR[i % 8]``.
        rng: Random generator (the only source of randomness).

    Returns:
        The BGR image, uint8 of shape (height, width, 3), and the list of drawn objects.
    """
    grey = rng.uniform(*BACKGROUND_GREY_RANGE)
    noise = rng.normal(0.0, BACKGROUND_NOISE_STD, size=(height, width, 3))
    image = np.clip(grey + noise, 0, 255).astype(np.uint8)
    occupied = np.zeros((height, width), dtype=bool)  # drawn pixels dilated by OBJECT_GAP
    short_side = min(height, width)
    min_size = max(int(OBJECT_SIZE_RANGE[0] * short_side), 4)
    max_size = max(int(OBJECT_SIZE_RANGE[1] * short_side), min_size)
    objects: List[DrawnObject] = []
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        label = int(rng.integers(num_classes))
        for _ in range(PLACEMENT_TRIES):
            w = int(rng.integers(min_size, max_size + 1))
            h = int(rng.integers(min_size, max_size + 1))
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            if occupied[y0:y0 + h, x0:x0 + w].any():
                continue
            mask = np.zeros((height, width), dtype=np.uint8)
            _draw_shape(mask, SHAPE_KINDS[label % len(SHAPE_KINDS)], x0, y0, w, h, rng)
            drawn = mask > 0
            ys, xs = np.nonzero(drawn)
            if xs.size == 0:
                continue
            image[drawn] = PALETTE_BGR[label % len(PALETTE_BGR)]
            gy0, gy1 = max(y0 - OBJECT_GAP, 0), min(y0 + h + OBJECT_GAP, height)
            gx0, gx1 = max(x0 - OBJECT_GAP, 0), min(x0 + w + OBJECT_GAP, width)
            occupied[gy0:gy1, gx0:gx1] = True
            bx0, by0 = int(xs.min()), int(ys.min())
            bbox = [bx0, by0, int(xs.max()) - bx0 + 1, int(ys.max()) - by0 + 1]
            objects.append(DrawnObject(category_id=label + 1, bbox=bbox, area=int(xs.size),
                                       segmentation=_encode_rle(drawn)))
            break
    return image, objects


def _encode_rle(mask: np.ndarray) -> Dict:
    """COCO compressed RLE of a bool (H, W) mask, JSON-ready (``counts`` decoded to str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(v) for v in rle['size']], counts=rle['counts'].decode('ascii'))


def _write_image(path: str, image: np.ndarray) -> None:
    """Write ``image`` with cv2, failing loudly (cv2.imwrite only returns False)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.endswith('.jpg') else []
    if not cv2.imwrite(path, image, params):
        raise OSError(f'cv2 could not write image {path}')


def make_split(root: str, split: str, num_images: int, height: int, width: int, classes: Sequence[str],
               rng: np.random.Generator, image_format: str) -> Dict:
    """Write the images of one split under ``root/split`` and return its COCO dict."""
    os.makedirs(osp.join(root, split))
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = make_image(height, width, len(classes), rng)
        file_name = f'{image_id:06d}{IMAGE_EXTENSIONS[image_format]}'
        _write_image(osp.join(root, split, file_name), image)
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        for obj in objects:
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id, category_id=obj.category_id, bbox=obj.bbox,
                     area=obj.area, segmentation=obj.segmentation, iscrowd=0))
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(classes)]
    return dict(info=dict(description=f'brs-detr toy COCO ({split})', version='1.0'), licenses=[], images=images,
                annotations=annotations, categories=categories)


def make_toy_coco(out_dir: str, num_train: int = 64, num_val: int = 16, img_size: Tuple[int, int] = (128, 128),
                  seed: int = 0, classes: Sequence[str] = DEFAULT_CLASSES, image_format: str = 'png',
                  overwrite: bool = False, annotation_format: str = 'coco') -> str:
    """Generate the dataset atomically into ``out_dir``.

    Args:
        out_dir: Destination directory; must not exist unless ``overwrite``.
        num_train: Number of training images (>= 1).
        num_val: Number of validation images (>= 1).
        img_size: Image (height, width), each >= 32.
        seed: Seed of the generator; the same arguments give identical files.
        classes: Class names (1 to ``len(PALETTE_BGR)``, unique).
        image_format: 'png' (lossless, exact colours) or 'jpg'.
        overwrite: Replace an existing ``out_dir``.
        annotation_format: ``'coco'``, or ``'voc'`` / ``'yolo'`` for those layouts (module docstring).

    Returns:
        The absolute path of the written dataset.
    """
    height, width = img_size
    if num_train < 1 or num_val < 1:
        raise ValueError(f'--num-train and --num-val must be >= 1, got {num_train} and {num_val}')
    if height < 32 or width < 32:
        raise ValueError(f'--img-size must be at least 32 32, got {height} {width}')
    if not 1 <= len(classes) <= len(PALETTE_BGR) or len(set(classes)) != len(classes):
        raise ValueError(f'--classes must be 1 to {len(PALETTE_BGR)} unique names, got {list(classes)}')
    if image_format not in IMAGE_EXTENSIONS:
        raise ValueError(f'image format must be one of {sorted(IMAGE_EXTENSIONS)}, got {image_format!r}')
    if annotation_format not in ANNOTATION_FORMATS:
        raise ValueError(f'annotation format must be one of {ANNOTATION_FORMATS}, got {annotation_format!r}')
    out_dir = osp.abspath(out_dir)
    if osp.exists(out_dir) and not overwrite:
        raise FileExistsError(f'{out_dir} already exists; pass --overwrite to replace it')
    parent = osp.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)

    tmp_dir = tempfile.mkdtemp(prefix=f'.{osp.basename(out_dir)}.tmp-', dir=parent)
    try:
        # One independent stream per split: changing --num-val does not change the training images.
        train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        os.makedirs(osp.join(tmp_dir, 'annotations'))
        splits = {}
        for split, num, rng in (('train', num_train, train_rng), ('val', num_val, val_rng)):
            splits[split] = coco = make_split(tmp_dir, split, num, height, width, classes, rng, image_format)
            with open(osp.join(tmp_dir, 'annotations', f'instances_{split}.json'), 'w') as f:
                json.dump(coco, f)
        if annotation_format == 'voc':
            _to_voc_layout(tmp_dir, splits)
        elif annotation_format == 'yolo':
            _to_yolo_layout(tmp_dir, splits, classes)
        if osp.exists(out_dir):  # overwrite: move the old copy aside first so out_dir is never half-written
            old_dir = tempfile.mkdtemp(prefix=f'.{osp.basename(out_dir)}.old-', dir=parent)
            os.replace(out_dir, osp.join(old_dir, 'data'))
            os.replace(tmp_dir, out_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def _voc_xml(image: dict, objects: List[dict], names: Dict[int, str]) -> str:
    """VOC XML of one image (1-based, inclusive pixel boxes)."""
    lines = ['<annotation>', f'  <folder>{VOC_YEAR_DIR}</folder>', f'  <filename>{image["file_name"]}</filename>',
             f'  <size><width>{image["width"]}</width><height>{image["height"]}</height><depth>3</depth></size>']
    for obj in objects:
        x, y, w, h = obj['bbox']
        lines += ['  <object>', f'    <name>{names[obj["category_id"]]}</name>', '    <pose>Unspecified</pose>',
                  '    <truncated>0</truncated>', '    <difficult>0</difficult>',
                  f'    <bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax>'
                  '</bndbox>', '  </object>']
    return '\n'.join(lines + ['</annotation>', ''])


def _objects_by_image(coco: Dict) -> Dict[int, List[dict]]:
    by_image: Dict[int, List[dict]] = {image['id']: [] for image in coco['images']}
    for ann in coco['annotations']:
        by_image[ann['image_id']].append(ann)
    return by_image


def _to_voc_layout(root: str, splits: Dict[str, Dict]) -> None:
    """Rewrite the generated COCO tree under ``root`` as a VOC year folder (ids continue across splits)."""
    year = osp.join(root, VOC_YEAR_DIR)
    for folder in ('Annotations', 'JPEGImages', osp.join('ImageSets', 'Main')):
        os.makedirs(osp.join(year, folder))
    next_id = 1
    for split, coco in splits.items():
        names = {category['id']: category['name'] for category in coco['categories']}
        objects = _objects_by_image(coco)
        ids = []
        for image in coco['images']:
            image_id = f'{next_id:06d}'
            next_id += 1
            extension = osp.splitext(image['file_name'])[1]
            os.replace(osp.join(root, split, image['file_name']), osp.join(year, 'JPEGImages', image_id + extension))
            renamed = dict(image, file_name=image_id + extension)
            with open(osp.join(year, 'Annotations', f'{image_id}.xml'), 'w') as file:
                file.write(_voc_xml(renamed, objects[image['id']], names))
            ids.append(image_id)
        with open(osp.join(year, 'ImageSets', 'Main', f'{split}.txt'), 'w') as file:
            file.write('\n'.join(ids) + '\n')
        os.rmdir(osp.join(root, split))
    shutil.rmtree(osp.join(root, 'annotations'))


def _to_yolo_layout(root: str, splits: Dict[str, Dict], classes: Sequence[str]) -> None:
    """Rewrite the generated COCO tree under ``root`` in Ultralytics' layout (normalised centre boxes)."""
    for split, coco in splits.items():
        image_dir, label_dir = osp.join(root, 'images', split), osp.join(root, 'labels', split)
        os.makedirs(label_dir)
        os.makedirs(osp.dirname(image_dir), exist_ok=True)
        os.replace(osp.join(root, split), image_dir)
        objects = _objects_by_image(coco)
        for image in coco['images']:
            lines = []
            for obj in objects[image['id']]:
                x, y, w, h = obj['bbox']
                lines.append(f'{obj["category_id"] - 1} {(x + w / 2) / image["width"]:.6f} '
                             f'{(y + h / 2) / image["height"]:.6f} {w / image["width"]:.6f} {h / image["height"]:.6f}')
            with open(osp.join(label_dir, osp.splitext(image['file_name'])[0] + '.txt'), 'w') as file:
                file.write(''.join(line + '\n' for line in lines))
    names = ''.join(f'  {index}: {name}\n' for index, name in enumerate(classes))
    with open(osp.join(root, 'data.yaml'), 'w') as file:
        file.write(f'path: .\ntrain: images/train\nval: images/val\nnames:\n{names}')
    shutil.rmtree(osp.join(root, 'annotations'))
