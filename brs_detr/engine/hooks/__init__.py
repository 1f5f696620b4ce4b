from .checkpoint_hook import CrashSafeCheckpointHook
from .non_finite_loss_hook import NonFiniteError, NonFiniteLossHook

__all__ = ['CrashSafeCheckpointHook', 'NonFiniteError', 'NonFiniteLossHook']
