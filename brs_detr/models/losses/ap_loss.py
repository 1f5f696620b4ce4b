"""Average Precision (AP) loss (Chen et al., CVPR 2019; BRS paper Eq. 3-4, 9)."""
from mmdet.registry import MODELS

from .ranking_loss import DEFAULT_BLOCK_ELEMENTS, RankingLoss


@MODELS.register_module()
class APLoss(RankingLoss):
    """AP loss: ``1 - AP`` with the identity update, targets binary (any target > 0 is a positive).

    By default the non-interpolated ranking error of Eq. 9 with ``H(0) = 1/2`` (a positive counts itself as one
    half when ``delta > 0``), so that :class:`BucketedAPLoss` equals it at ``delta = 0`` (Theorem 1).
    ``interpolated=True`` reproduces the AP loss released with the aLRP/RS code instead: precision is
    interpolated (running maximum over lower-ranked positives) and a positive counts itself as 1.

    Args:
        delta (float): Smoothing of the step function (Eq. 2). Default 1.0.
        loss_weight (float): Multiplier of ``loss_rank``. Default 1.0.
        method (str): ``'exact'`` (prefix sums, ``O(N log P)``, default) or ``'pairwise'`` (``O(P N)``).
        interpolated (bool): Interpolated precision as in the released AP loss. Default False.
        block_elements (int): Pairwise elements held at once by blocked parts.
        rank_across_processes (bool): Rank the global batch of all processes (see :class:`RankingLoss`).
            Default False (each process ranks its own batch, as in the paper).

    Returns from ``forward``: ``{'loss_rank': Tensor}``.
    """
    loss_name = 'APLoss'

    def __init__(self, delta: float = 1.0, loss_weight: float = 1.0, method: str = 'exact',
                 interpolated: bool = False, block_elements: int = DEFAULT_BLOCK_ELEMENTS, rank_across_processes: bool = False) -> None:
        if method == 'bucketed':
            raise ValueError("APLoss: method='bucketed' is BucketedAPLoss; use method 'exact' or 'pairwise'")
        super().__init__(delta=delta, loss_weight=loss_weight, method=method, interpolated=interpolated,
                         block_elements=block_elements,
                         rank_across_processes=rank_across_processes)
