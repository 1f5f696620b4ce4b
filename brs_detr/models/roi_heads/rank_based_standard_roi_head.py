"""RoI head of the rank-based Mask R-CNN baselines: hands the ranking loss and box weights to the mask head."""
import copy
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import InstanceList

from ..losses import positive_score_weights
from .mask_heads import RankBasedFCNMaskHead

#: Largest number of positives whose masks enter the mask loss per batch (as released: a random subset beyond).
DEFAULT_MAX_MASKS_PER_BATCH = 200
_RANKING_LOSS_KEYS = ('loss_rank', 'loss_sort')


@MODELS.register_module()
class RankBasedStandardRoIHead(StandardRoIHead):
    """:class:`StandardRoIHead` whose mask loss is weighted and value-matched like the rank-based box loss.

    What changes with respect to :class:`StandardRoIHead` and why (RS-Loss / BRS paper Sec. 6.1, Mask R-CNN):

    * :meth:`bbox_loss` also records the value of the box head's ranking loss (``loss_rank + loss_sort``,
      detached) and each positive RoI's weight (its detached maximum class probability, as the rank-based box
      head weights its box loss); :meth:`mask_loss` hands both to :class:`RankBasedFCNMaskHead`, which value-
      matches the mask loss to the ranking loss. mmdet's ``loss`` calls ``bbox_loss`` and then ``mask_loss`` on
      the same sampling results, so the record lives only between those two calls.
    * The rank-based box head keeps every proposal (no sampler), so the number of positives is unbounded: at most
      ``max_masks_per_batch`` of them (a random subset, drawn with torch's global generator) enter the mask
      branch.

    Args:
        max_masks_per_batch (int): Cap on the positives of the batch whose masks are predicted in training.
            Defaults to 200.
        **kwargs: Arguments of :class:`StandardRoIHead`; ``mask_head`` must be a :class:`RankBasedFCNMaskHead`.
    """

    def __init__(self, *args, max_masks_per_batch: int = DEFAULT_MAX_MASKS_PER_BATCH, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if max_masks_per_batch < 1:
            raise ValueError(f'{type(self).__name__}: max_masks_per_batch must be >= 1, got {max_masks_per_batch}')
        if self.with_mask and not isinstance(self.mask_head, RankBasedFCNMaskHead):
            raise TypeError(f'{type(self).__name__}: mask_head must be a RankBasedFCNMaskHead (it takes the ranking '
                            f'loss and the box weights), got {type(self.mask_head).__name__}')
        self.max_masks_per_batch = max_masks_per_batch
        self._ranking_record: Optional[Tuple[Tensor, Tensor, Tensor]] = None

    def bbox_loss(self, x: Tuple[Tensor], sampling_results: List[SamplingResult]) -> dict:
        """:meth:`StandardRoIHead.bbox_loss`, plus the record the mask loss needs (see the class docstring)."""
        bbox_results = super().bbox_loss(x, sampling_results)
        losses = bbox_results['loss_bbox']
        if _RANKING_LOSS_KEYS[0] not in losses:
            raise KeyError(f'{type(self).__name__}: the box head returned {sorted(losses)}, without '
                           f'{_RANKING_LOSS_KEYS[0]!r}; use a rank-based box head (e.g. RankBasedShared2FCBBoxHead)')
        ranking_value = sum(losses[key].detach() for key in _RANKING_LOSS_KEYS if key in losses)
        is_pos_row = self._positive_rows(sampling_results, bbox_results['cls_score'].device)
        pos_weights = positive_score_weights(bbox_results['cls_score'][is_pos_row])
        self._ranking_record = (ranking_value, pos_weights, is_pos_row)
        return bbox_results

    def mask_loss(self, x: Tuple[Tensor], sampling_results: List[SamplingResult], bbox_feats: Tensor,
                  batch_gt_instances: InstanceList) -> dict:
        """Mask loss of at most ``max_masks_per_batch`` positives, weighted and value-matched.

        Args:
            x (tuple[Tensor]): Multi-level features.
            sampling_results (list[SamplingResult]): Sampling results of the batch (as for :meth:`bbox_loss`).
            bbox_feats (Tensor): RoI features of the box branch (read when the extractor is shared).
            batch_gt_instances (list[InstanceData]): Ground truth with ``masks``.

        Returns:
            dict: ``mask_preds``, ``mask_targets`` and ``loss_mask`` (dict), as :meth:`StandardRoIHead.mask_loss`.
        """
        if self._ranking_record is None:
            raise RuntimeError(f'{type(self).__name__}.mask_loss needs the ranking loss of bbox_loss on the same '
                               'batch (with_bbox must be True)')
        ranking_value, pos_weights, is_pos_row = self._ranking_record
        self._ranking_record = None
        num_pos = pos_weights.numel()
        if num_pos > self.max_masks_per_batch:
            keep = torch.randperm(num_pos, device=pos_weights.device)[:self.max_masks_per_batch].sort().values
            sampling_results = self._keep_positives(sampling_results, keep)
            pos_weights = pos_weights[keep]
            pos_rows = is_pos_row.nonzero().squeeze(1)[keep]
            is_pos_row = torch.zeros_like(is_pos_row)
            is_pos_row[pos_rows] = True

        if self.share_roi_extractor:
            mask_results = self._mask_forward(x, pos_inds=is_pos_row, bbox_feats=bbox_feats)
        else:
            mask_results = self._mask_forward(x, bbox2roi([res.pos_priors for res in sampling_results]))
        loss_and_target = self.mask_head.loss_and_target(
            mask_preds=mask_results['mask_preds'], sampling_results=sampling_results,
            batch_gt_instances=batch_gt_instances, rcnn_train_cfg=self.train_cfg, pos_weights=pos_weights,
            ranking_value=ranking_value)
        mask_results.update(loss_mask=loss_and_target['loss_mask'], mask_targets=loss_and_target['mask_targets'])
        return mask_results

    @staticmethod
    def _positive_rows(sampling_results: List[SamplingResult], device: torch.device) -> Tensor:
        """Bool (num_rois,) marking the positive RoIs in ``bbox2roi`` order (per image: positives, then negatives)."""
        flags = []
        for res in sampling_results:
            flags.append(torch.ones(res.pos_priors.size(0), dtype=torch.bool, device=device))
            flags.append(torch.zeros(res.neg_priors.size(0), dtype=torch.bool, device=device))
        return torch.cat(flags)

    @staticmethod
    def _keep_positives(sampling_results: List[SamplingResult], keep: Tensor) -> List[SamplingResult]:
        """Copies of the sampling results holding only the positives ``keep`` (indices into all positives)."""
        kept = []
        start = 0
        for res in sampling_results:
            count = res.pos_priors.size(0)
            local = keep[(keep >= start) & (keep < start + count)] - start
            start += count
            subset = copy.copy(res)
            for name in ('pos_inds', 'pos_priors', 'pos_is_gt', 'pos_assigned_gt_inds', 'pos_gt_labels',
                         'pos_gt_bboxes'):
                setattr(subset, name, getattr(res, name)[local])
            kept.append(subset)
        return kept
