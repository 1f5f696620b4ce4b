"""Transformer layers of brs-detr."""
from .co_deformable_detr_decoder import CoDeformableDetrTransformerDecoder
from .co_deformable_detr_encoder import CoDeformableDetrTransformerEncoder

__all__ = ['CoDeformableDetrTransformerDecoder', 'CoDeformableDetrTransformerEncoder']
