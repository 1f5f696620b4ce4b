"""Backbones of brs-detr. Importing this package does not import timm (see :mod:`.timm_backbone`)."""
from .timm_backbone import (TimmBackbone, TimmUnavailableError, load_timm_state_dict, timm_feature_info,
                            timm_weights_url)

__all__ = ['TimmBackbone', 'TimmUnavailableError', 'load_timm_state_dict', 'timm_feature_info', 'timm_weights_url']
