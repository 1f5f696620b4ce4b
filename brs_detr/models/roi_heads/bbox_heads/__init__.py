"""RoI box heads of brs-detr."""
from .rank_based_bbox_head import RankBasedConvFCBBoxHead, RankBasedShared2FCBBoxHead

__all__ = ['RankBasedConvFCBBoxHead', 'RankBasedShared2FCBBoxHead']
