"""PAA head trained with a ranking-based loss (RS-PAA, BRS-PAA, AP-PAA, BAP-PAA) (BRS paper Sec. 6.1)."""
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads import PAAHead
from mmdet.models.dense_heads.paa_head import levels_to_images
from mmdet.models.layers import multiclass_nms
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps, get_box_tensor
from mmdet.utils import ConfigType, InstanceList, OptInstanceList

from .rank_based_atss_head import RankBasedATSSHead

#: Score voting (PAA, Sec. 3.4): candidates must overlap a detection by more than this IoU, and are weighted by
#: ``exp(-(1 - IoU)^2 / VOTING_SIGMA)``; the values of PAAHead.
VOTING_MIN_IOU = 0.01
VOTING_SIGMA = 0.025


@MODELS.register_module()
class RankBasedPAAHead(RankBasedATSSHead, PAAHead):
    """PAA head whose classifier is trained with a ranking-based loss; no IoU-prediction branch.

    What changes with respect to :class:`PAAHead` and why (RS-Loss / BRS paper Sec. 6.1, Tables 2-3):

    * No IoU-prediction branch (PAA reuses ATSS's centerness layer for it): as for :class:`RankBasedATSSHead`,
      ranking losses with IoU targets already rank well-localised boxes first. ``forward`` returns
      ``(cls_scores, bbox_preds)`` and the test scores are the class probabilities alone (PAA multiplies them
      with the predicted IoU and takes the square root).
    * Probabilistic anchor assignment is unchanged (candidates from ``train_cfg.assigner``, top-``topk`` per
      level and gt, a two-component GMM on their costs, positives up to the most likely one of the low-cost
      component), but the cost of a candidate uses ``assign_loss_cls``, a score-based loss (focal loss by
      default), plus ``loss_bbox``: a ranking loss is defined over a whole set and has no per-anchor value.
      This is what the released RS-PAA does.
    * After the reassignment, ``loss_cls`` (RS, BRS, AP or BAP) ranks all valid anchors x classes of the batch
      with IoU targets (RS/BRS) of the boxes decoded by ``bbox_coder``; the GIoU loss is weighted per positive by
      its detached maximum class probability and value-matched to the ranking loss (Eq. 17), as in
      :class:`RankBasedATSSHead` (keys ``loss_rank``, ``loss_sort``, ``loss_bbox``).
    * Score voting at test time (``score_voting=True``) works on the class probabilities, in tensor operations
      (:meth:`score_voting`: the same boxes as PAAHead's loops over classes and detections, which tracing for ONNX
      export cannot follow); the ``nms_pre`` candidates are the first ``nms_pre`` by score whatever their number
      (PAAHead branches on it, which tracing freezes).
    * The GMM is fitted on float64 costs (:meth:`paa_reassign`). PAAHead hands scikit-learn the float32 costs, and
      when the candidates of a gt have nearly equal costs (common early in training, when the class scores are
      still the prior) the variance scikit-learn computes in float32 cancels to a negative number and the fit
      raises "ill-defined empirical covariance", which ends the training run.

    Args:
        num_classes (int): Number of foreground classes.
        in_channels (int): Input channels.
        assign_loss_cls (dict): Score-based loss whose per-anchor value (summed over classes) plus the box loss
            is the cost the GMM separates. Defaults to mmdet PAA's focal loss (gamma 2, alpha 0.25).
        **kwargs: Arguments of :class:`RankBasedATSSHead` (``loss_cls``, ``loss_bbox``, ...) and of
            :class:`PAAHead` (``topk``, ``score_voting``, ``covariance_type``).
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 assign_loss_cls: ConfigType = dict(
                     type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                 **kwargs) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, **kwargs)
        self.assign_loss_cls = MODELS.build(assign_loss_cls)

    def paa_reassign(self, pos_losses: Tensor, label: Tensor, label_weight: Tensor, bbox_weight: Tensor,
                     pos_inds: Tensor, pos_gt_inds: Tensor, anchors: List[Tensor]) -> tuple:
        """:meth:`PAAHead.paa_reassign` on the costs in float64 (shape ``(num_candidates,)``), so that the GMM is fitted
        in float64 (see the class docstring); same arguments and returns. Casting float32 to float64 is exact, so
        the top-k candidates per level are unchanged."""
        return super().paa_reassign(pos_losses.double(), label, label_weight, bbox_weight, pos_inds, pos_gt_inds,
                                    anchors)

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """PAA's assignment, then the ranking loss over all valid anchors and the value-matched GIoU loss.

        Arguments and returned keys as :meth:`RankBasedATSSHead.loss_by_feat`; only the assignment differs.
        """
        anchor_list, valid_flag_list = self.batch_anchors(cls_scores, batch_img_metas)
        labels, label_weights, bbox_targets, bbox_weights, pos_inds, pos_gt_inds = self.get_targets(
            anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
            batch_gt_instances_ignore=batch_gt_instances_ignore)
        cls_scores = [s.reshape(-1, self.cls_out_channels) for s in levels_to_images(cls_scores)]
        bbox_preds = [p.reshape(-1, 4) for p in levels_to_images(bbox_preds)]
        candidate_costs, = multi_apply(self.get_pos_loss, anchor_list, cls_scores, bbox_preds, labels,
                                       label_weights, bbox_targets, bbox_weights, pos_inds)
        with torch.no_grad():
            labels, label_weights, _, _ = multi_apply(self.paa_reassign, candidate_costs, labels, label_weights,
                                                      bbox_weights, pos_inds, pos_gt_inds, anchor_list)

        cls_logits = torch.cat(cls_scores)
        deltas = torch.cat(bbox_preds)
        anchors = torch.cat([torch.cat(per_image) for per_image in anchor_list])
        labels = torch.cat(labels)
        valid = torch.cat(label_weights) > 0
        gt_bboxes = torch.cat(bbox_targets)
        pos_mask = (labels >= 0) & (labels < self.num_classes)
        pos_decoded = get_box_tensor(self.bbox_coder.decode(anchors[pos_mask], deltas[pos_mask]))
        pos_gt = gt_bboxes[pos_mask]  # reg_decoded_bbox: the targets are the assigned gt boxes
        return self.rank_based_loss(cls_logits, labels, valid, pos_decoded, pos_gt, pos_decoded, pos_gt)

    def get_pos_loss(self, anchors: List[Tensor], cls_score: Tensor, bbox_pred: Tensor, label: Tensor,
                     label_weight: Tensor, bbox_target: Tensor, bbox_weight: Tensor, pos_inds: Tensor) -> tuple:
        """Cost of each candidate positive of one image: ``assign_loss_cls`` (summed over classes) + box loss.

        Args:
            anchors (list[Tensor]): Anchors of each level, (n_level, 4).
            cls_score (Tensor): Logits of the image's anchors (n, num_classes).
            bbox_pred (Tensor): Deltas (n, 4).
            label (Tensor): Candidate labels (n,), ``num_classes`` for background.
            label_weight (Tensor): (n,).
            bbox_target (Tensor): Assigned gt boxes (n, 4).
            bbox_weight (Tensor): (n, 4).
            pos_inds (Tensor): Indices of the candidates (P,).

        Returns:
            tuple[Tensor]: The costs (P,), detached from nothing (the reassignment runs without gradients).
        """
        if not len(pos_inds):
            return cls_score.new_zeros(0),
        pos_boxes = self.bbox_coder.decode(torch.cat(anchors)[pos_inds], bbox_pred[pos_inds])
        cls_cost = self.assign_loss_cls(cls_score[pos_inds], label[pos_inds], label_weight[pos_inds],
                                        avg_factor=1.0, reduction_override='none').sum(-1)
        box_cost = self.loss_bbox(pos_boxes, bbox_target[pos_inds], bbox_weight[pos_inds], avg_factor=1.0,
                                  reduction_override='none')
        return cls_cost + box_cost,

    def _predict_by_feat_single(self,
                                cls_score_list: List[Tensor],
                                bbox_pred_list: List[Tensor],
                                score_factor_list: Optional[List[Tensor]],
                                mlvl_priors: List[Tensor],
                                img_meta: dict,
                                cfg: ConfigType,
                                rescale: bool = False,
                                with_nms: bool = True) -> InstanceData:
        """Boxes of one image from the class probabilities (no IoU factor), then NMS and score voting.

        Args:
            cls_score_list (list[Tensor]): Per level (A * num_classes, H, W).
            bbox_pred_list (list[Tensor]): Per level (A * 4, H, W).
            score_factor_list (None): Unused (no IoU branch).
            mlvl_priors (list[Tensor]): Per level anchors (n_level, 4).
            img_meta (dict): ``img_shape`` and ``scale_factor``.
            cfg (ConfigDict): ``nms_pre``, ``score_thr``, ``nms``, ``max_per_img``.
            rescale (bool): Return boxes in the original image's coordinates.
            with_nms (bool): Must be True (as for :class:`PAAHead`).

        Returns:
            InstanceData: ``bboxes`` (k, 4), ``scores`` (k,), ``labels`` (k,).
        """
        cfg = self.test_cfg if cfg is None else cfg
        nms_pre = cfg.get('nms_pre', -1)
        all_boxes, all_scores = [], []
        for cls_score, bbox_pred, priors in zip(cls_score_list, bbox_pred_list, mlvl_priors):
            scores = cls_score.permute(1, 2, 0).reshape(-1, self.cls_out_channels).sigmoid()
            bbox_pred = bbox_pred.permute(1, 2, 0).reshape(-1, 4)
            if nms_pre > 0:  # slicing keeps all when there are fewer (a graph exported with dynamic sizes too)
                keep = scores.max(dim=1).values.argsort(descending=True)[:nms_pre]
                scores, bbox_pred, priors = scores[keep], bbox_pred[keep], priors[keep]
            all_boxes.append(get_box_tensor(self.bbox_coder.decode(priors, bbox_pred,
                                                                   max_shape=img_meta['img_shape'])))
            all_scores.append(scores)
        boxes = torch.cat(all_boxes)
        if rescale:
            boxes = boxes / boxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
        scores = torch.cat(all_scores)
        scores = torch.cat([scores, scores.new_zeros(scores.size(0), 1)], dim=1)  # background column for NMS
        det_bboxes, det_labels = multiclass_nms(boxes, scores, cfg.score_thr, cfg.nms, cfg.max_per_img)
        if self.with_score_voting:
            det_bboxes, det_labels = self.score_voting(det_bboxes, det_labels, boxes, scores, cfg.score_thr)
        results = InstanceData()
        results.bboxes = det_bboxes[:, :-1]
        results.scores = det_bboxes[:, -1]
        results.labels = det_labels
        return results

    def score_voting(self, det_bboxes: Tensor, det_labels: Tensor, mlvl_bboxes: Tensor, mlvl_nms_scores: Tensor,
                     score_thr: float) -> Tuple[Tensor, Tensor]:
        """PAA's score voting (Kim & Lee, ECCV 2020, Sec. 3.4) for all detections at once.

        Each detection's box becomes the average of the candidate boxes of its class (score above ``score_thr``)
        that overlap it (IoU > :data:`VOTING_MIN_IOU`), weighted by ``exp(-(1 - IoU)^2 / VOTING_SIGMA) * score``;
        its score is kept. Same result as :meth:`PAAHead.score_voting`, including its order (detections grouped
        by class in increasing label order, each group in the input order), from one (K, M) IoU matrix instead of
        loops over classes and detections.

        Args:
            det_bboxes (Tensor): (K, 5) boxes and scores after NMS.
            det_labels (Tensor): (K,) their labels.
            mlvl_bboxes (Tensor): (M, 4) all candidate boxes.
            mlvl_nms_scores (Tensor): (M, C + 1) their class probabilities (last column: background, zero).
            score_thr (float): Candidate score threshold.

        Returns:
            tuple[Tensor, Tensor]: Voted boxes with scores (K, 5) and labels (K,).
        """
        num_dets = det_labels.shape[0]
        class_scores = mlvl_nms_scores[:, :self.cls_out_channels].t()[det_labels]  # (K, M): score in the det's class
        ious = bbox_overlaps(det_bboxes[:, :4], mlvl_bboxes)  # (K, M)
        voters = (class_scores > score_thr) & (ious > VOTING_MIN_IOU)
        weights = torch.exp(-(1 - ious)**2 / VOTING_SIGMA) * class_scores * voters
        voted = weights @ mlvl_bboxes / weights.sum(dim=1, keepdim=True)
        order = (det_labels * num_dets + torch.arange(num_dets, device=det_labels.device)).argsort()
        return torch.cat([voted, det_bboxes[:, 4:]], dim=1)[order], det_labels[order]
