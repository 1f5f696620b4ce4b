"""Dense heads of brs-detr (Co-Deformable-DETR query head and auxiliary heads)."""
from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformableDETRHead
from .co_positive_coords import PositiveCoords

__all__ = ['CoATSSHead', 'CoDeformableDETRHead', 'PositiveCoords']
