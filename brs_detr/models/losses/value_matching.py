"""Value-matched ("dynamic") weighting of box losses (BRS paper Eq. 17, following RS loss)."""
from typing import Optional

import torch
from torch import Tensor

from mmdet.utils import reduce_mean

#: Floor of a box loss in the weight's denominator.
DEFAULT_EPS = 1e-12
#: Floor of the sum of the per-positive box-loss weights (all positives scored exactly 0 cannot happen with a
#: sigmoid, but an fp16 underflow can).
BOX_WEIGHT_EPS = 1e-10


def positive_score_weights(cls_logits: Tensor) -> Tensor:
    """Weight of each positive's box (or mask) loss: its detached maximum class probability (RS loss).

    Args:
        cls_logits (Tensor): Sigmoid logits of the positives, (P, C).

    Returns:
        Tensor: (P,), detached.
    """
    return cls_logits.detach().sigmoid().max(dim=-1).values


def weighted_mean(values: Tensor, weights: Tensor, eps: float = BOX_WEIGHT_EPS,
                  across_processes: bool = False) -> Tensor:
    """``sum(w * v) / max(sum(w), eps)`` of per-positive losses ``values`` (P,); 0 (in the graph) when P = 0.

    With ``across_processes`` the denominator is the mean over processes of ``sum(w)`` (mmdet's ``reduce_mean`` of
    a normaliser): averaged over processes, as DDP averages gradients, the loss and its gradient are those of the
    weighted mean over the global batch. Every process must then call it (a collective).
    """
    weights = weights.to(values.dtype)
    total = weights.sum()
    if across_processes:
        total = reduce_mean(total)
    return (weights * values).sum() / total.clamp_min(eps)


def value_matched_weight(reference_loss: Tensor, box_loss: Tensor, eps: float = DEFAULT_EPS,
                         across_processes: bool = False) -> Tensor:
    """Weight that rescales ``box_loss`` to the value of ``reference_loss``: ``L_ref / L_box`` (both detached).

    ``lambda_bbox = L_BRS / L_bbox`` and ``lambda_IoU = L_BRS / L_IoU`` in Eq. 17: the weights carry no
    gradient, so the box loss keeps its own gradient direction while its magnitude follows the ranking loss.
    Returned as a tensor (no ``.item()``, no host sync).

    Args:
        reference_loss (Tensor): The ranking loss (or any scalar) to match, shape ().
        box_loss (Tensor): The box loss to be rescaled, shape ().
        eps (float): Floor of the denominator; a zero box loss gives a finite weight.
        across_processes (bool): Divide by the mean of ``box_loss`` over processes (a collective): for a
            ``reference_loss`` of the global batch (a ranking loss with ``rank_across_processes``) and a box loss
            normalised over processes (:func:`weighted_mean` with ``across_processes``), the weight is then the
            ratio of the global batch's losses, the same on every process.

    Returns:
        Tensor: The weight, shape (), detached.
    """
    box_value = box_loss.detach()
    if across_processes:
        box_value = reduce_mean(box_value)
    return reference_loss.detach() / box_value.clamp_min(eps)


def value_matched(box_loss: Tensor, reference_loss: Tensor, eps: float = DEFAULT_EPS,
                  across_processes: bool = False) -> Tensor:
    """``box_loss`` multiplied by :func:`value_matched_weight`, so its value equals ``reference_loss`` (averaged
    over processes with ``across_processes``)."""
    return box_loss * value_matched_weight(reference_loss, box_loss, eps, across_processes)


def ranking_targets(labels: Tensor, ious: Tensor, num_classes: int, valid: Optional[Tensor] = None,
                    min_positive_target: float = 1e-6) -> Tensor:
    """One-vs-all targets of a ranking loss for a set of predictions.

    The positive's own class column carries its IoU (clamped to ``min_positive_target`` so that a positive whose
    box does not overlap its ground truth stays a positive instead of silently turning into a negative), every
    other column and every background prediction is a negative, and invalid predictions are ignored (-1).

    Args:
        labels (Tensor): Class per prediction (K,), ``num_classes`` for background.
        ious (Tensor): IoU of each prediction with its assigned ground truth (K,); only positives are read. Pass
            ones for AP-type losses.
        num_classes (int): Number of foreground classes ``C``.
        valid (Tensor, optional): Bool mask (K,) of predictions that take part; others are ignored.
        min_positive_target (float): Smallest target of a positive.

    Returns:
        Tensor: Targets of shape (K * C,) in the order of ``logits.reshape(-1)`` for logits of shape (K, C).
    """
    num = labels.numel()
    targets = ious.new_zeros(num, num_classes)
    pos = (labels >= 0) & (labels < num_classes)
    rows = torch.arange(num, device=labels.device)
    pos_target = ious.detach().clamp(min=min_positive_target, max=1.0)
    targets[rows[pos], labels[pos]] = pos_target[pos]
    if valid is not None:
        targets[~valid] = -1
    return targets.reshape(-1)
