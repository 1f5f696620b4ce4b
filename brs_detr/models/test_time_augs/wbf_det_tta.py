"""Test-time augmentation that fuses the boxes of the augmented views (weighted box fusion) instead of NMS."""
from __future__ import annotations

from typing import List, Tuple

import torch
from mmcv.ops import batched_nms
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.test_time_augs import DetTTAModel
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps

#: WBF's IoU threshold for joining a cluster (Solovyev et al., "Weighted boxes fusion", 2021: 0.55).
DEFAULT_IOU_THR = 0.55


def weighted_box_fusion(boxes: Tensor, scores: Tensor, labels: Tensor, num_views: int,
                        iou_thr: float = DEFAULT_IOU_THR) -> Tuple[Tensor, Tensor, Tensor]:
    """Fuse the detections of ``num_views`` augmented views of one image (Solovyev et al. 2021, "avg" scores).

    Clusters: per class, the highest-scoring box starts a cluster, and every box overlapping a cluster's first box
    by IoU > ``iou_thr`` joins the highest-scoring such cluster, i.e. the clusters of greedy NMS (a kept box and
    the boxes it suppresses), computed as one NMS and one (K, M) IoU matrix rather than WBF's sequential matching
    against the running fused boxes. Each cluster gives one detection:

    * box: the score-weighted mean of its boxes;
    * score: the mean score of its boxes times ``min(n, num_views) / num_views`` (n boxes): a detection found in
      fewer views than there are loses confidence, one found in all keeps its mean.

    Args:
        boxes (Tensor): (M, 4) x1 y1 x2 y2 of all views, in the original image's coordinates.
        scores (Tensor): (M,).
        labels (Tensor): (M,).
        num_views (int): Number of augmented views that produced them.
        iou_thr (float): IoU above which a box joins a cluster.

    Returns:
        tuple[Tensor, Tensor, Tensor]: Fused boxes (K, 4), scores (K,) and labels (K,) in descending score order.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores, labels
    _, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=iou_thr))  # cluster heads
    overlaps = bbox_overlaps(boxes[keep], boxes)  # (K, M)
    same_label = labels[keep][:, None] == labels[None, :]
    joins = (overlaps > iou_thr) & same_label
    # every box joins the first (highest-scoring) head it overlaps: the head that suppressed it in NMS; a box that
    # rounding left without one joins the head of its class it overlaps most; a head is its own cluster's first box
    cluster = torch.where(joins.any(dim=0), joins.float().argmax(dim=0), (overlaps * same_label).argmax(dim=0))
    cluster[keep] = torch.arange(len(keep), device=keep.device)
    member = torch.zeros_like(overlaps).index_put_((cluster, torch.arange(len(boxes), device=boxes.device)),
                                                   torch.ones_like(scores))  # (K, M) one-hot
    weight = member * scores[None, :]
    score_sum = weight.sum(dim=1)
    fused_boxes = (weight @ boxes) / score_sum[:, None]
    counts = member.sum(dim=1)
    fused_scores = score_sum / counts * counts.clamp(max=num_views) / num_views
    order = fused_scores.argsort(descending=True)
    return fused_boxes[order], fused_scores[order], labels[keep][order]


@MODELS.register_module()
class WBFDetTTAModel(DetTTAModel):
    """mmdet's :class:`DetTTAModel` with weighted box fusion (:func:`weighted_box_fusion`) as the merge.

    What changed, and why: only :meth:`_merge_single_sample`. mmdet merges the views with NMS, which keeps one of
    the near-identical boxes that a set-prediction detector (BRS-DETR, Co-DETR: one query per object, no NMS of
    its own) returns for an object in each view and drops the others, so the views add candidates but no
    localization. Fusion averages them, weighted by score, and lowers the score of a detection that only some views
    found. The recovery of flipped and resized boxes is mmdet's (``merge_aug_bboxes``).

    ``tta_cfg``: ``iou_thr`` (default 0.55) and ``max_per_img`` (default 100).
    """

    def _merge_single_sample(self, data_samples: List[DetDataSample]) -> DetDataSample:
        """Fuse the detections of the augmented views of one image."""
        if data_samples[0].pred_instances.get('masks', None) is not None:
            raise NotImplementedError(f'{type(self).__name__}: no TTA for instance masks (as mmdet\'s DetTTAModel)')
        boxes, scores = self.merge_aug_bboxes([sample.pred_instances.bboxes for sample in data_samples],
                                              [sample.pred_instances.scores for sample in data_samples],
                                              [sample.metainfo for sample in data_samples])
        labels = torch.cat([sample.pred_instances.labels for sample in data_samples])
        tta_cfg = self.tta_cfg or {}
        fused_boxes, fused_scores, fused_labels = weighted_box_fusion(
            boxes, scores, labels, len(data_samples), tta_cfg.get('iou_thr', DEFAULT_IOU_THR))
        max_per_img = tta_cfg.get('max_per_img', 100)
        results = InstanceData()
        results.bboxes = fused_boxes[:max_per_img]
        results.scores = fused_scores[:max_per_img]
        results.labels = fused_labels[:max_per_img]
        merged = data_samples[0]
        merged.pred_instances = results
        return merged
