"""Bucketed Rank & Sort (BRS) loss (BRS paper Sec. 4)."""
from mmdet.registry import MODELS

from .ranking_loss import DEFAULT_BLOCK_ELEMENTS, RankingLoss


@MODELS.register_module()
class BucketedRankSortLoss(RankingLoss):
    """Bucketed Rank & Sort loss.

    What changes with respect to :class:`RankSortLoss`: the negatives between two consecutive positives (in
    logit order) form a bucket (Eq. 12) represented by its mean logit and weighted by its size; ``N_FP`` and the
    negatives' gradients are computed on the ``|P| + 1`` prototypes (Eq. 13-14) and each member receives its
    bucket's per-example gradient. As in the published BRS, negatives that cannot be ranked above any positive
    (``s < min(positive logits) - delta``) are removed before bucketing, so they do not pull the lowest bucket's
    prototype down. The sorting error among positives is unchanged. Identical to RS at
    ``delta = 0`` (Theorem 1). Buckets are found by inserting each relevant negative among the sorted positive
    logits (``O(N log P)``), never by sorting all logits.

    Args:
        delta (float): Smoothing of the step function (Eq. 2). Default 0.5.
        loss_weight (float): Multiplier of ``loss_rank`` and ``loss_sort``. Default 1.0.
        block_elements (int): Pairwise elements held at once by the positive-pair (sorting) blocks.
        rank_across_processes (bool): Rank the global batch of all processes (see :class:`RankingLoss`).
            Default False (each process ranks its own batch, as in the paper).

    Returns from ``forward``: ``{'loss_rank': Tensor, 'loss_sort': Tensor}``.
    """
    loss_name = 'BucketedRankSortLoss'

    def __init__(self, delta: float = 0.5, loss_weight: float = 1.0,
                 block_elements: int = DEFAULT_BLOCK_ELEMENTS, rank_across_processes: bool = False) -> None:
        super().__init__(delta=delta, loss_weight=loss_weight, method='bucketed', with_sort=True,
                         block_elements=block_elements,
                         rank_across_processes=rank_across_processes)
