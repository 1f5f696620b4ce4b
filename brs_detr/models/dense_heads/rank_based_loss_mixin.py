"""Loss logic shared by the rank-based heads (BRS paper Sec. 6.1; RS loss, Oksuz et al., ICCV 2021)."""
from typing import Dict, Optional

from torch import Tensor

from mmdet.models.task_modules.samplers import PseudoSampler
from mmdet.structures.bbox import bbox_overlaps

from ..losses import RankingLoss, positive_score_weights, ranking_targets, value_matched, weighted_mean


class RankBasedLossMixin:
    """Classification and box losses of a rank-based head; mixed into mmdet heads.

    One ranking-loss call covers every valid prediction of the local batch, flattened one-vs-all
    (predictions x classes): the positive's own class column carries its target, everything else is a
    negative, invalid predictions (outside the image, ignored by the assigner) are ignored. Targets are
    the IoU of the *decoded predicted box* with its assigned ground truth for RS/BRS (Eq. 10-11) and 1 for
    AP/BAP. The box loss is computed per positive, weighted by the positive's detached maximum class
    probability (sigmoid), normalised by the sum of these weights, and rescaled to the value of the
    ranking loss (``loss_rank + loss_sort``, Eq. 17) unless ``value_matched_bbox=False``.

    Over several processes: with ``loss_cls.rank_across_processes`` the ranking loss is that of the global batch,
    and so are the box loss's normaliser (the sum of the weights) and its value-matching weight; the parameter
    update then equals that of one process with the whole batch. Without it each process ranks, normalises and
    value-matches its own batch, as the released heads do.

    The host class must provide ``self.loss_cls`` (a :class:`RankingLoss`), ``self.loss_bbox`` (an mmdet
    box loss accepting ``reduction_override='none'``) and ``self.num_classes``, and call
    :meth:`_init_rank_based_loss` at the end of its ``__init__``.
    """

    def _init_rank_based_loss(self, use_iou_targets: Optional[bool], value_matched_bbox: bool,
                              min_positive_target: float) -> None:
        """Check the configured losses and store the rank-based settings.

        Args:
            use_iou_targets (bool, optional): Positive targets are IoUs (True) or 1 (False). ``None`` infers it
                from the loss: IoU targets for losses with a sorting term (RS, BRS), 1 for AP/BAP.
            value_matched_bbox (bool): Rescale the box loss to the ranking loss value (Eq. 17).
            min_positive_target (float): Smallest IoU target of a positive; a positive whose predicted box
                misses its ground truth stays a positive (see :func:`ranking_targets`).

        Raises:
            TypeError: ``loss_cls`` is not a ranking loss.
            ValueError: ``loss_bbox.loss_weight`` is not 1 while value matching is on (it would have no effect), or
                a dense head was configured with a sampler other than ``PseudoSampler``.
        """
        name = type(self).__name__
        if not isinstance(self.loss_cls, RankingLoss):
            raise TypeError(
                f'{name}: loss_cls must be a ranking loss (RankSortLoss, BucketedRankSortLoss, APLoss, '
                f'BucketedAPLoss), got {type(self.loss_cls).__name__}. When overriding a base config that has '
                f"another classification loss, write loss_cls=dict(_delete_=True, type=...)")
        bbox_weight = getattr(self.loss_bbox, 'loss_weight', 1.0)
        if value_matched_bbox and bbox_weight != 1.0:
            raise ValueError(
                f'{name}: loss_bbox.loss_weight={bbox_weight} has no effect because the box loss is value-matched '
                f'to the ranking loss (BRS paper Eq. 17); set it to 1.0, scale the ranking loss with '
                f'loss_cls.loss_weight, or set value_matched_bbox=False')
        sampler = getattr(self, 'sampler', None)  # dense heads only; the RoI head's sampler lives in the RoI head
        if sampler is not None and not isinstance(sampler, PseudoSampler):
            raise ValueError(
                f'{name}: ranking losses use every prior (no sampling), got a {type(sampler).__name__}; set the '
                f"head's train_cfg sampler to dict(type='PseudoSampler') (with _delete_=True over a base config) or "
                f'remove it')
        if not 0 < min_positive_target <= 1:
            raise ValueError(f'{name}: min_positive_target must lie in (0, 1], got {min_positive_target}')
        self.use_iou_targets = self.loss_cls.with_sort if use_iou_targets is None else bool(use_iou_targets)
        #: The ranking loss ranks the global batch of all processes (``loss_cls.rank_across_processes``); the box
        #: losses are then normalised and value-matched over it too.
        self.rank_across_processes = self.loss_cls.rank_across_processes
        self.value_matched_bbox = value_matched_bbox
        self.min_positive_target = min_positive_target

    def rank_based_loss(self, cls_logits: Tensor, labels: Tensor, valid: Tensor, pos_decoded_preds: Tensor,
                        pos_gt_bboxes: Tensor, pos_loss_preds: Tensor,
                        pos_loss_targets: Tensor) -> Dict[str, Tensor]:
        """Ranking loss over all valid predictions and the weighted, value-matched box loss.

        Args:
            cls_logits (Tensor): Classification logits of every prediction of the batch, (K, C).
            labels (Tensor): Assigned class per prediction, (K,); ``C`` for background.
            valid (Tensor): Bool mask (K,) of predictions that take part in the ranking.
            pos_decoded_preds (Tensor): Decoded predicted boxes of the positives (in the order of
                ``labels < C``), (P, 4) xyxy; used for the IoU targets.
            pos_gt_bboxes (Tensor): Assigned ground-truth boxes of the positives, (P, 4) xyxy.
            pos_loss_preds (Tensor): What ``loss_bbox`` compares for each positive (decoded boxes or deltas),
                (P, D).
            pos_loss_targets (Tensor): Targets of ``loss_bbox``, (P, D).

        Returns:
            dict[str, Tensor]: ``loss_rank`` (and ``loss_sort`` for RS/BRS) and ``loss_bbox``, scalars.
        """
        num_classes = cls_logits.size(-1)
        pos_mask = (labels >= 0) & (labels < num_classes)
        if self.use_iou_targets:
            pos_ious = bbox_overlaps(pos_decoded_preds.detach(), pos_gt_bboxes, is_aligned=True)
        else:
            pos_ious = pos_decoded_preds.new_ones(pos_decoded_preds.size(0))
        ious = cls_logits.new_zeros(labels.size(0), dtype=pos_ious.dtype)
        ious[pos_mask] = pos_ious
        targets = ranking_targets(labels, ious, num_classes, valid=valid,
                                  min_positive_target=self.min_positive_target)
        losses = dict(self.loss_cls(cls_logits.reshape(-1), targets))

        box_loss = self.loss_bbox(pos_loss_preds, pos_loss_targets, reduction_override='none')
        if box_loss.dim() > 1:  # per-coordinate losses (L1): one value per positive
            box_loss = box_loss.sum(dim=-1)
        box_loss = weighted_mean(box_loss, positive_score_weights(cls_logits[pos_mask]),
                                 across_processes=self.rank_across_processes)
        if self.value_matched_bbox:
            box_loss = value_matched(box_loss, sum(losses.values()),
                                     across_processes=self.rank_across_processes)
        losses['loss_bbox'] = box_loss
        return losses
