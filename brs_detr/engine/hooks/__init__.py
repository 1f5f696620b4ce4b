from .checkpoint_hook import CrashSafeCheckpointHook
from .non_finite_loss_hook import NonFiniteError, NonFiniteLossHook
from .visualization_hook import StoredPixelsVisualizationHook

__all__ = ['CrashSafeCheckpointHook', 'NonFiniteError', 'NonFiniteLossHook', 'StoredPixelsVisualizationHook']
