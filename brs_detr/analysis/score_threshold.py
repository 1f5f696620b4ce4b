"""Choose score thresholds on the validation set, store them next to the checkpoint, apply them when drawing.

Ranking-loss scores are ranks, not probabilities: a good BRS-DETR may put its duplicates at 0.55 and its objects at
0.7, another model everything below 0.3. A fixed ``--score-thr`` is therefore a guess. :func:`choose_score_thresholds`
measures it instead, per class and for all classes together: the detections of the validation set are matched to
the objects (IoU >= 0.5 by default, :func:`~brs_detr.analysis.detections.match_image`), sorted by score, and the
threshold kept is

* ``criterion='f1'`` (default): the one with the best F1 = 2PR / (P + R) (ties: the higher threshold);
* ``target_precision=P``: the lowest one whose precision is at least P (the most recall at that precision); where no
  threshold reaches P, none is drawn (the threshold is the highest score).

A threshold ``t`` keeps the detections with ``score > t`` (mmdet's visualizer draws ``score > pred_score_thr``): it is
placed half-way between the last kept score and the next one. A class without validation objects, without
detections or without a single true positive gets the global threshold (the table says so).

:func:`write_thresholds` stores the result as ``<checkpoint>.score_thr.json`` (:func:`thresholds_path`, written
atomically) with the checkpoint's sha256; :func:`thresholds_for_checkpoint` reads it back (``demo/image_demo.py``,
:class:`~brs_detr.apis.BRSDetInferencer`, ``tools/test.py --confusion-matrix``) unless the checkpoint changed, and
:class:`ScoreThreshold` says which detections pass.
"""
from __future__ import annotations

import json
import math
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .detections import (IGNORED, TRUE_POSITIVE, AnalysisError, ImageDetections, ImageTruth,
                         check_iou_thr, count_objects, match_image)

#: Suffix of the thresholds file next to a checkpoint: ``epoch_12.pth`` -> ``epoch_12.pth.score_thr.json``.
THRESHOLDS_SUFFIX = '.score_thr.json'
#: ``format`` of the thresholds file.
THRESHOLDS_FORMAT = 'brs_detr.score_thresholds/1'
#: The demo's threshold when neither ``--score-thr`` nor a thresholds file is there (mmdet's default).
DEFAULT_SCORE_THR = 0.3
#: IoU at which a detection matches an object when the thresholds are chosen.
DEFAULT_IOU_THR = 0.5


@dataclass
class Operating:
    """What a threshold gives on the validation set.

    Attributes:
        score_thr: The threshold (detections with ``score > score_thr`` are kept).
        precision, recall, f1: At that threshold (0 when nothing is kept).
        kept: Detections kept (ignored ones not counted).
        true_positives: Kept detections that match an object.
    """
    score_thr: float
    precision: float
    recall: float
    f1: float
    kept: int
    true_positives: int


@dataclass
class ClassThreshold:
    """The threshold of one class: ``chosen`` on its own detections or taken from ``global`` (``note`` says why)."""
    name: str
    score_thr: float
    source: str
    num_objects: int
    num_detections: int
    operating: Optional[Operating] = None
    note: str = ''


@dataclass
class ScoreThresholds:
    """Per-class and global thresholds of one checkpoint on one validation set (the thresholds file)."""
    classes: List[ClassThreshold]
    global_threshold: Operating
    criterion: str
    iou_thr: float
    num_images: int
    meta: Dict[str, Any] = field(default_factory=dict)

    def per_class(self) -> Dict[str, float]:
        return {entry.name: entry.score_thr for entry in self.classes}


def operating_points(outcomes: np.ndarray, scores: np.ndarray, num_objects: int) -> Dict[str, np.ndarray]:
    """Precision, recall and F1 after each score at which a threshold can cut (distinct scores, descending).

    Args:
        outcomes: (N,) :data:`TRUE_POSITIVE` / :data:`FALSE_POSITIVE` / :data:`IGNORED` per detection.
        scores: (N,) their scores.
        num_objects: The objects the detections could match.

    Returns:
        ``score`` (the lowest kept score), ``next_score`` (the highest dropped one, -1 after the last), ``kept``,
        ``tp``, ``precision``, ``recall``, ``f1``: one entry per cut, from the highest threshold down.
    """
    counted = outcomes != IGNORED
    order = np.argsort(-scores[counted], kind='stable')
    sorted_scores = scores[counted][order]
    hits = (outcomes[counted][order] == TRUE_POSITIVE).astype(np.int64)
    tp = np.cumsum(hits)
    kept = np.arange(1, len(hits) + 1)
    next_score = np.append(sorted_scores[1:], -1.0)
    cut = sorted_scores > next_score  # equal scores cannot be separated by a threshold
    tp, kept, score, next_score = tp[cut], kept[cut], sorted_scores[cut], next_score[cut]
    precision = tp / kept
    recall = tp / num_objects if num_objects else np.zeros_like(precision, dtype=np.float64)
    f1 = 2 * tp / (kept + num_objects)  # = 2PR / (P + R); equal ratios give equal floats (ties are exact)
    return dict(score=score, next_score=next_score, kept=kept, tp=tp, precision=precision, recall=recall, f1=f1)


def _threshold_between(score: float, next_score: float) -> float:
    """The threshold that keeps ``score`` and drops ``next_score`` (half-way; half of the last score)."""
    return (score + max(next_score, 0.0)) / 2


def select_threshold(points: Dict[str, np.ndarray], target_precision: Optional[float]) -> Optional[Operating]:
    """The operating point of the criterion (module docstring); ``None`` when no cut has a true positive.

    Without a reachable ``target_precision`` the threshold is the highest score (nothing kept).
    """
    if len(points['score']) == 0 or points['tp'][-1] == 0:
        return None
    if target_precision is None:
        index = int(np.argmax(points['f1']))  # the first maximum: the highest threshold among ties
    else:
        reaching = np.flatnonzero(points['precision'] >= target_precision)
        if len(reaching) == 0:
            return Operating(float(points['score'][0]), 0.0, 0.0, 0.0, 0, 0)
        index = int(reaching[-1])
    return Operating(score_thr=_threshold_between(points['score'][index], points['next_score'][index]),
                     precision=float(points['precision'][index]), recall=float(points['recall'][index]),
                     f1=float(points['f1'][index]), kept=int(points['kept'][index]), true_positives=int(
                         points['tp'][index]))


def operating_at(points: Dict[str, np.ndarray], score_thr: float, num_objects: int) -> Operating:
    """What a given threshold gives (the cut keeping the scores above it)."""
    above = np.flatnonzero(points['score'] > score_thr)
    if len(above) == 0:
        return Operating(score_thr, 0.0, 0.0, 0.0, 0, 0)
    index = int(above[-1])
    return Operating(score_thr, float(points['precision'][index]), float(points['recall'][index]),
                     float(points['f1'][index]), int(points['kept'][index]), int(points['tp'][index]))


def choose_score_thresholds(detections: Mapping[Any, ImageDetections], truth: Mapping[Any, ImageTruth],
                            classes: Sequence[str], iou_thr: float = DEFAULT_IOU_THR,
                            target_precision: Optional[float] = None) -> ScoreThresholds:
    """Per-class and global score thresholds (module docstring) on the images of ``detections``.

    Args:
        detections: ``img_id`` -> detections (every image must be in ``truth``).
        truth: ``img_id`` -> ground truth of the split.
        classes: Class names in label order.
        iou_thr: IoU at which a detection matches an object.
        target_precision: Choose the lowest threshold with at least this precision instead of the best F1.

    Raises:
        AnalysisError: No image, a label outside the classes, a bad IoU or precision target, no true positive at all.
    """
    iou_thr = check_iou_thr(iou_thr)
    if target_precision is not None and not (0 < target_precision <= 1):
        raise AnalysisError(f'the target precision must be in (0, 1], got {target_precision}')
    if not detections:
        raise AnalysisError('no image with detections to choose thresholds on')
    num_classes = len(classes)
    outcomes, scores, labels = [], [], []
    for img_id, image in detections.items():
        if len(image.labels) and (image.labels.min() < 0 or image.labels.max() >= num_classes):
            raise AnalysisError(f'image {img_id} has detections of label {int(image.labels.max())}, but there are '
                                f'{num_classes} classes: the results come from a model of another config')
        outcomes.append(match_image(image, truth[img_id], iou_thr))
        scores.append(image.scores)
        labels.append(image.labels)
    outcomes, scores, labels = np.concatenate(outcomes), np.concatenate(scores), np.concatenate(labels)
    objects = count_objects(truth, detections.keys(), num_classes)
    global_points = operating_points(outcomes, scores, int(objects.sum()))
    global_op = select_threshold(global_points, target_precision)
    if global_op is None:
        raise AnalysisError(f'not a single detection matches an object at IoU {iou_thr:g} in {len(detections)} '
                            'images: the model is not trained for this data (or the results belong to other data)')
    entries = []
    for label, name in enumerate(classes):
        of_class = labels == label
        counted = int((outcomes[of_class] != IGNORED).sum())
        entry = ClassThreshold(name, global_op.score_thr, 'global', int(objects[label]), counted)
        points = operating_points(outcomes[of_class], scores[of_class], int(objects[label]))
        chosen = select_threshold(points, target_precision) if objects[label] else None
        if chosen is not None:
            entry.score_thr, entry.source, entry.operating = chosen.score_thr, 'chosen', chosen
            entry.note = '' if chosen.kept else f'precision {target_precision:g} not reached: nothing drawn'
        else:
            entry.note = ('no validation object' if not objects[label] else 'no detection' if not counted else
                          'no true positive')
            entry.operating = operating_at(points, global_op.score_thr, int(objects[label]))
        entries.append(entry)
    criterion = 'f1' if target_precision is None else f'precision>={target_precision:g}'
    return ScoreThresholds(entries, global_op, criterion, iou_thr, len(detections))


def format_table(thresholds: ScoreThresholds) -> str:
    """The thresholds as a text table (one row per class, then the global one)."""
    header = ('class', 'score_thr', 'precision', 'recall', 'F1', 'objects', 'detections', 'source')
    rows = [header]
    for entry in thresholds.classes:
        op = entry.operating
        rows.append((entry.name, f'{entry.score_thr:.3f}', f'{op.precision:.3f}', f'{op.recall:.3f}',
                     f'{op.f1:.3f}', str(entry.num_objects), str(entry.num_detections),
                     entry.source + (f' ({entry.note})' if entry.note else '')))
    op = thresholds.global_threshold
    rows.append(('(all classes)', f'{op.score_thr:.3f}', f'{op.precision:.3f}', f'{op.recall:.3f}', f'{op.f1:.3f}',
                 str(sum(entry.num_objects for entry in thresholds.classes)),
                 str(sum(entry.num_detections for entry in thresholds.classes)), 'global'))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, '  '.join('-' * width for width in widths))
    title = (f'score thresholds ({thresholds.criterion} at IoU {thresholds.iou_thr:g}, {thresholds.num_images} '
             'images; precision/recall/F1 of the detections above each threshold)')
    return '\n'.join([title] + lines)


# ----------------------------------------------------------------------------- the thresholds file
def thresholds_path(checkpoint: str) -> str:
    """Where the thresholds of ``checkpoint`` are stored: ``<checkpoint>.score_thr.json``."""
    return checkpoint + THRESHOLDS_SUFFIX


def write_thresholds(thresholds: ScoreThresholds, checkpoint: str, path: Optional[str] = None, **meta: Any) -> str:
    """Write the thresholds file (atomically) for ``checkpoint``; return its path.

    ``meta`` (config, results file, split ...) is stored with the checkpoint's name and sha256.
    """
    from brs_detr.fileio.atomic_io import atomic_write_text
    from brs_detr.fileio.trust import sha256_file

    path = path or thresholds_path(checkpoint)
    content = dict(format=THRESHOLDS_FORMAT, checkpoint=osp.basename(checkpoint), checkpoint_sha256=sha256_file(
        checkpoint), criterion=thresholds.criterion, iou_thr=thresholds.iou_thr, num_images=thresholds.num_images,
        **meta, score_thr=thresholds.per_class(), global_threshold=asdict(thresholds.global_threshold),
        classes=[asdict(entry) for entry in thresholds.classes])
    atomic_write_text(json.dumps(content, indent=2) + '\n', path)
    return path


@dataclass
class ScoreThreshold:
    """The threshold a drawing uses: one value, or one per class (classes missing from it use ``value``).

    Attributes:
        value: The threshold of every class without one of its own.
        per_class: Class name -> threshold.
        source: Where it comes from, for the output (``'--score-thr 0.5'``, ``'epoch_12.pth.score_thr.json'``).
    """
    value: float
    per_class: Dict[str, float] = field(default_factory=dict)
    source: str = 'default'

    def for_labels(self, labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """(N,) the threshold of each label."""
        table = np.asarray([self.per_class.get(name, self.value) for name in classes] + [self.value])
        labels = np.asarray(labels, dtype=np.int64)
        return table[np.where((labels >= 0) & (labels < len(classes)), labels, len(classes))]

    def keep(self, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """(N,) bool: the detections drawn (``score > threshold of its class``)."""
        return np.asarray(scores) > self.for_labels(labels, classes)

    def describe(self, classes: Sequence[str] = ()) -> str:
        if not self.per_class:
            return f'score threshold {self.value:g} ({self.source})'
        values = ', '.join(f'{name} {self.per_class.get(name, self.value):.3f}' for name in classes or self.per_class)
        return f'score thresholds per class from {self.source}: {values}'


def thresholds_for_checkpoint(checkpoint: Optional[str], classes: Sequence[str], warn=None) -> Optional[ScoreThreshold]:
    """The stored thresholds of ``checkpoint`` (:func:`thresholds_path`), or ``None``.

    A file is ignored, with a warning through ``warn``, when it was written for another version of the checkpoint
    (sha256), for other classes, or is not a thresholds file.
    """
    if not checkpoint or '://' in checkpoint:
        return None
    path = thresholds_path(checkpoint)
    if not osp.isfile(path):
        return None
    warn = warn or (lambda message: None)
    try:
        with open(path, encoding='utf-8') as file:
            content = json.load(file)
        stored = {str(name): float(value) for name, value in content['score_thr'].items()}
        global_value = float(content['global_threshold']['score_thr'])
        sha256 = content['checkpoint_sha256']
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warn(f'{path} is not a score-threshold file of tools/analysis_tools/choose_score_threshold.py ({error}); '
             'ignored')
        return None
    from brs_detr.fileio.trust import sha256_file
    if sha256_file(checkpoint) != sha256:
        warn(f'{path} was written for another version of {checkpoint} (sha256 differs): ignored; run '
             'tools/analysis_tools/choose_score_threshold.py again')
        return None
    if classes and set(stored) != set(classes):
        warn(f'{path} has thresholds for the classes {sorted(stored)}, the model predicts {list(classes)}: ignored')
        return None
    if not all(math.isfinite(value) for value in list(stored.values()) + [global_value]):
        warn(f'{path} holds a non-finite threshold: ignored')
        return None
    return ScoreThreshold(global_value, stored, osp.basename(path))


def resolve_score_threshold(explicit: Optional[float], checkpoint: Optional[str], classes: Sequence[str],
                            warn=None) -> ScoreThreshold:
    """The threshold a drawing uses: ``explicit`` (``--score-thr``) if given, else the checkpoint's thresholds file,
    else :data:`DEFAULT_SCORE_THR`."""
    if explicit is not None:
        return ScoreThreshold(float(explicit), source=f'--score-thr {explicit:g}')
    stored = thresholds_for_checkpoint(checkpoint, classes, warn)
    if stored is not None:
        return stored
    reason = f'no {osp.basename(thresholds_path(checkpoint))}' if checkpoint and '://' not in checkpoint else \
        'no thresholds file'
    return ScoreThreshold(DEFAULT_SCORE_THR, source=f'default; {reason}')
