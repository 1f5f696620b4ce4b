"""Detections and ground truth of an evaluated split, and the matching both analyses share.

:func:`choose_score_thresholds <brs_detr.analysis.score_threshold.choose_score_thresholds>` and
:func:`confusion_matrix <brs_detr.analysis.confusion_matrix.confusion_matrix>` read the same inputs:

* the detections per image (:class:`ImageDetections`), from the results pickle of ``tools/test.py --out`` (mmdet's
  ``DumpDetResults``; read by :func:`read_results_pickle` without running code from it) or collected while the
  model runs (:class:`PredictionCollector`);
* the ground truth per image (:class:`ImageTruth`), from the dataset (mmdet's ``data_list``: boxes ``x1 y1 x2 y2``
  in the original image, labels in the config's class order, ``ignore_flag`` for crowd / VOC-difficult objects).

Matching (:func:`match_image`) is COCO's: detections in descending score order each take the unmatched object of
their class with the highest IoU at or above the threshold (a true positive); a detection that overlaps an ignored
object by the threshold (intersection over the detection's area, as COCO treats crowd regions) counts neither way;
every other detection is a false positive.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

#: A detection's outcome in :func:`match_image`.
TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1


class AnalysisError(ValueError):
    """Inputs that cannot be analysed: the message names the file or the image."""


@dataclass
class ImageDetections:
    """The detections of one image: ``boxes`` (N, 4) x1 y1 x2 y2 in original pixels, ``scores`` (N,), ``labels``
    (N,) int."""
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ImageTruth:
    """The annotated objects of one image: ``boxes`` (M, 4), ``labels`` (M,), ``ignored`` (M,) bool."""
    boxes: np.ndarray
    labels: np.ndarray
    ignored: np.ndarray


def _as_array(value: Any, dtype) -> np.ndarray:
    if hasattr(value, 'detach'):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def detections_from_results(results: Sequence[Mapping], source: str) -> Dict[Any, ImageDetections]:
    """``img_id`` -> :class:`ImageDetections` of mmdet's result dicts (``DumpDetResults`` / the evaluator's input).

    Raises:
        AnalysisError: A result without ``img_id`` or ``pred_instances``, an image twice, a non-finite score or box.
    """
    detections: Dict[Any, ImageDetections] = {}
    for index, result in enumerate(results):
        if not isinstance(result, Mapping) or 'img_id' not in result or 'pred_instances' not in result:
            raise AnalysisError(f'{source}: result {index} has no img_id / pred_instances (is it the --out pickle of '
                                'tools/test.py for a detector?)')
        pred = result['pred_instances']
        boxes = _as_array(pred['bboxes'], np.float64).reshape(-1, 4)
        scores = _as_array(pred['scores'], np.float64).reshape(-1)
        labels = _as_array(pred['labels'], np.int64).reshape(-1)
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise AnalysisError(f'{source}: image {result["img_id"]} has non-finite detection boxes or scores')
        if result['img_id'] in detections:
            raise AnalysisError(f'{source}: image {result["img_id"]} appears twice')
        detections[result['img_id']] = ImageDetections(boxes, scores, labels)
    return detections


class PredictionCollector(BaseMetric):
    """An evaluator metric that keeps every image's detections (on the CPU) for an analysis after the run.

    It computes no metric: :attr:`collected` holds the result dicts (``img_id`` and ``pred_instances`` with
    ``bboxes``, ``scores``, ``labels``, as in a results pickle) on the main process once the loop has ended.
    """

    default_prefix = 'collected'

    def __init__(self) -> None:
        super().__init__(collect_device='cpu')
        self.collected: List[dict] = []

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample['pred_instances']
            self.results.append(dict(img_id=sample['img_id'], pred_instances={
                key: pred[key].detach().cpu() for key in ('bboxes', 'scores', 'labels')}))

    def compute_metrics(self, results: list) -> dict:
        self.collected = list(results)
        return {}


def truth_from_dataset(dataset) -> Dict[Any, ImageTruth]:
    """``img_id`` -> :class:`ImageTruth` of an mmdet dataset (its ``data_list``, read by ``full_init``)."""
    dataset.full_init()
    truth = {}
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        instances = info.get('instances', [])
        truth[info['img_id']] = ImageTruth(
            boxes=np.asarray([inst['bbox'] for inst in instances], dtype=np.float64).reshape(-1, 4),
            labels=np.asarray([inst['bbox_label'] for inst in instances], dtype=np.int64),
            ignored=np.asarray([bool(inst.get('ignore_flag', 0)) for inst in instances], dtype=bool))
    return truth


def check_same_images(detections: Mapping, truth: Mapping, source: str, split: str) -> None:
    """Every image with detections must be an image of the split (results of another split or data set fail).

    Raises:
        AnalysisError: Naming a few foreign image ids.
    """
    foreign = [img_id for img_id in detections if img_id not in truth]
    if foreign:
        raise AnalysisError(f'{source}: {len(foreign)} of its {len(detections)} images are not in the {split} set '
                            f'(image ids {foreign[:5]}): the results come from another data set or split')


class _ResultsUnpickler(pickle.Unpickler):
    """Unpickles the plain containers, numpy arrays and torch tensors of a results pickle, and nothing else.

    A pickle can run code when it is loaded; results files travel between machines like checkpoints. torch tensors
    are rebuilt through ``torch.storage._load_from_bytes``, which loads the tensor bytes with
    ``torch.load(weights_only=True)``; ``_codecs.encode`` is how protocol 2 stores ``bytes``.
    """

    ALLOWED = {
        ('collections', 'OrderedDict'), ('_codecs', 'encode'), ('builtins', 'slice'), ('builtins', 'set'),
        ('builtins', 'frozenset'),
        ('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_tensor'),
        ('torch.storage', '_load_from_bytes'), ('torch', 'Size'), ('torch', 'device'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'), ('numpy', 'ndarray'),
        ('numpy', 'dtype'),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module.startswith('numpy') and name.endswith('DType')) or (
                module == 'torch' and name.endswith('Storage')):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'global {module}.{name} is not allowed in a results pickle')


def read_results_pickle(path: str) -> List[dict]:
    """The list of result dicts ``tools/test.py --out`` wrote, read without running code from the file.

    Raises:
        AnalysisError: Not a readable results pickle (the message says why).
    """
    try:
        with open(path, 'rb') as file:
            results = _ResultsUnpickler(file).load()
    except FileNotFoundError:
        raise AnalysisError(f'results file not found: {path}') from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as error:
        raise AnalysisError(f'{path} is not a results pickle of tools/test.py --out: {error}') from error
    if not isinstance(results, list):
        raise AnalysisError(f'{path} holds a {type(results).__name__}, not the list of results of tools/test.py --out')
    return results


def box_overlaps(boxes: np.ndarray, others: np.ndarray, over_first: bool = False) -> np.ndarray:
    """IoU (N, M) of two sets of ``x1 y1 x2 y2`` boxes; with ``over_first`` the intersection over the first box's
    area (how much of a detection lies in a crowd region)."""
    if len(boxes) == 0 or len(others) == 0:
        return np.zeros((len(boxes), len(others)))
    x1 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if over_first:
        return intersection / np.maximum(area[:, None], np.finfo(np.float64).eps)
    other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area[:, None] + other_area[None, :] - intersection
    return intersection / np.maximum(union, np.finfo(np.float64).eps)


def match_image(detections: ImageDetections, truth: ImageTruth, iou_thr: float) -> np.ndarray:
    """The outcome of every detection of one image (:data:`TRUE_POSITIVE`, :data:`FALSE_POSITIVE`, :data:`IGNORED`),
    class by class, in COCO's way (module docstring).

    Returns:
        (N,) int array aligned with ``detections``.
    """
    outcome = np.full(len(detections.scores), FALSE_POSITIVE, dtype=np.int64)
    for label in np.unique(detections.labels):
        det_index = np.flatnonzero(detections.labels == label)
        det_index = det_index[np.argsort(-detections.scores[det_index], kind='stable')]
        of_class = truth.labels == label
        objects = truth.boxes[of_class & ~truth.ignored]
        ious = box_overlaps(detections.boxes[det_index], objects)
        crowd = box_overlaps(detections.boxes[det_index], truth.boxes[of_class & truth.ignored], over_first=True)
        taken = np.zeros(len(objects), dtype=bool)
        for row, index in enumerate(det_index):
            candidates = np.where(taken, -1.0, ious[row])
            best = int(np.argmax(candidates)) if len(objects) else -1
            if best >= 0 and candidates[best] >= iou_thr:
                taken[best] = True
                outcome[index] = TRUE_POSITIVE
            elif crowd.shape[1] and crowd[row].max() >= iou_thr:
                outcome[index] = IGNORED
    return outcome


def count_objects(truth: Mapping[Any, ImageTruth], image_ids, num_classes: int) -> np.ndarray:
    """(num_classes,) objects (not ignored) per class over ``image_ids``."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for img_id in image_ids:
        image = truth[img_id]
        counts += np.bincount(image.labels[~image.ignored], minlength=num_classes)[:num_classes]
    return counts


def check_iou_thr(iou_thr: float) -> float:
    """An IoU threshold must lie in (0, 1]."""
    if not (isinstance(iou_thr, (int, float)) and math.isfinite(iou_thr) and 0 < iou_thr <= 1):
        raise AnalysisError(f'the IoU threshold must be in (0, 1], got {iou_thr}')
    return float(iou_thr)
