"""RoI heads of brs-detr."""
from .bbox_heads import RankBasedConvFCBBoxHead, RankBasedShared2FCBBoxHead
from .co_standard_roi_head import CoStandardRoIHead

__all__ = ['CoStandardRoIHead', 'RankBasedConvFCBBoxHead', 'RankBasedShared2FCBBoxHead']
