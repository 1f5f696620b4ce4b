"""Pixel checks of images drawn by mmdet's DetLocalVisualizer (used by the demo and browse_dataset tests).

What the visualizer does, measured on mmdet 3.3 / mmengine 0.10.7 (and relied on here):

* a box edge at coordinate ``c`` is a line 3 px wide: pixels ``round(c) - 1 .. round(c) + 1`` are blended fully,
  ``D = (1 - ALPHA) * I + ALPHA * colour`` with ``ALPHA = 0.8`` and the class colour of the palette (RGB); when
  masks are drawn too, the visualizer redraws the image under the box artists and the edges are blended twice
  (``ALPHA = 0.96``);
* the label (``"name: score"`` on a black box) starts 3 px inside the top-left corner and spans about
  ``0.68 * font * len(text)`` x ``1.8 * font`` px, ``font = int(13 * scale)`` with mmdet's adaptive scale;
* a mask is blended with a jittered class colour (the same for every pixel of the mask, at most
  ``MASK_JITTER`` per channel away from the palette colour) and outlined in white;
* every other pixel keeps its input value exactly.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

ALPHA = 0.8
#: Range of the effective opacity of a box edge (ALPHA, or ALPHA blended twice = 0.96), with some slack.
EDGE_ALPHA_RANGE = (0.7, 1.05)
#: Pixels on each side of an edge's centre line that the line may touch (3 px line + anti-aliasing).
EDGE_BAND = 3
#: mmdet's label font size is ``int(BASE_FONT * scale)`` with ``scale`` in [0.5, 1] growing with the box area; a
#: generous bound of the label's size per font pixel (measured: 0.68 x font per character, 1.8 x font high).
BASE_FONT = 13
LABEL_CHAR_WIDTH_PER_FONT = 0.8
LABEL_HEIGHT_PER_FONT = 2.0
LABEL_MARGIN = 8
#: Largest per-channel offset of mmdet's ``jitter_color`` (0.5 * 0.5 * 255).
MASK_JITTER = 64
#: Tolerances (uint8 units): an undrawn pixel is unchanged up to rounding; a blended one matches up to
#: anti-aliasing; "informative" pixels are those where drawn and undrawn differ clearly.
UNCHANGED_TOL = 2
BLEND_TOL = 12
INFORMATIVE_GAP = 30
#: Mask blending changes every pixel by at least 0.8 x the smallest jitter (about 7.8 per channel); tolerance below.
MASK_MIN_CHANGE = 4


def read_rgb(path) -> np.ndarray:
    """An image file as an int array (H, W, 3) in RGB order."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f'cannot read {path}'
    return image[..., ::-1].astype(np.int64)


def blend(image: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    return (1 - ALPHA) * image + ALPHA * np.asarray(colour, dtype=np.float64)


def matches_blend(drawn: np.ndarray, original: np.ndarray, colour: Sequence[int]) -> bool:
    """Whether the pixel ``drawn`` is ``original`` blended with ``colour`` at an opacity in EDGE_ALPHA_RANGE."""
    direction = np.asarray(colour, dtype=np.float64) - original
    opacity = float(np.dot(drawn - original, direction) / max(np.dot(direction, direction), 1e-9))
    residual = np.abs(drawn - (original + opacity * direction)).max()
    return EDGE_ALPHA_RANGE[0] <= opacity <= EDGE_ALPHA_RANGE[1] and residual <= BLEND_TOL


def edge_points(box: Sequence[float], shape: Tuple[int, int], step: int = 2) -> Iterator[Tuple[int, int]]:
    """(row, col) pixels on the centre lines of a box's four edges, corners left out, clipped to the image."""
    height, width = shape
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = np.clip([x1, x2], 0, width - 1)
    y1, y2 = np.clip([y1, y2], 0, height - 1)
    for col in range(x1 + EDGE_BAND, x2 - EDGE_BAND + 1, step):
        yield y1, col
        yield y2, col
    for row in range(y1 + EDGE_BAND, y2 - EDGE_BAND + 1, step):
        yield row, x1
        yield row, x2


def edge_band_zone(box: Sequence[float], shape: Tuple[int, int]) -> np.ndarray:
    """Boolean (H, W): the pixels a box's edges may touch."""
    zone = np.zeros(shape, bool)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    band = EDGE_BAND
    zone[max(y1 - band, 0):y1 + band + 1, max(x1 - band, 0):x2 + band + 1] = True
    zone[max(y2 - band, 0):y2 + band + 1, max(x1 - band, 0):x2 + band + 1] = True
    zone[max(y1 - band, 0):y2 + band + 1, max(x1 - band, 0):x1 + band + 1] = True
    zone[max(y1 - band, 0):y2 + band + 1, max(x2 - band, 0):x2 + band + 1] = True
    return zone


def label_font_size(box: Sequence[float]) -> int:
    """The font size mmdet's DetLocalVisualizer uses for the label of ``box``."""
    from mmdet.visualization.palette import _get_adaptive_scales
    area = (box[2] - box[0]) * (box[3] - box[1])
    return int(BASE_FONT * float(_get_adaptive_scales(np.array([area]))[0]))


def label_zone(box: Sequence[float], text: str, shape: Tuple[int, int]) -> np.ndarray:
    """Boolean (H, W): where the label of a box may be drawn (from its top-left corner, right and down)."""
    zone = np.zeros(shape, bool)
    font = label_font_size(box)
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    width = int(LABEL_CHAR_WIDTH_PER_FONT * font * len(text)) + LABEL_MARGIN
    height = int(LABEL_HEIGHT_PER_FONT * font) + LABEL_MARGIN
    zone[max(y1, 0):y1 + height, max(x1, 0):x1 + width] = True
    return zone


def dilated(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def eroded(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def drawn_zone(shape: Tuple[int, int], boxes: Sequence[Sequence[float]], texts: Sequence[str],
               masks: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Boolean (H, W): every pixel the drawing of these instances may change."""
    zone = np.zeros(shape, bool)
    for box, text in zip(boxes, texts):
        zone |= edge_band_zone(box, shape) | label_zone(box, text, shape)
    for mask in masks or []:
        zone |= dilated(mask, EDGE_BAND)
    return zone


def box_edge_evidence(drawn: np.ndarray, original: np.ndarray, box: Sequence[float], colour: Sequence[int],
                      excluded: np.ndarray) -> Tuple[int, int]:
    """How many informative edge pixels of ``box`` there are, and how many of them show the box's colour.

    Informative: outside ``excluded`` (other instances, labels) and where the blended colour differs clearly from
    the input (on an object of the box's own colour a drawn edge is invisible).
    """
    informative = matches = 0
    for row, col in edge_points(box, original.shape[:2]):
        if excluded[row, col]:
            continue
        expected = blend(original[row, col], colour)
        if np.abs(expected - original[row, col]).max() < INFORMATIVE_GAP:
            continue
        informative += 1
        matches += int(matches_blend(drawn[row, col], original[row, col], colour))
    return informative, matches


def label_text(class_name: str, score: Optional[float]) -> str:
    """The label mmdet draws: ``name`` or ``name: 12.3`` (score in percent, one decimal)."""
    return class_name if score is None else f'{class_name}: {round(score * 100, 1)}'


def check_drawing(drawn: np.ndarray, original: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[int],
                  palette: Sequence[Sequence[int]], classes: Sequence[str], scores: Optional[Sequence[float]] = None,
                  masks: Optional[Sequence[np.ndarray]] = None,
                  hidden_boxes: Sequence[Sequence[float]] = ()) -> dict:
    """Assert that exactly these instances were drawn on ``original``; return counts of what was verified.

    * each box's edges have the box's class colour (at least 3 informative pixels per box, 90 % matching);
    * each mask's interior is tinted: every pixel changed, by one colour close to the class colour;
    * every pixel outside the instances' zones is unchanged;
    * the edges of ``hidden_boxes`` (not to be drawn, e.g. below the score threshold) are unchanged outside the
      zones of the drawn instances.
    """
    shape = original.shape[:2]
    assert drawn.shape == original.shape, (drawn.shape, original.shape)
    texts = [label_text(classes[label], None if scores is None else scores[i]) for i, label in enumerate(labels)]
    zones = [edge_band_zone(box, shape) | label_zone(box, text, shape) for box, text in zip(boxes, texts)]
    all_zone = drawn_zone(shape, boxes, texts, masks)
    verified = dict(box_pixels=0, mask_pixels=0, unchanged_pixels=0, hidden_box_pixels=0)
    for index, (box, label) in enumerate(zip(boxes, labels)):
        others = np.zeros(shape, bool)
        for other, zone in enumerate(zones):
            if other != index:
                others |= zone
        others |= label_zone(box, texts[index], shape)
        for mask in masks or []:  # masks are drawn over the box edges
            others |= dilated(mask, EDGE_BAND)
        informative, matches = box_edge_evidence(drawn, original, box, palette[label], others)
        if informative >= 3:
            assert matches >= 0.9 * informative, (
                f'box {np.round(box, 1).tolist()} ({texts[index]}): only {matches} of {informative} edge pixels '
                f'have its colour {palette[label]}')
            verified['box_pixels'] += matches
    boxes_zone = np.zeros(shape, bool)
    for zone in zones:
        boxes_zone |= zone
    if masks:
        coverage = np.sum([m.astype(np.int64) for m in masks], axis=0)
        for mask, label in zip(masks, labels):
            interior = eroded(mask, EDGE_BAND) & (coverage == 1) & ~boxes_zone
            if interior.sum() < 10:
                continue
            change = np.abs(drawn[interior] - original[interior]).max(axis=1)
            assert (change >= MASK_MIN_CHANGE).all(), (
                f'mask of class {classes[label]}: {(change < MASK_MIN_CHANGE).sum()} of {interior.sum()} interior '
                f'pixels are not tinted')
            colour = np.median((drawn[interior] - (1 - ALPHA) * original[interior]) / ALPHA, axis=0)
            assert np.abs(colour - np.asarray(palette[label])).max() <= MASK_JITTER + BLEND_TOL, (
                f'mask of class {classes[label]} tinted with {colour.round()}, expected about {palette[label]}')
            verified['mask_pixels'] += int(interior.sum())
    outside = ~all_zone
    change = np.abs(drawn - original).max(axis=2)
    assert (change[outside] <= UNCHANGED_TOL).all(), (
        f'{(change[outside] > UNCHANGED_TOL).sum()} pixels away from every drawn instance changed, e.g. at (row, col) '
        f'{np.argwhere(outside & (change > UNCHANGED_TOL))[:5].tolist()}')
    verified['unchanged_pixels'] = int(outside.sum())
    for box in hidden_boxes:
        for row, col in edge_points(box, shape):
            if all_zone[row, col]:
                continue
            assert change[row, col] <= UNCHANGED_TOL, f'hidden box {np.round(box, 1).tolist()} was drawn at ' \
                                                      f'({row}, {col})'
            verified['hidden_box_pixels'] += 1
    return verified


def mask_from_rle(rle: dict) -> np.ndarray:
    """A COCO RLE (``counts`` as str) as a boolean (H, W) array."""
    from pycocotools import mask as mask_utils
    return mask_utils.decode(dict(size=rle['size'], counts=rle['counts'].encode())).astype(bool)


def masks_from_rles(rles: List[dict]) -> List[np.ndarray]:
    return [mask_from_rle(rle) for rle in rles]
