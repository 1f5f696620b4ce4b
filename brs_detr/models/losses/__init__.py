from .ap_loss import APLoss
from .bucketed_ap_loss import BucketedAPLoss
from .bucketed_rank_sort_loss import BucketedRankSortLoss
from .cross_process import set_rank_across_processes
from .rank_sort_loss import RankSortLoss
from .ranking_loss import RankingLoss
from .value_matching import (BOX_WEIGHT_EPS, positive_score_weights, ranking_targets, value_matched,
                             value_matched_weight, weighted_mean)

__all__ = [
    'RankingLoss', 'RankSortLoss', 'BucketedRankSortLoss', 'APLoss', 'BucketedAPLoss', 'value_matched',
    'value_matched_weight', 'ranking_targets', 'positive_score_weights', 'weighted_mean', 'BOX_WEIGHT_EPS',
    'set_rank_across_processes'
]
