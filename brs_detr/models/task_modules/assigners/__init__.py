from .float32_hungarian_assigner import Float32HungarianAssigner, NonFiniteMatchingCost

__all__ = ['Float32HungarianAssigner', 'NonFiniteMatchingCost']
