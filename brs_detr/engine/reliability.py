"""The components ``tools/train.py`` and ``tools/test.py`` put into every config for safe, resumable training."""
from __future__ import annotations

from typing import Optional

from mmengine.config import Config, ConfigDict

from .hooks.non_finite_loss_hook import ACTIONS

#: mmengine/mmdet component -> the brs-detr subclass that replaces it (same arguments).
REPLACEMENTS = {
    'CheckpointHook': 'CrashSafeCheckpointHook',
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
    'DetVisualizationHook': 'StoredPixelsVisualizationHook',
}
NON_FINITE_LOSS_HOOK = 'NonFiniteLossHook'


def _type_name(cfg: Optional[dict]) -> Optional[str]:
    component = cfg.get('type') if isinstance(cfg, dict) else None
    name = component if isinstance(component, str) else getattr(component, '__name__', None)
    return name.split('.')[-1] if name else None


def _replace_type(cfg: Optional[dict]) -> None:
    name = _type_name(cfg)
    if name in REPLACEMENTS:
        cfg['type'] = REPLACEMENTS[name]


def use_resumable_training(cfg: Config) -> None:
    """Crash-safe checkpoints and an exactly resumable epoch loop, where the config uses mmengine's defaults.

    ``default_hooks.checkpoint`` ``CheckpointHook`` -> :class:`~brs_detr.engine.hooks.CrashSafeCheckpointHook`;
    ``train_cfg`` ``EpochBasedTrainLoop`` (or ``by_epoch=True``) ->
    :class:`~brs_detr.engine.runner.ResumableEpochBasedTrainLoop`; ``default_hooks.visualization``
    ``DetVisualizationHook`` -> :class:`~brs_detr.engine.hooks.StoredPixelsVisualizationHook` (draws on the pixels the
    model saw, one file per image). Components of other types are left alone.
    """
    _replace_type(cfg.get('default_hooks', {}).get('checkpoint'))
    draw_stored_pixels(cfg)
    train_cfg = cfg.get('train_cfg')
    if isinstance(train_cfg, dict) and 'type' not in train_cfg and train_cfg.get('by_epoch', False):
        train_cfg.pop('by_epoch')
        train_cfg['type'] = 'EpochBasedTrainLoop'
    _replace_type(train_cfg)


def draw_stored_pixels(cfg: Config) -> None:
    """``default_hooks.visualization`` ``DetVisualizationHook`` ->
    :class:`~brs_detr.engine.hooks.StoredPixelsVisualizationHook` (same arguments; other types are left alone)."""
    _replace_type(cfg.get('default_hooks', {}).get('visualization'))


def guard_non_finite_loss(cfg: Config, action: Optional[str] = None,
                          max_consecutive_skips: Optional[int] = None) -> ConfigDict:
    """Make sure ``custom_hooks`` has a :class:`~brs_detr.engine.hooks.NonFiniteLossHook`; return its config.

    ``action``/``max_consecutive_skips`` override the config's values when given (the hook's defaults otherwise).
    """
    if action is not None and action not in ACTIONS:
        raise ValueError(f'non-finite loss action must be one of {ACTIONS}, got {action!r}')
    hooks = list(cfg.get('custom_hooks') or [])
    hook = next((h for h in hooks if _type_name(h) == NON_FINITE_LOSS_HOOK), None)
    if hook is None:
        hook = ConfigDict(type=NON_FINITE_LOSS_HOOK)
        hooks.append(hook)
    if action is not None:
        hook['action'] = action
    if max_consecutive_skips is not None:
        hook['max_consecutive_skips'] = max_consecutive_skips
    cfg.custom_hooks = hooks
    return hook
