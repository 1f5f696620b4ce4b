"""Score thresholds and the confusion matrix (brs_detr.analysis), against brute-force references.

The reference re-matches the detections kept by every candidate threshold from scratch, with loops written from the
definition (COCO matching: descending score, best unmatched object of the class at IoU >= 0.5, crowd regions
ignored), and picks the best F1 / the lowest threshold reaching a precision by enumeration, in float64.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from brs_detr.analysis.confusion_matrix import BACKGROUND, confusion_matrix, write_confusion_matrix
from brs_detr.analysis.detections import (AnalysisError, ImageDetections, ImageTruth, check_same_images,
                                          detections_from_results, read_results_pickle)
from brs_detr.analysis.score_threshold import (DEFAULT_SCORE_THR, ScoreThreshold, choose_score_thresholds,
                                               format_table, resolve_score_threshold, thresholds_for_checkpoint,
                                               thresholds_path, write_thresholds)

CLASSES = ('a', 'b', 'c')
IOU_THR = 0.5


# ----------------------------------------------------------------------------- brute-force references
def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def inside(det, region) -> float:
    """Intersection over the detection's area."""
    w = max(0.0, min(det[2], region[2]) - max(det[0], region[0]))
    h = max(0.0, min(det[3], region[3]) - max(det[1], region[1]))
    return w * h / ((det[2] - det[0]) * (det[3] - det[1]))


def reference_counts(detections, truth, label, score_thr, ignored_scores=None) -> Tuple[int, int, int]:
    """(true positives, false positives, objects) of ``label`` for the detections with score > score_thr; the scores
    of ignored detections are added to ``ignored_scores``."""
    tp = fp = objects = 0
    for img_id, image in truth.items():
        annotated = list(zip(image.boxes, image.labels, image.ignored))
        gts = [tuple(box) for box, lab, ign in annotated if lab == label and not ign]
        crowd = [tuple(box) for box, lab, ign in annotated if lab == label and ign]
        objects += len(gts)
        dets = detections.get(img_id)
        if dets is None:
            continue
        kept = sorted([(s, tuple(b)) for b, s, lab in zip(dets.boxes, dets.scores, dets.labels)
                       if lab == label and s > score_thr], key=lambda item: -item[0])
        taken = [False] * len(gts)
        for score, box in kept:
            best, best_iou = -1, -1.0
            for index, gt in enumerate(gts):
                value = iou(box, gt)
                if not taken[index] and value >= IOU_THR and value > best_iou:
                    best, best_iou = index, value
            if best >= 0:
                taken[best] = True
                tp += 1
            elif any(inside(box, region) >= IOU_THR for region in crowd):
                if ignored_scores is not None:
                    ignored_scores.append(score)
            else:
                fp += 1
    return tp, fp, objects


def reference_best(detections, truth, labels, target_precision=None):
    """(threshold, precision, recall, f1) chosen by enumeration over every candidate threshold: half-way between two
    scores of counted (not ignored) detections."""
    ignored: List[float] = []
    for label in labels:  # whether a detection is ignored does not depend on the threshold
        reference_counts(detections, truth, label, -1.0, ignored)
    counted = [float(s) for d in detections.values() for s, lab in zip(d.scores, d.labels) if lab in labels]
    for score in ignored:
        counted.remove(score)
    scores = sorted(set(counted), reverse=True)
    candidates = [(s + (scores[i + 1] if i + 1 < len(scores) else 0.0)) / 2 for i, s in enumerate(scores)]
    rows = []
    for thr in candidates:
        tp = fp = objects = 0
        for label in labels:
            t, f, o = reference_counts(detections, truth, label, thr)
            tp, fp, objects = tp + t, fp + f, objects + o
        if tp + fp == 0:
            continue
        precision, recall = tp / (tp + fp), tp / objects
        f1 = 2 * tp / (tp + fp + objects)  # 2PR / (P + R)
        rows.append((thr, precision, recall, f1))
    if target_precision is None:
        return max(rows, key=lambda row: (row[3], row[0]))
    reaching = [row for row in rows if row[1] >= target_precision]
    if not reaching:  # nothing drawn: the threshold is the highest score
        return scores[0], 0.0, 0.0, 0.0
    return min(reaching, key=lambda row: row[0])


def random_case(seed: int, num_images: int = 12):
    rng = np.random.default_rng(seed)
    detections, truth = {}, {}
    for img_id in range(num_images):
        num_gt = int(rng.integers(0, 5))
        centers = rng.uniform(20, 80, size=(num_gt, 2))
        sizes = rng.uniform(10, 30, size=(num_gt, 2))
        gt_boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
        gt_labels = rng.integers(0, len(CLASSES), size=num_gt)
        ignored = rng.random(num_gt) < 0.15
        truth[img_id] = ImageTruth(gt_boxes.reshape(-1, 4), gt_labels, ignored)
        dets, labels = [], []
        for box, label in zip(gt_boxes, gt_labels):  # near-misses, hits and duplicates
            for _ in range(int(rng.integers(0, 3))):
                dets.append(box + rng.normal(0, 4, size=4))
                labels.append(label if rng.random() < 0.8 else int(rng.integers(0, len(CLASSES))))
        for _ in range(int(rng.integers(0, 4))):  # background
            corner = rng.uniform(0, 80, size=2)
            dets.append(np.concatenate([corner, corner + rng.uniform(5, 20, size=2)]))
            labels.append(int(rng.integers(0, len(CLASSES))))
        boxes = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        detections[img_id] = ImageDetections(boxes, np.round(rng.random(len(dets)), 3), np.asarray(labels, np.int64))
    return detections, truth


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('target_precision', [None, 0.6])
def test_thresholds_match_the_brute_force_reference(seed, target_precision):
    detections, truth = random_case(seed)
    chosen = choose_score_thresholds(detections, truth, CLASSES, IOU_THR, target_precision)
    expected = reference_best(detections, truth, range(len(CLASSES)), target_precision)
    got = chosen.global_threshold
    assert (got.score_thr, got.precision, got.recall, got.f1) == pytest.approx(expected, abs=1e-12)
    for label, entry in enumerate(chosen.classes):
        objects = reference_counts(detections, truth, label, -1.0)[2]
        assert entry.num_objects == objects
        if entry.source == 'chosen':
            reference = reference_best(detections, truth, [label], target_precision)
            op = entry.operating
            assert (entry.score_thr, op.precision, op.recall, op.f1) == pytest.approx(reference, abs=1e-12)
        else:
            assert entry.score_thr == got.score_thr and entry.note
    table = format_table(chosen)
    assert table.splitlines()[0].startswith('score thresholds (' + ('f1' if target_precision is None else
                                                                      'precision>=0.6') + ' at IoU 0.5, 12 images')
    assert '(all classes)' in table and all(name in table for name in CLASSES)


def test_classes_without_objects_or_true_positives_take_the_global_threshold():
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    truth = {1: ImageTruth(box, np.array([0]), np.array([False]))}
    detections = {1: ImageDetections(np.concatenate([box, box + 100]), np.array([0.9, 0.8]), np.array([0, 1]))}
    chosen = choose_score_thresholds(detections, truth, CLASSES)
    a, b, c = chosen.classes
    assert a.source == 'chosen' and a.score_thr == pytest.approx(0.9 / 2)  # its last score: half of it
    assert (b.source, b.note) == ('global', 'no validation object') and b.score_thr == chosen.global_threshold.score_thr
    assert (c.source, c.note) == ('global', 'no validation object')
    unreachable = choose_score_thresholds(detections, truth, CLASSES, target_precision=1.0)
    assert unreachable.global_threshold.precision == 1.0
    with pytest.raises(AnalysisError, match='not a single detection matches an object at IoU 0.5'):
        choose_score_thresholds({1: ImageDetections(box + 100, np.array([0.5]), np.array([0]))}, truth, CLASSES)
    with pytest.raises(AnalysisError, match='has detections of label 7, but there are 3 classes'):
        choose_score_thresholds({1: ImageDetections(box, np.array([0.5]), np.array([7]))}, truth, CLASSES)


# ----------------------------------------------------------------------------- the thresholds file
def test_thresholds_file_round_trip_and_when_it_is_ignored(tmp_path):
    checkpoint = tmp_path / 'epoch_3.pth'
    checkpoint.write_bytes(b'weights')
    detections, truth = random_case(0)
    chosen = choose_score_thresholds(detections, truth, CLASSES)
    path = write_thresholds(chosen, str(checkpoint), config='x.py')
    assert path == str(checkpoint) + '.score_thr.json' == thresholds_path(str(checkpoint))
    content = json.loads(Path(path).read_text())
    assert content['score_thr'] == chosen.per_class() and content['config'] == 'x.py'
    stored = thresholds_for_checkpoint(str(checkpoint), CLASSES)
    assert stored.per_class == chosen.per_class() and stored.value == chosen.global_threshold.score_thr
    assert resolve_score_threshold(0.5, str(checkpoint), CLASSES).per_class == {}  # explicit wins
    assert resolve_score_threshold(None, str(checkpoint), CLASSES).source == 'epoch_3.pth.score_thr.json'
    warnings: List[str] = []
    assert thresholds_for_checkpoint(str(checkpoint), ('a', 'b'), warnings.append) is None
    assert 'the model predicts' in warnings[-1]
    checkpoint.write_bytes(b'retrained weights')
    assert thresholds_for_checkpoint(str(checkpoint), CLASSES, warnings.append) is None
    assert 'was written for another version of' in warnings[-1]
    fallback = resolve_score_threshold(None, str(checkpoint), CLASSES, warnings.append)
    assert (fallback.value, fallback.per_class) == (DEFAULT_SCORE_THR, {})
    assert fallback.describe() == 'score threshold 0.3 (default; no epoch_3.pth.score_thr.json)'


def test_per_class_threshold_keeps_by_label():
    threshold = ScoreThreshold(0.5, {'a': 0.2, 'b': 0.9})
    scores, labels = np.array([0.3, 0.3, 0.6, 0.95, 0.6]), np.array([0, 1, 1, 1, 2])
    assert threshold.keep(scores, labels, CLASSES).tolist() == [True, False, False, True, True]
    assert threshold.describe(CLASSES) == 'score thresholds per class from default: a 0.200, b 0.900, c 0.500'


# ----------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_counts_every_object_and_detection_once(tmp_path):
    a = [0.0, 0.0, 10.0, 10.0]
    b = [20.0, 0.0, 30.0, 10.0]
    c = [40.0, 0.0, 50.0, 10.0]
    crowd = [60.0, 0.0, 90.0, 30.0]
    truth = {1: ImageTruth(np.array([a, b, c, crowd]), np.array([0, 1, 2, 1]), np.array([False, False, False, True])),
             2: ImageTruth(np.array([a]), np.array([0]), np.array([False]))}  # no detections: a missed object
    detections = {1: ImageDetections(
        np.array([a, a, b, [40.0, 20.0, 50.0, 30.0], [62.0, 2.0, 70.0, 10.0], c]),
        np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.1]), np.array([0, 0, 2, 1, 1, 2]))}
    # a: correct; duplicate of a: false; b predicted as c: confusion; far box: false; in the crowd: ignored;
    # c below the threshold: c missed
    matrix = confusion_matrix(detections, truth, CLASSES, ScoreThreshold(0.3))
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1      # a found
    expected[3, 0] = 1      # the duplicate of a
    expected[1, 2] = 1      # b taken for c
    expected[3, 1] = 1      # the far detection of b
    expected[2, 3] = 1      # c missed (its detection is under the threshold)
    expected[0, 3] = 1      # a of image 2 missed
    assert matrix.tolist() == expected.tolist()
    # a detection prefers an object of its own class among the overlapping ones
    both = {1: ImageTruth(np.array([a, [0.0, 0.0, 10.0, 12.0]]), np.array([1, 0]), np.array([False, False]))}
    one = {1: ImageDetections(np.array([a]), np.array([0.9]), np.array([0]))}
    assert confusion_matrix(one, both, CLASSES, ScoreThreshold(0.3))[0, 0] == 1
    paths = write_confusion_matrix(matrix, CLASSES, str(tmp_path), ScoreThreshold(0.3), 0.5)
    stored = json.loads(Path(paths['json']).read_text())
    assert stored['names'] == list(CLASSES) + [BACKGROUND] and stored['matrix'] == expected.tolist()
    assert Path(paths['csv']).read_text().splitlines()[1] == 'a,1,0,0,1'
    assert Path(paths['png']).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ----------------------------------------------------------------------------- results pickles
def test_results_pickle_is_read_without_running_code(tmp_path):
    results = [dict(img_id=7, pred_instances=dict(bboxes=torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
                                                  scores=torch.tensor([0.5]), labels=torch.tensor([2])),
                    ori_shape=(10, 10))]
    path = tmp_path / 'results.pkl'
    from mmengine.fileio import dump  # how DumpDetResults writes it
    dump(results, str(path), file_format='pkl')
    detections = detections_from_results(read_results_pickle(str(path)), str(path))
    assert detections[7].boxes.tolist() == [[1.0, 2.0, 3.0, 4.0]] and detections[7].labels.tolist() == [2]

    class Payload:
        def __reduce__(self):
            return (print, ('code ran',))

    evil = tmp_path / 'evil.pkl'
    evil.write_bytes(pickle.dumps([Payload()]))
    with pytest.raises(AnalysisError, match=r'evil.pkl is not a results pickle of tools/test.py --out: global '
                       r'builtins.print is not allowed'):
        read_results_pickle(str(evil))
    with pytest.raises(AnalysisError, match='image 7 has non-finite detection boxes or scores'):
        detections_from_results([dict(img_id=7, pred_instances=dict(
            bboxes=torch.zeros(1, 4), scores=torch.tensor([float('nan')]), labels=torch.tensor([0])))], 'x')
    with pytest.raises(AnalysisError, match=r'1 of its 1 images are not in the val set \(image ids \[7\]\)'):
        check_same_images(detections, {1: None}, str(path), 'val')
