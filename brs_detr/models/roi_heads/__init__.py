"""RoI heads of brs-detr."""
from .co_standard_roi_head import CoStandardRoIHead

__all__ = ['CoStandardRoIHead']
