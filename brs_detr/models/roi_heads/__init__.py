"""RoI heads of brs-detr."""
from .bbox_heads import RankBasedConvFCBBoxHead, RankBasedShared2FCBBoxHead
from .co_standard_roi_head import CoStandardRoIHead
from .mask_heads import RankBasedFCNMaskHead
from .rank_based_standard_roi_head import RankBasedStandardRoIHead

__all__ = ['CoStandardRoIHead', 'RankBasedConvFCBBoxHead', 'RankBasedFCNMaskHead', 'RankBasedShared2FCBBoxHead',
           'RankBasedStandardRoIHead']
