"""Hungarian matching whose costs are computed in float32, with a clear error for a non-finite cost."""
from typing import Optional

import torch
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mmdet.models.task_modules.assigners import AssignResult, HungarianAssigner
from mmdet.registry import TASK_UTILS

#: Floating dtypes narrower than float32 (those of mixed precision).
HALF_DTYPES = (torch.float16, torch.bfloat16)


class NonFiniteMatchingCost(FloatingPointError):
    """A matching cost has NaN or Inf entries (scipy's ``linear_sum_assignment`` would fail on them)."""


def _as_float32(instances: InstanceData) -> InstanceData:
    """A shallow copy of ``instances`` whose half-precision float fields are float32 (others unchanged)."""
    out = instances.new()
    for key, value in instances.items():
        if isinstance(value, Tensor) and value.dtype in HALF_DTYPES:
            value = value.float()
        out[key] = value
    return out


def _count_non_finite(value) -> int:
    return int((~torch.isfinite(value)).sum()) if isinstance(value, Tensor) and value.is_floating_point() else 0


def _check_finite(name: str, cost: Tensor, pred_instances: InstanceData, img_meta: Optional[dict]) -> None:
    """Raise :class:`NonFiniteMatchingCost` naming the cost, the image and the non-finite predictions."""
    bad = _count_non_finite(cost)
    if not bad:
        return
    meta = img_meta or {}
    image = meta.get('img_path', meta.get('img_id', 'unknown'))
    inputs = ', '.join(f'{label} {_count_non_finite(data)} of {data.numel()}'
                       for label, data in (('scores', pred_instances.get('scores')),
                                           ('boxes', pred_instances.get('bboxes')))
                       if isinstance(data, Tensor))
    raise NonFiniteMatchingCost(
        f'{name} of the Hungarian matching has {bad} NaN/Inf entries in its {tuple(cost.shape)} cost matrix '
        f'(image {image}); NaN/Inf predictions: {inputs}. The model has diverged (or produced NaN): lower the '
        'learning rate or check the data')


@TASK_UTILS.register_module()
class Float32HungarianAssigner(HungarianAssigner):
    """:class:`HungarianAssigner` that computes its match costs in float32 and refuses non-finite costs clearly.

    What changes and why (``assign`` is overridden; the costs, their sum and the matching are those of
    :class:`HungarianAssigner`): under mixed precision (``--amp``) a DETR head's scores and boxes are float16, and
    so is every cost mmdet's assigner computes from them. ``FocalLossCost`` adds ``eps=1e-12`` (0 in float16) inside its
    logarithms, so a confident prediction (logit above about 7.6, sigmoid 1.0 in float16) gets ``-inf`` and a very
    unconfident one ``+inf``; scipy's ``linear_sum_assignment`` then fails with "matrix contains invalid numeric
    entries" (mmdetection issue #11416), and a float16 cost matrix also rounds costs so that the matching differs
    from float32. Here the predictions (and any half-precision ground truth) are cast to float32 and the costs are
    computed with autocast off, which gives exactly the float32 matching; a cost that is still non-finite (NaN
    predictions of a diverged model) raises :class:`NonFiniteMatchingCost` naming the cost, the image and how many
    predictions are NaN/Inf, instead of scipy's ``ValueError``. Float32 and float64 inputs are matched unchanged.

    Args:
        match_costs (dict | list[dict]): Match cost configs, as for :class:`HungarianAssigner`.
    """

    def assign(self, pred_instances: InstanceData, gt_instances: InstanceData, img_meta: Optional[dict] = None,
               **kwargs) -> AssignResult:
        """One-to-one matching of predictions and ground truth on float32 costs.

        Args:
            pred_instances (InstanceData): ``scores`` (num_preds, num_classes) logits and ``bboxes``
                (num_preds, 4) absolute xyxy, of any float dtype.
            gt_instances (InstanceData): ``bboxes`` (num_gts, 4) and ``labels`` (num_gts,).
            img_meta (dict, optional): ``img_shape`` (and ``img_path`` for error messages).

        Returns:
            AssignResult: ``gt_inds`` (num_preds,): 0 unmatched, ``i + 1`` matched to gt ``i``; ``labels``.

        Raises:
            NonFiniteMatchingCost: A match cost has NaN or Inf entries.
        """
        pred_instances, gt_instances = _as_float32(pred_instances), _as_float32(gt_instances)
        num_gts, num_preds = len(gt_instances), len(pred_instances)
        if num_gts == 0 or num_preds == 0:
            return super().assign(pred_instances, gt_instances, img_meta, **kwargs)
        with torch.autocast(device_type=gt_instances.labels.device.type, enabled=False):
            costs = []
            for match_cost in self.match_costs:
                cost = match_cost(pred_instances=pred_instances, gt_instances=gt_instances, img_meta=img_meta)
                _check_finite(type(match_cost).__name__, cost, pred_instances, img_meta)
                costs.append(cost)
            total = torch.stack(costs).sum(dim=0)  # as HungarianAssigner sums them
        _check_finite('The sum of the match costs', total, pred_instances, img_meta)
        rows, cols = linear_sum_assignment(total.detach().cpu().numpy())
        device = gt_instances.labels.device
        rows, cols = torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)
        gt_inds = torch.zeros(num_preds, dtype=torch.long, device=device)
        gt_inds[rows] = cols + 1
        labels = torch.full((num_preds, ), -1, dtype=torch.long, device=device)
        labels[rows] = gt_instances.labels[cols]
        return AssignResult(num_gts=num_gts, gt_inds=gt_inds, max_overlaps=None, labels=labels)
