"""Detectors of brs-detr."""
from .co_detr import CoDETR
from .co_detr_checkpoint import (convert_co_detr_state_dict,
                                 is_legacy_co_detr_state_dict)

__all__ = [
    'CoDETR', 'convert_co_detr_state_dict', 'is_legacy_co_detr_state_dict'
]
