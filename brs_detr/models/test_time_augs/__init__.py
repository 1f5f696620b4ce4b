from .wbf_det_tta import WBFDetTTAModel, weighted_box_fusion

__all__ = ['WBFDetTTAModel', 'weighted_box_fusion']
