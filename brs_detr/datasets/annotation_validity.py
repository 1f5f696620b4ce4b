"""Which COCO annotations mmdet cannot train on: malformed boxes, areas and (where masks are used) segmentations.

mmdet's ``CocoDataset.parse_data_info`` unpacks every ``bbox`` as four numbers and compares its ``area`` with 0:
a box of three numbers, strings or ``null`` crashes the dataset, a missing ``area`` raises ``KeyError``, and a box of
infinite width is kept and trained on (``[x, y, inf, y + h]``), and an ``iscrowd`` of ``"0"`` is true: the object
is ignored. With masks, ``LoadAnnotations`` crashes on a missing
or empty segmentation (``KeyError: 'mask'``) and on an RLE of another size, rasterises garbage from a corrupt RLE
string, and exhausts the memory on a polygon holding ``null`` or NaN.

An annotation that repeats an earlier one of its image (same category, box and crowd flag: a file merged from two
exports, or exported twice) would train the object twice; for one-to-one matching (DETR's Hungarian assigner) the
model is taught to predict it twice, and an evaluation counts the repeat as one more object no detection can match.

These checks are the single definition of "malformed" for both sides: the data check reports the annotations they
reject (:mod:`brs_detr.datasets.coco_check`) and :class:`~brs_detr.datasets.checked_datasets.ValidAnnotationsMixin`
drops exactly those before mmdet sees them. Degenerate but well-formed boxes (under 1 px, zero area, entirely outside
the image) are left to mmdet, which drops them itself.
"""
from __future__ import annotations

import math
from typing import Any, Hashable, List, Optional

#: First and last character of COCO's compressed RLE strings (6 bits per character, offset 48).
RLE_FIRST_CHAR, RLE_LAST_CHAR = 48, 48 + 63
#: Fewest coordinates of a polygon mmdet rasterises (three points).
MIN_POLYGON_COORDINATES = 6


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def box_problem(bbox: Any) -> Optional[str]:
    """Why ``bbox`` is not a COCO ``[x, y, w, h]`` of four finite numbers (``None``: it is)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f'bbox {bbox!r} is not 4 finite numbers'
    return None


def area_problem(area: Any) -> Optional[str]:
    """Why ``area`` is not a finite number (``None``: it is; mmdet reads it, ``KeyError`` when missing)."""
    return None if _is_number(area) else ('no "area"' if area is None else f'area {area!r} is not a finite number')


def rle_string_lengths(counts: str) -> Optional[List[int]]:
    """The run lengths of a compressed COCO RLE string (``None``: not a valid one).

    The format of pycocotools' ``rleToString``: each number is written in 5-bit groups (low first) as characters
    48 + group, bit 5 marking that another group follows, bit 4 of the last group the sign; from the third number on,
    the value is a difference to the number two places before.
    """
    lengths: List[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            code = ord(counts[position]) - RLE_FIRST_CHAR
            if not 0 <= code <= RLE_LAST_CHAR - RLE_FIRST_CHAR:
                return None
            value |= (code & 0x1f) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(lengths) > 2:
            value += lengths[-2]
        lengths.append(value)
    return lengths


def segmentation_problem(segmentation: Any, height: Any, width: Any) -> Optional[str]:
    """Why ``segmentation`` cannot be rasterised for an image of ``height`` x ``width`` (``None``: it can).

    Accepted: a list of polygons (lists of an even number >= 6 of finite numbers), or an RLE dict whose ``size`` is
    ``[height, width]`` and whose ``counts`` (a list of non-negative integers, or a compressed string) add up to
    ``height * width`` pixels.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            return 'segmentation is an empty list'
        for polygon in segmentation:
            if (not isinstance(polygon, list) or len(polygon) < MIN_POLYGON_COORDINATES or len(polygon) % 2
                    or not all(_is_number(v) for v in polygon)):
                shown = repr(polygon)
                return (f'segmentation polygon {shown[:60]}{"..." if len(shown) > 60 else ""} is not a list of an even '
                        f'number (>= {MIN_POLYGON_COORDINATES}) of finite numbers')
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get('size'), segmentation.get('counts')
        if size != [height, width]:
            return f'segmentation RLE has size {size!r}, the image is [{height}, {width}] (height, width)'
        if isinstance(counts, str):
            lengths = rle_string_lengths(counts)
        elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            lengths = counts
        else:
            return 'segmentation RLE counts are neither a string nor a list of integers'
        if lengths is None or any(length < 0 for length in lengths) or sum(lengths) != height * width:
            return f'segmentation RLE counts do not describe {height} x {width} pixels (corrupt?)'
        return None
    return 'no segmentation' if segmentation is None else f'segmentation {type(segmentation).__name__} is neither ' \
                                                           'polygons nor an RLE dict'


def crowd_problem(ann: dict) -> Optional[str]:
    """Why the ``iscrowd`` of ``ann`` is not 0 or 1 (``None``: it is, or it is absent). mmdet tests it for truth,
    so a string ``"0"`` marks the object as crowd (never trained on), and pycocotools' evaluation reads it as
    ``int(iscrowd)``: ``null`` crashes there."""
    if 'iscrowd' not in ann or (ann['iscrowd'] in (0, 1) and not isinstance(ann['iscrowd'], str)):
        return None
    return f'iscrowd {ann["iscrowd"]!r} is not 0 or 1'


def annotation_problem(ann: dict, image: dict, with_mask: bool) -> Optional[str]:
    """Why mmdet cannot train on the COCO annotation ``ann`` of ``image`` (``None``: it can), see the module
    docstring. ``with_mask``: the dataset's pipeline loads masks."""
    problem = box_problem(ann.get('bbox')) or area_problem(ann.get('area')) or crowd_problem(ann)
    if problem is None and with_mask:
        problem = segmentation_problem(ann.get('segmentation'), image.get('height'), image.get('width'))
    return problem


def repeat_key(ann: dict) -> Hashable:
    """What two annotations of one image share when one repeats the other: image, category, box, crowd and ignore
    flags.
    Only for annotations :func:`annotation_problem` accepts (``bbox`` is four numbers)."""
    return (ann.get('image_id'), ann.get('category_id'), tuple(ann['bbox']), bool(ann.get('iscrowd', False)),
            bool(ann.get('ignore', False)))
