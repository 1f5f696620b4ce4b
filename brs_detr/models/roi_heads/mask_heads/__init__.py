"""RoI mask heads of brs-detr."""
from .rank_based_fcn_mask_head import RankBasedFCNMaskHead

__all__ = ['RankBasedFCNMaskHead']
