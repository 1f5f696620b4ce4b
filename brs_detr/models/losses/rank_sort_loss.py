"""Rank & Sort (RS) loss, exact (Oksuz et al., ICCV 2021; BRS paper Eq. 10-11)."""
from mmdet.registry import MODELS

from .ranking_loss import DEFAULT_BLOCK_ELEMENTS, RankingLoss


@MODELS.register_module()
class RankSortLoss(RankingLoss):
    """Rank & Sort loss: ranking error (positives above negatives) plus sorting error (positives ordered by IoU).

    Unbucketed, so every negative keeps its own logit. ``method='exact'`` (default) computes the exact loss and
    gradients from prefix sums in ``O(N log P)``; ``method='pairwise'`` evaluates the same quantities pair by pair
    in bounded blocks, ``O(P N)``, the cost of the published implementation (use it to reproduce the paper's
    RS timings).

    Args:
        delta (float): Smoothing of the step function (Eq. 2). Default 0.5.
        loss_weight (float): Multiplier of ``loss_rank`` and ``loss_sort``. Default 1.0.
        method (str): ``'exact'`` or ``'pairwise'``. Default ``'exact'``.
        block_elements (int): Pairwise elements held at once by blocked parts.
        rank_across_processes (bool): Rank the global batch of all processes (see :class:`RankingLoss`).
            Default False (each process ranks its own batch, as in the paper).

    Returns from ``forward``: ``{'loss_rank': Tensor, 'loss_sort': Tensor}``.
    """
    loss_name = 'RankSortLoss'

    def __init__(self, delta: float = 0.5, loss_weight: float = 1.0, method: str = 'exact',
                 block_elements: int = DEFAULT_BLOCK_ELEMENTS, rank_across_processes: bool = False) -> None:
        if method == 'bucketed':
            raise ValueError("RankSortLoss: method='bucketed' is BucketedRankSortLoss; "
                             "use method 'exact' or 'pairwise'")
        super().__init__(delta=delta, loss_weight=loss_weight, method=method, with_sort=True,
                         block_elements=block_elements,
                         rank_across_processes=rank_across_processes)
