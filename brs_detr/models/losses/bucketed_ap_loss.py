"""Bucketed AP (BAP) loss (BRS paper Sec. 4.2, Eq. 13-14)."""
from mmdet.registry import MODELS

from .ranking_loss import DEFAULT_BLOCK_ELEMENTS, RankingLoss


@MODELS.register_module()
class BucketedAPLoss(RankingLoss):
    """Bucketed AP loss: the non-interpolated AP loss of Eq. 9 computed on bucket prototypes (Eq. 13-14).

    What changes with respect to :class:`APLoss`: negatives between consecutive positives are merged into
    buckets represented by their mean logit; equal to :class:`APLoss` at ``delta = 0`` (Theorem 1).

    Args:
        delta (float): Smoothing of the step function (Eq. 2). Default 1.0.
        loss_weight (float): Multiplier of ``loss_rank``. Default 1.0.
        block_elements (int): Unused by the ranking part; kept for a uniform interface.
        rank_across_processes (bool): Rank the global batch of all processes (see :class:`RankingLoss`).
            Default False (each process ranks its own batch, as in the paper).

    Returns from ``forward``: ``{'loss_rank': Tensor}``.
    """
    loss_name = 'BucketedAPLoss'

    def __init__(self, delta: float = 1.0, loss_weight: float = 1.0,
                 block_elements: int = DEFAULT_BLOCK_ELEMENTS, rank_across_processes: bool = False) -> None:
        super().__init__(delta=delta, loss_weight=loss_weight, method='bucketed', block_elements=block_elements,
                         rank_across_processes=rank_across_processes)
