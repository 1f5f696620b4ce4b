"""Query head of BRS-DETR: Co-Deformable-DETR's query head trained with a ranking-based loss (BRS paper Sec. 5)."""
import copy
from typing import Dict, List, Optional

import torch
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from mmdet.utils import InstanceList, OptInstanceList

from ..losses import positive_score_weights, ranking_targets, value_matched, weighted_mean
from .co_deformable_detr_head import CoDeformableDETRHead
from .rank_based_loss_mixin import RankBasedLossMixin

#: Parameter-free sigmoid loss handed to :class:`DETRHead.__init__`, which reads ``loss_cls.use_sigmoid`` while
#: it builds the classifier; replaced by the configured ranking loss right after.
_SIGMOID_PLACEHOLDER = dict(type='FocalLoss', use_sigmoid=True, loss_weight=1.0)


@MODELS.register_module()
class RankBasedCoDeformableDETRHead(RankBasedLossMixin, CoDeformableDETRHead):
    """Co-Deformable-DETR query head whose classification losses are a ranking-based loss (BRS-DETR).

    What changes with respect to :class:`CoDeformableDETRHead` and why (BRS paper Sec. 5, Eq. 17):

    * ``loss_cls`` is a ranking loss (``BucketedRankSortLoss`` for BRS-DETR; ``RankSortLoss``, ``APLoss`` or
      ``BucketedAPLoss`` by config) for every decoder layer's one-to-one predictions, for the encoder proposals
      and for the customized positive queries. Each is one call over all queries x classes of the local batch
      (one-vs-all, sigmoid logits, no background column). The positive of a query matched to a ground truth
      (Hungarian matching, or the auxiliary head's assignment for positive queries) is its gt class's column,
      with target the IoU of the *same decoded box the box losses use* (absolute xyxy) with the matched gt for
      RS/BRS (Eq. 10-11), 1 for AP/BAP. A positive whose box misses its gt (IoU 0) stays a positive with a
      small target (:func:`ranking_targets`' clamp).
    * The L1 (normalised cxcywh) and GIoU (absolute xyxy) losses are computed per positive, weighted by the
      positive's detached maximum class probability when ``score_weighted_bbox`` (the released query head has
      no such weighting: its box losses are plain means over the positives, ``score_weighted_bbox=False``, which
      the BRS-DETR configs set), normalised by the sum of these weights, and each is
      rescaled to the value of the ranking loss of its set (``loss_rank + loss_sort``, weights included):
      ``lambda_bbox = L_BRS / L_bbox`` and ``lambda_IoU = L_BRS / L_IoU`` (Eq. 17), detached tensor ratios.
      The configured ``loss_bbox``/``loss_iou`` weights therefore have no effect and must be 1 (an error is
      raised otherwise); the weight of the query head is ``loss_cls.loss_weight`` (2.0 in BRS-DETR), the
      positive queries are further multiplied by ``lambda_1``.
    * The ranking losses normalise by their own positive count, so ``sync_cls_avg_factor``/``bg_cls_weight``
      play no role. Over several processes the box losses follow the ranking loss: each process's own batch by
      default, the global batch with ``loss_cls.rank_across_processes`` (:class:`RankBasedLossMixin`).
    * Loss keys (Co-DETR's layout with the ranking loss's names): ``loss_rank``, ``loss_sort`` (RS/BRS),
      ``loss_bbox``, ``loss_iou`` for the last decoder layer, ``d{i}.loss_*`` for the others, ``enc_loss_*``
      for the encoder proposals and ``loss_*_aux`` / ``d{i}.loss_*_aux`` for the positive queries
      (:class:`CoDETR` appends the auxiliary head's index).

    Matching (``train_cfg.assigner``) and prediction (sigmoid scores, top-k over queries x classes, no NMS)
    are unchanged; BRS-DETR uses ``FocalLossCost`` with weight 4.0 as class cost.

    Args:
        loss_cls (dict): Ranking-loss config. Defaults to BRS (``delta=0.5``) with weight 2.0.
        loss_bbox (dict): L1 loss config; ``loss_weight`` must be 1 while ``value_matched_bbox``.
        loss_iou (dict): GIoU loss config; ``loss_weight`` must be 1 while ``value_matched_bbox``.
        use_iou_targets (bool, optional): IoU (True) or binary (False) positive targets; ``None`` infers it
            from the loss (IoU for RS/BRS, binary for AP/BAP).
        value_matched_bbox (bool): Rescale the box losses to the ranking loss (Eq. 17). Defaults to True.
            With False the box losses keep their configured weights (score-weighted averages).
        min_positive_target (float): Smallest IoU target of a positive. Defaults to 1e-6.
        score_weighted_bbox (bool): Weight each positive's box losses by its detached maximum class
            probability (True, as the RS-loss heads do) or uniformly (False, what the released BRS-DETR query
            head computes and what the BRS-DETR configs use). Defaults to True.
        **kwargs: Arguments of :class:`CoDeformableDETRHead`.
    """

    def __init__(self,
                 *args,
                 loss_cls: dict = dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=2.0),
                 loss_bbox: dict = dict(type='L1Loss', loss_weight=1.0),
                 loss_iou: dict = dict(type='GIoULoss', loss_weight=1.0),
                 use_iou_targets: Optional[bool] = None,
                 value_matched_bbox: bool = True,
                 min_positive_target: float = 1e-6,
                 score_weighted_bbox: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, loss_cls=_SIGMOID_PLACEHOLDER, loss_bbox=loss_bbox, loss_iou=loss_iou, **kwargs)
        self.loss_cls = MODELS.build(loss_cls)
        self._init_rank_based_loss(use_iou_targets, value_matched_bbox, min_positive_target)
        self.score_weighted_bbox = score_weighted_bbox
        iou_weight = getattr(self.loss_iou, 'loss_weight', 1.0)
        if value_matched_bbox and iou_weight != 1.0:
            raise ValueError(
                f'{type(self).__name__}: loss_iou.loss_weight={iou_weight} has no effect because the GIoU loss '
                f'is value-matched to the ranking loss (BRS paper Eq. 17); set it to 1.0, scale the ranking '
                f'loss with loss_cls.loss_weight, or set value_matched_bbox=False')
        # mmdet's DETR heads read ``loss_cls.use_sigmoid`` for the classifier bias prior (init_weights) and for
        # sigmoid scoring at test time; ranking losses are one-vs-all on sigmoid logits.
        self.loss_cls.use_sigmoid = True

    # ------------------------------------------------------------------
    # core
    def rank_based_detr_loss(self, cls_scores: Tensor, bbox_preds: Tensor, labels: Tensor,
                             label_weights: Tensor, bbox_targets: Tensor,
                             batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Ranking loss over all queries x classes and the value-matched L1 and GIoU losses of one set.

        Args:
            cls_scores (Tensor): Logits (bs, Q, num_classes).
            bbox_preds (Tensor): Predicted boxes (bs, Q, 4), normalised (cx, cy, w, h).
            labels (Tensor): Assigned class per query (bs * Q,), ``num_classes`` for background.
            label_weights (Tensor): (bs * Q,); queries with weight 0 are ignored by the ranking loss.
            bbox_targets (Tensor): Assigned gt boxes (bs * Q, 4), normalised (cx, cy, w, h) (read for
                positives only).
            batch_img_metas (list[dict]): Image metas (``img_shape``).

        Returns:
            dict[str, Tensor]: ``loss_rank``, ``loss_sort`` (RS/BRS), ``loss_bbox``, ``loss_iou``; scalars.
        """
        num_imgs, num_queries, num_classes = cls_scores.shape
        if len(batch_img_metas) != num_imgs:
            raise ValueError(f'{type(self).__name__}: {num_imgs} images of predictions but '
                             f'{len(batch_img_metas)} image metas')
        cls_logits = cls_scores.reshape(-1, num_classes)
        bbox_preds = bbox_preds.reshape(-1, 4)
        pos_mask = (labels >= 0) & (labels < num_classes)

        # absolute (x1, y1, x2, y2) for the IoU targets and the GIoU loss, as DETRHead scales them
        factors = bbox_preds.new_tensor([[meta['img_shape'][1], meta['img_shape'][0]] * 2
                                         for meta in batch_img_metas])
        factors = factors.repeat_interleave(num_queries, dim=0)[pos_mask]
        pos_preds, pos_targets = bbox_preds[pos_mask], bbox_targets[pos_mask]
        pos_pred_boxes = bbox_cxcywh_to_xyxy(pos_preds) * factors
        pos_gt_boxes = bbox_cxcywh_to_xyxy(pos_targets) * factors

        if self.use_iou_targets:
            pos_ious = bbox_overlaps(pos_pred_boxes.detach(), pos_gt_boxes, is_aligned=True)
        else:
            pos_ious = pos_pred_boxes.new_ones(pos_pred_boxes.size(0))
        ious = cls_logits.new_zeros(labels.size(0), dtype=pos_ious.dtype)
        ious[pos_mask] = pos_ious
        targets = ranking_targets(labels, ious, num_classes, valid=label_weights > 0,
                                  min_positive_target=self.min_positive_target)
        losses = dict(self.loss_cls(cls_logits.reshape(-1), targets))
        ranking_value = sum(losses.values())

        if self.score_weighted_bbox:
            box_weights = positive_score_weights(cls_logits[pos_mask])
        else:
            box_weights = pos_preds.new_ones(pos_preds.size(0))
        across = self.rank_across_processes  # normalise and value-match over the global batch
        loss_l1 = self.loss_bbox(pos_preds, pos_targets, reduction_override='none').sum(dim=-1)
        loss_l1 = weighted_mean(loss_l1, box_weights, across_processes=across)
        loss_giou = weighted_mean(self.loss_iou(pos_pred_boxes, pos_gt_boxes, reduction_override='none'),
                                  box_weights, across_processes=across)
        if self.value_matched_bbox:
            loss_l1 = value_matched(loss_l1, ranking_value, across_processes=across)
            loss_giou = value_matched(loss_giou, ranking_value, across_processes=across)
        losses['loss_bbox'] = loss_l1
        losses['loss_iou'] = loss_giou
        return losses

    # ------------------------------------------------------------------
    # one-to-one branch
    def loss_by_feat_single(self, cls_scores: Tensor, bbox_preds: Tensor, batch_gt_instances: InstanceList,
                            batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Hungarian matching and the rank-based losses of one decoder layer (or of the encoder proposals).

        Unlike :meth:`DETRHead.loss_by_feat_single` this returns a dict (the number of classification terms
        depends on the ranking loss: AP/BAP have no sorting term).

        Args:
            cls_scores (Tensor): (bs, Q, num_classes) logits.
            bbox_preds (Tensor): (bs, Q, 4) normalised (cx, cy, w, h).
            batch_gt_instances (list[InstanceData]): ``bboxes`` (G, 4) absolute xyxy and ``labels`` (G,).
            batch_img_metas (list[dict]): Image metas.

        Returns:
            dict[str, Tensor]: See :meth:`rank_based_detr_loss`.
        """
        num_imgs = cls_scores.size(0)
        labels_list, label_weights_list, bbox_targets_list, _, _, _ = self.get_targets(
            [cls_scores[i] for i in range(num_imgs)], [bbox_preds[i] for i in range(num_imgs)],
            batch_gt_instances, batch_img_metas)
        return self.rank_based_detr_loss(cls_scores, bbox_preds, torch.cat(labels_list),
                                         torch.cat(label_weights_list), torch.cat(bbox_targets_list),
                                         batch_img_metas)

    def loss_by_feat(self,
                     all_layers_cls_scores: Tensor,
                     all_layers_bbox_preds: Tensor,
                     enc_cls_scores: Optional[Tensor],
                     enc_bbox_preds: Optional[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """Rank-based losses of every decoder layer and of the encoder proposals.

        Args:
            all_layers_cls_scores (Tensor): (num_layers, bs, Q, num_classes).
            all_layers_bbox_preds (Tensor): (num_layers, bs, Q, 4) normalised (cx, cy, w, h).
            enc_cls_scores (Tensor, optional): (bs, num_feat_points, num_classes) for two-stage.
            enc_bbox_preds (Tensor, optional): (bs, num_feat_points, 4).
            batch_gt_instances (list[InstanceData]): Ground truth per image.
            batch_img_metas (list[dict]): Image metas.
            batch_gt_instances_ignore: Must be None.

        Returns:
            dict[str, Tensor]: ``loss_rank``... of the last layer, ``d{i}.loss_rank``... of the others,
            ``enc_loss_rank``... of the encoder proposals (binary: every gt is class 0).
        """
        if batch_gt_instances_ignore is not None:
            raise ValueError(f'{type(self).__name__} does not support ignored ground truth')
        num_layers = len(all_layers_cls_scores)
        loss_dict = dict()
        for layer_id in range(num_layers):
            prefix = '' if layer_id == num_layers - 1 else f'd{layer_id}.'
            layer_losses = self.loss_by_feat_single(all_layers_cls_scores[layer_id],
                                                    all_layers_bbox_preds[layer_id], batch_gt_instances,
                                                    batch_img_metas)
            loss_dict.update({prefix + key: value for key, value in layer_losses.items()})
        if enc_cls_scores is not None:
            proposal_gt_instances = copy.deepcopy(batch_gt_instances)
            for gt_instances in proposal_gt_instances:
                gt_instances.labels = torch.zeros_like(gt_instances.labels)
            enc_losses = self.loss_by_feat_single(enc_cls_scores, enc_bbox_preds, proposal_gt_instances,
                                                  batch_img_metas)
            loss_dict.update({'enc_' + key: value for key, value in enc_losses.items()})
        return loss_dict

    # ------------------------------------------------------------------
    # customized positive queries
    def loss_aux(self, hidden_states: Tensor, references: List[Tensor], aux_targets: Dict[str, Tensor],
                 batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Rank-based losses of the positive queries of one auxiliary head, every decoder layer.

        The targets are the auxiliary head's assignment (no matching); padding queries are negatives.

        Args:
            hidden_states (Tensor): (num_layers, bs, Q, dim).
            references (list[Tensor]): num_layers + 1 tensors (bs, Q, 4).
            aux_targets (dict[str, Tensor]): From :meth:`get_aux_targets`.
            batch_img_metas (list[dict]): Image metas.

        Returns:
            dict[str, Tensor]: ``loss_rank_aux``, ``loss_sort_aux`` (RS/BRS), ``loss_bbox_aux``,
            ``loss_iou_aux`` of the last layer and ``d{i}.loss_*_aux`` of the others, times ``lambda_1``.
        """
        all_cls_scores, all_bbox_preds = self(hidden_states, references)
        num_layers = len(all_cls_scores)
        labels = aux_targets['labels'].reshape(-1)
        label_weights = aux_targets['label_weights'].reshape(-1)
        bbox_targets = aux_targets['bbox_targets'].reshape(-1, 4)
        loss_dict = dict()
        for layer_id in range(num_layers):
            prefix = '' if layer_id == num_layers - 1 else f'd{layer_id}.'
            layer_losses = self.rank_based_detr_loss(all_cls_scores[layer_id], all_bbox_preds[layer_id], labels,
                                                     label_weights, bbox_targets, batch_img_metas)
            loss_dict.update({f'{prefix}{key}_aux': value * self.lambda_1 for key, value in layer_losses.items()})
        return loss_dict

    def loss_by_feat_single_aux(self, *args, **kwargs) -> None:
        """Not used: :meth:`loss_aux` computes every layer with :meth:`rank_based_detr_loss`."""
        raise NotImplementedError(f'{type(self).__name__} computes the positive-query losses in loss_aux')
