from .ap_loss import APLoss
from .bucketed_ap_loss import BucketedAPLoss
from .bucketed_rank_sort_loss import BucketedRankSortLoss
from .rank_sort_loss import RankSortLoss
from .ranking_loss import RankingLoss
from .value_matching import ranking_targets, value_matched, value_matched_weight

__all__ = [
    'RankingLoss', 'RankSortLoss', 'BucketedRankSortLoss', 'APLoss', 'BucketedAPLoss', 'value_matched',
    'value_matched_weight', 'ranking_targets'
]
