"""Transformer layers of brs-detr."""
from .co_deformable_detr_decoder import CoDeformableDetrTransformerDecoder

__all__ = ['CoDeformableDetrTransformerDecoder']
