"""Training runtime: crash-safe checkpoints, exactly resumable loops, the non-finite loss guard, process groups.

Importing it registers :class:`~brs_detr.engine.hooks.CrashSafeCheckpointHook`,
:class:`~brs_detr.engine.hooks.NonFiniteLossHook`, :class:`~brs_detr.engine.runner.ResumableEpochBasedTrainLoop`
and :class:`~brs_detr.engine.runner.ReliableRunner` in mmdet's registries.
"""
from .hooks import CrashSafeCheckpointHook, NonFiniteError, NonFiniteLossHook
from .runner import CheckpointFitError, ReliableRunner, ResumableEpochBasedTrainLoop, find_resumable_checkpoint

__all__ = [
    'CrashSafeCheckpointHook', 'NonFiniteError', 'NonFiniteLossHook', 'CheckpointFitError', 'ReliableRunner',
    'ResumableEpochBasedTrainLoop', 'find_resumable_checkpoint'
]
