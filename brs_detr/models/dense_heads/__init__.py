"""Dense heads of brs-detr (Co-Deformable-DETR query head and auxiliary heads, rank-based heads)."""
from .brs_deformable_detr_head import RankBasedCoDeformableDETRHead
from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformableDETRHead
from .co_positive_coords import PositiveCoords
from .co_rank_based_atss_head import CoRankBasedATSSHead
from .rank_based_atss_head import RankBasedATSSHead
from .rank_based_loss_mixin import RankBasedLossMixin
from .rank_based_paa_head import RankBasedPAAHead
from .rank_based_rpn_head import RankBasedRPNHead

__all__ = [
    'CoATSSHead', 'CoDeformableDETRHead', 'PositiveCoords', 'RankBasedATSSHead', 'RankBasedLossMixin',
    'RankBasedPAAHead', 'RankBasedRPNHead', 'CoRankBasedATSSHead', 'RankBasedCoDeformableDETRHead'
]
