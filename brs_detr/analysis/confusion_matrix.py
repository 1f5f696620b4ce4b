"""Confusion matrix of a detector on an evaluated split (``tools/test.py --confusion-matrix``).

Rows are the annotated classes plus ``background`` (a detection of nothing), columns the predicted classes plus
``background`` (an object nobody detected). Per image, the detections above the score threshold (one value, or the
checkpoint's per-class thresholds, :class:`~brs_detr.analysis.score_threshold.ScoreThreshold`) are taken in
descending score order; each takes, among the objects not taken yet with IoU >= ``tp_iou_thr``, the one of its own
class with the highest IoU (a correct detection, on the diagonal), else the one of another class with the highest
IoU (a confusion), else it is a false detection (row ``background``) unless it lies in an ignored region (crowd /
VOC difficult: not counted). Objects left are missed (column ``background``). Every object and every counted
detection appears exactly once, unlike mmdet's ``confusion_matrix.py``, which counts a detection once per object
it overlaps.
"""
from __future__ import annotations

import csv
import io
import json
import os.path as osp
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .detections import ImageDetections, ImageTruth, box_overlaps, check_iou_thr
from .score_threshold import ScoreThreshold

#: Name of the extra row and column.
BACKGROUND = 'background'
#: File names written by :func:`write_confusion_matrix` (in the test run's log folder).
MATRIX_JSON, MATRIX_CSV, MATRIX_PNG = 'confusion_matrix.json', 'confusion_matrix.csv', 'confusion_matrix.png'


def _image_matrix(detections: ImageDetections, truth: ImageTruth, keep: np.ndarray, tp_iou_thr: float,
                  num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    order = np.flatnonzero(keep)
    order = order[np.argsort(-detections.scores[order], kind='stable')]
    objects = ~truth.ignored
    boxes, labels = truth.boxes[objects], truth.labels[objects]
    ious = box_overlaps(detections.boxes[order], boxes)
    crowd = box_overlaps(detections.boxes[order], truth.boxes[truth.ignored], over_first=True)
    taken = np.zeros(len(boxes), dtype=bool)
    for row, index in enumerate(order):
        label = detections.labels[index]
        candidates = np.where(taken | (ious[row] < tp_iou_thr), -1.0, ious[row])
        same = np.where(labels == label, candidates, -1.0)
        best = int(np.argmax(same)) if len(boxes) and same.max() >= 0 else (
            int(np.argmax(candidates)) if len(boxes) and candidates.max() >= 0 else -1)
        if best >= 0:
            taken[best] = True
            matrix[labels[best], label] += 1
        elif not (crowd.shape[1] and crowd[row].max() >= tp_iou_thr):
            matrix[num_classes, label] += 1
    np.add.at(matrix, (labels[~taken], num_classes), 1)
    return matrix


def confusion_matrix(detections: Mapping[Any, ImageDetections], truth: Mapping[Any, ImageTruth],
                     classes: Sequence[str], score_thr: ScoreThreshold, tp_iou_thr: float = 0.5) -> np.ndarray:
    """The (C + 1, C + 1) count matrix (module docstring) over the images of ``truth``.

    An image of ``truth`` without detections contributes its objects as missed.
    """
    tp_iou_thr = check_iou_thr(tp_iou_thr)
    num_classes = len(classes)
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    empty = ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    for img_id, image_truth in truth.items():
        image = detections.get(img_id, empty)
        keep = score_thr.keep(image.scores, image.labels, classes)
        matrix += _image_matrix(image, image_truth, keep, tp_iou_thr, num_classes)
    return matrix


def write_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], out_dir: str, score_thr: ScoreThreshold,
                           tp_iou_thr: float, plot: bool = True) -> Dict[str, str]:
    """Write ``confusion_matrix.json`` / ``.csv`` (counts) and ``.png`` (rows normalised to percent) atomically.

    Returns:
        Kind (``json``, ``csv``, ``png``) -> path.
    """
    from brs_detr.fileio.atomic_io import atomic_open, atomic_write_text

    names = list(classes) + [BACKGROUND]
    paths = {'json': osp.join(out_dir, MATRIX_JSON), 'csv': osp.join(out_dir, MATRIX_CSV)}
    atomic_write_text(json.dumps(dict(rows='ground truth', columns='prediction', names=names,
                                      matrix=matrix.tolist(), score_thr=score_thr.describe(classes),
                                      tp_iou_thr=tp_iou_thr), indent=1) + '\n', paths['json'])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(['ground truth \\ prediction'] + names)
    for name, row in zip(names, matrix.tolist()):
        writer.writerow([name] + row)
    atomic_write_text(text.getvalue(), paths['csv'])
    if plot:
        paths['png'] = osp.join(out_dir, MATRIX_PNG)
        with atomic_open(paths['png'], 'wb') as file:
            _plot(matrix, names, file, f'{score_thr.describe()}, IoU {tp_iou_thr:g}')
    return paths


def _plot(matrix: np.ndarray, names: Sequence[str], file, subtitle: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    totals = matrix.sum(axis=1, keepdims=True)
    percent = np.where(totals > 0, 100.0 * matrix / np.maximum(totals, 1), 0.0)
    size = max(4.0, 0.6 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(percent, cmap='Blues', vmin=0, vmax=100)
    axes.set_xticks(range(len(names)), labels=names, rotation=45, ha='right')
    axes.set_yticks(range(len(names)), labels=names)
    axes.set_xlabel('prediction')
    axes.set_ylabel('ground truth')
    axes.set_title(f'confusion matrix (% of each row)\n{subtitle}', fontsize=9)
    for row in range(len(names)):
        for column in range(len(names)):
            if matrix[row, column]:
                axes.text(column, row, f'{percent[row, column]:.0f}\n({matrix[row, column]})', ha='center',
                          va='center', fontsize=7, color='white' if percent[row, column] > 50 else 'black')
    figure.tight_layout()
    figure.savefig(file, format='png', dpi=100)
    plt.close(figure)


def format_matrix(matrix: np.ndarray, classes: Sequence[str], limit: Optional[int] = 20) -> str:
    """The count matrix as a text table (the first ``limit`` classes)."""
    names = (list(classes) + [BACKGROUND])
    if limit is not None and len(classes) > limit:
        return f'({len(classes)} classes: see the files)'
    width = max(len(name) for name in names + ['gt \\ pred'])
    cell = max(6, max(len(str(v)) for v in matrix.ravel()) + 1)
    lines = ['gt \\ pred'.ljust(width) + ''.join(name[:cell - 1].rjust(cell) for name in names)]
    for name, row in zip(names, matrix):
        lines.append(name.ljust(width) + ''.join(str(v).rjust(cell) for v in row))
    return '\n'.join(lines)
