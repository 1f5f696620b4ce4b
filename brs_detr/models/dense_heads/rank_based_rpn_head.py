"""RPN head trained with a ranking-based loss on objectness (BRS paper Sec. 6.1; RS loss, Oksuz et al., 2021)."""
from typing import Dict, List, Optional

import torch
from torch import Tensor

from mmdet.models.dense_heads import RPNHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import cat_boxes, get_box_tensor
from mmdet.utils import InstanceList, OptInstanceList

from .rank_based_loss_mixin import RankBasedLossMixin


@MODELS.register_module()
class RankBasedRPNHead(RankBasedLossMixin, RPNHead):
    """RPN head whose objectness is trained with a ranking-based loss over all anchors.

    What changes with respect to :class:`RPNHead` and why:

    * No sampler: every valid anchor of the local batch enters one ranking-loss call (ranking losses are
      robust to the foreground/background imbalance). Configure ``train_cfg.rpn.sampler`` as
      ``PseudoSampler`` (or leave it out); anchors the assigner ignores (IoU between the thresholds) are
      ignored by the ranking loss too.
    * Sigmoid objectness with one output per anchor; ``loss_cls`` is a ranking loss. Positive targets are
      the IoU of the predicted box, decoded by this head's own ``bbox_coder``, with its assigned ground
      truth (RS/BRS) or 1 (AP/BAP). (The released BRS code decoded them with hard-coded standard
      deviations and without anchors.)
    * The box loss (GIoU on decoded boxes with ``reg_decoded_bbox=True``, or L1 on deltas) is weighted per
      positive by its detached objectness probability, normalised by the sum of the weights and
      value-matched to the ranking loss (Eq. 17).
    * ``head_weight`` scales all three losses: 0.2 in the released RS/BRS two-stage CNN baselines, 1.0 for
      the RPN inside BRS-DETR. The effective weight is ``head_weight * loss_cls.loss_weight``.
    * Loss keys: ``loss_rpn_rank``, ``loss_rpn_sort`` (RS/BRS only), ``loss_rpn_bbox``.

    Args:
        in_channels (int): Input channels.
        num_classes (int): Must be 1.
        loss_cls (dict): Ranking-loss config. Defaults to BRS with ``delta=0.5``.
        loss_bbox (dict): Box-loss config. Defaults to GIoU (needs ``reg_decoded_bbox=True``).
        head_weight (float): Multiplier of every loss of this head. Defaults to 1.0.
        use_iou_targets (bool, optional): IoU (True) or binary (False) targets; ``None`` infers it from the
            loss (IoU for RS/BRS, binary for AP/BAP).
        value_matched_bbox (bool): Rescale the box loss to the ranking loss value. Defaults to True.
        min_positive_target (float): Smallest IoU target of a positive. Defaults to 1e-6.
        **kwargs: Arguments of :class:`RPNHead` (``reg_decoded_bbox``, ``bbox_coder``, ...).
    """

    def __init__(self,
                 in_channels: int,
                 num_classes: int = 1,
                 loss_cls: dict = dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0),
                 loss_bbox: dict = dict(type='GIoULoss', loss_weight=1.0),
                 head_weight: float = 1.0,
                 use_iou_targets: Optional[bool] = None,
                 value_matched_bbox: bool = True,
                 min_positive_target: float = 1e-6,
                 reg_decoded_bbox: bool = True,
                 **kwargs) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, reg_decoded_bbox=reg_decoded_bbox, **kwargs)
        if head_weight < 0:
            raise ValueError(f'{type(self).__name__}: head_weight must be >= 0, got {head_weight}')
        self.head_weight = head_weight
        self._init_rank_based_loss(use_iou_targets, value_matched_bbox, min_positive_target)

    def _init_layers(self) -> None:
        """RPN layers with one sigmoid objectness output per anchor (no background column)."""
        self.use_sigmoid_cls = True
        self.cls_out_channels = self.num_classes
        super()._init_layers()

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """Ranking loss on the objectness of all valid anchors of the batch and the value-matched box loss.

        Args:
            cls_scores (list[Tensor]): Per level (N, A, H, W).
            bbox_preds (list[Tensor]): Per level (N, A * 4, H, W).
            batch_gt_instances (list[InstanceData]): ``bboxes`` (G, 4), ``labels`` (G,) (all 0).
            batch_img_metas (list[dict]): Image metas.
            batch_gt_instances_ignore (list[InstanceData], optional): Ignored boxes.

        Returns:
            dict[str, Tensor]: ``loss_rpn_rank``, ``loss_rpn_sort`` (RS/BRS), ``loss_rpn_bbox``, each times
            ``head_weight``.
        """
        featmap_sizes = [featmap.size()[-2:] for featmap in cls_scores]
        if len(featmap_sizes) != self.prior_generator.num_levels:
            raise ValueError(f'{type(self).__name__}: got {len(featmap_sizes)} feature levels, the anchor '
                             f'generator has {self.prior_generator.num_levels}')
        anchor_list, valid_flag_list = self.get_anchors(featmap_sizes, batch_img_metas,
                                                        device=cls_scores[0].device)
        (labels_list, label_weights_list, bbox_targets_list, _,
         _) = self.get_targets(anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
                               batch_gt_instances_ignore=batch_gt_instances_ignore)

        # per-level targets are (N, n_level, ...) in (H, W, A) order; flatten to (N * n_total, ...)
        reg_dim = self.bbox_coder.encode_size
        cls_logits = torch.cat([s.permute(0, 2, 3, 1).reshape(s.size(0), -1, self.cls_out_channels)
                                for s in cls_scores], dim=1).reshape(-1, self.cls_out_channels)
        deltas = torch.cat([p.permute(0, 2, 3, 1).reshape(p.size(0), -1, reg_dim) for p in bbox_preds],
                           dim=1).reshape(-1, reg_dim)
        anchors = get_box_tensor(cat_boxes([cat_boxes(img_anchors) for img_anchors in anchor_list]))
        labels = torch.cat(labels_list, dim=1).reshape(-1)
        valid = torch.cat(label_weights_list, dim=1).reshape(-1) > 0
        targets = torch.cat(bbox_targets_list, dim=1)
        targets = targets.reshape(-1, targets.size(-1))

        pos_mask = (labels >= 0) & (labels < self.num_classes)
        pos_anchors, pos_deltas, pos_targets = anchors[pos_mask], deltas[pos_mask], targets[pos_mask]
        pos_decoded = get_box_tensor(self.bbox_coder.decode(pos_anchors, pos_deltas))
        if self.reg_decoded_bbox:
            pos_gt = pos_targets
            loss_preds, loss_targets = pos_decoded, pos_gt
        else:
            # targets are encoded deltas: decoding them with the same coder gives the assigned gt boxes
            pos_gt = get_box_tensor(self.bbox_coder.decode(pos_anchors, pos_targets))
            loss_preds, loss_targets = pos_deltas, pos_targets
        losses = self.rank_based_loss(cls_logits, labels, valid, pos_decoded, pos_gt, loss_preds, loss_targets)
        return {key.replace('loss_', 'loss_rpn_', 1): value * self.head_weight for key, value in losses.items()}
