"""Mask head of the rank-based Mask R-CNN baselines: 1 - Dice per instance, score-weighted, value-matched."""
from typing import List, Optional

import torch
from torch import Tensor

from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, InstanceList

from ...losses import value_matched, weighted_mean

#: mmdet's DiceLoss adds ``eps`` to each of the two sums of its denominator; 5e-6 reproduces the released
#: ``sum(p^2) + sum(t^2) + 1e-5``.
DEFAULT_DICE_EPS = 5e-6


@MODELS.register_module()
class RankBasedFCNMaskHead(FCNMaskHead):
    """FCN mask head whose loss is ``1 - Dice`` per positive, averaged with the positives' box weights and
    value-matched to the RoI head's ranking loss.

    What changes with respect to :class:`FCNMaskHead` and why (RS-Loss / BRS paper Sec. 6.1, Mask R-CNN):

    * ``loss_mask`` defaults to mmdet's (non-naive) ``DiceLoss`` on the sigmoid of the gt class's mask logits:
      ``1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + eps)`` per instance. The per-pixel cross-entropy of Mask R-CNN
      is replaced because, like the box losses, the mask loss is rescaled to the ranking loss and needs no
      weight of its own.
    * The per-instance losses are averaged with weights ``pos_weights`` (the positives' detached maximum class
      probability, handed over by :class:`RankBasedStandardRoIHead`; uniform when ``None``) and the average is
      value-matched to ``ranking_value`` (``L_mask * L_rank / L_mask``, detached ratio, Eq. 17 applied to
      masks). A configured ``loss_mask.loss_weight`` other than 1 would have no effect and is rejected.

    Args:
        loss_mask (dict): Per-instance mask loss; must support ``reduction_override='none'`` on
            ``(N, H, W)`` logits. Defaults to ``DiceLoss(use_sigmoid=True, activate=True, naive_dice=False)``.
        value_matched_mask (bool): Rescale the mask loss to the ranking loss. Defaults to True; with False the
            configured ``loss_weight`` acts on the weighted average.
        **kwargs: Arguments of :class:`FCNMaskHead`.
    """

    def __init__(self,
                 *args,
                 loss_mask: ConfigType = dict(
                     type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=False, eps=DEFAULT_DICE_EPS,
                     loss_weight=1.0),
                 value_matched_mask: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, loss_mask=loss_mask, **kwargs)
        mask_weight = getattr(self.loss_mask, 'loss_weight', 1.0)
        if value_matched_mask and mask_weight != 1.0:
            raise ValueError(
                f'{type(self).__name__}: loss_mask.loss_weight={mask_weight} has no effect because the mask loss '
                f'is value-matched to the ranking loss; set it to 1.0 or set value_matched_mask=False')
        self.value_matched_mask = value_matched_mask

    def loss_and_target(self,
                        mask_preds: Tensor,
                        sampling_results: List[SamplingResult],
                        batch_gt_instances: InstanceList,
                        rcnn_train_cfg: ConfigType,
                        pos_weights: Optional[Tensor] = None,
                        ranking_value: Optional[Tensor] = None) -> dict:
        """Per-instance mask loss, weighted average, value matching.

        Args:
            mask_preds (Tensor): Mask logits (num_pos, num_classes or 1, h, w).
            sampling_results (list[SamplingResult]): Positives of each image (their count is ``num_pos``).
            batch_gt_instances (list[InstanceData]): Ground truth with ``masks``.
            rcnn_train_cfg (ConfigDict): ``train_cfg`` of the RoI head (``mask_size``).
            pos_weights (Tensor, optional): Weight of each positive (num_pos,); uniform when ``None``.
            ranking_value (Tensor, optional): Scalar value of the RoI head's ranking loss; required while
                ``value_matched_mask``.

        Returns:
            dict: ``loss_mask`` (a dict with the scalar ``loss_mask``) and ``mask_targets`` (num_pos, h, w).

        Raises:
            ValueError: value matching is on and no ``ranking_value`` is given, or ``pos_weights`` does not have
                one entry per positive.
        """
        if self.value_matched_mask and ranking_value is None:
            raise ValueError(f'{type(self).__name__}: the mask loss is value-matched to the ranking loss, but no '
                             'ranking_value was given; use it inside RankBasedStandardRoIHead')
        mask_targets = self.get_targets(sampling_results=sampling_results, batch_gt_instances=batch_gt_instances,
                                        rcnn_train_cfg=rcnn_train_cfg)
        num_pos = mask_preds.size(0)
        if pos_weights is not None and pos_weights.shape != (num_pos, ):
            raise ValueError(f'{type(self).__name__}: pos_weights has shape {tuple(pos_weights.shape)}, expected '
                             f'({num_pos},), one weight per positive')
        if num_pos == 0:
            return dict(loss_mask=dict(loss_mask=mask_preds.sum()), mask_targets=mask_targets)

        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        class_index = torch.zeros_like(pos_labels) if self.class_agnostic else pos_labels
        pos_logits = mask_preds[torch.arange(num_pos, device=mask_preds.device), class_index]
        per_instance = self.loss_mask(pos_logits, mask_targets, reduction_override='none')
        loss_mask = weighted_mean(per_instance, mask_preds.new_ones(num_pos) if pos_weights is None else pos_weights)
        if self.value_matched_mask:
            loss_mask = value_matched(loss_mask, ranking_value)
        return dict(loss_mask=dict(loss_mask=loss_mask), mask_targets=mask_targets)
