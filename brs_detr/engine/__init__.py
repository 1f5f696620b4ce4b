"""Training runtime: crash-safe checkpoints, exactly resumable loops, the non-finite loss guard, process groups.

Importing :mod:`brs_detr.engine.hooks` and :mod:`brs_detr.engine.runner` registers
:class:`~brs_detr.engine.hooks.CrashSafeCheckpointHook`, :class:`~brs_detr.engine.hooks.NonFiniteLossHook`,
:class:`~brs_detr.engine.runner.ResumableEpochBasedTrainLoop` and :class:`~brs_detr.engine.runner.ReliableRunner`
in mmdet's registries (:func:`brs_detr.register_all_modules` does). The names below are imported on first access.
"""
from brs_detr.lazy_import import lazy_exports

_EXPORTS = {
    '.hooks': ['CrashSafeCheckpointHook', 'NonFiniteError', 'NonFiniteLossHook'],
    '.runner': ['CheckpointFitError', 'ReliableRunner', 'ReliableTestRunner', 'ResumableEpochBasedTrainLoop',
                'find_resumable_checkpoint'],
    '.work_dir': ['WorkDirError', 'WorkDirOwnership'],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
