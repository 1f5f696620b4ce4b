"""What changed between the config a checkpoint was saved with and the config of the run resuming from it.

mmengine stores the Runner's whole config in every checkpoint (``meta['cfg']``) and resumes from a checkpoint of
any config whose model fits: a work_dir reused for another experiment (``--work-dir X --resume`` with another
config) continues that experiment's optimizer, schedule and epoch counter under the new settings without a word.
Changing settings on purpose when resuming (more epochs) is common, so the ReliableRunner logs the changed keys as a
warning instead of refusing them.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

from mmengine.config import Config

#: Keys that differ between a run and its resumption by design.
RUN_KEYS = ('work_dir', 'resume', 'load_from', 'launcher')
#: At most this many changed keys are listed.
MAX_LISTED = 8
#: Longest value shown in full.
MAX_VALUE_CHARS = 40


def _flatten(node: Any, prefix: str = '') -> Iterator[Tuple[str, Any]]:
    """``(dotted key, leaf value)`` of a config (list items by index)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f'{prefix}{key}.')
    elif isinstance(node, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in node):
        for index, value in enumerate(node):
            yield from _flatten(value, f'{prefix}{index}.')
    else:
        yield prefix[:-1], list(node) if isinstance(node, tuple) else node  # the saved text may turn one into the other


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + '...'


def config_changes(saved_text: str, cfg: Config) -> List[str]:
    """The settings of ``cfg`` that differ from those of the config ``saved_text`` (a checkpoint's
    ``meta['cfg']``), as ``key (old -> new)``; ``[]`` when the saved text cannot be read as a config.

    Args:
        saved_text: ``Config.pretty_text`` of the run that saved the checkpoint.
        cfg: The config of the run that resumes.
    """
    try:
        saved = Config.fromstring(saved_text, file_format='.py')
    except Exception:  # noqa: B902  (a config of another mmengine version: nothing to compare)
        return []
    old: Dict[str, Any] = {k: v for k, v in _flatten(saved.to_dict()) if k.split('.')[0] not in RUN_KEYS}
    new: Dict[str, Any] = {k: v for k, v in _flatten(cfg.to_dict()) if k.split('.')[0] not in RUN_KEYS}
    missing = object()
    changes = []
    for key in list(old) + [key for key in new if key not in old]:
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            changes.append(f'{key} ({"unset" if before is missing else _shown(before)} -> '
                           f'{"unset" if after is missing else _shown(after)})')
    return changes


def describe_config_changes(filename: str, changes: List[str]) -> str:
    """The warning of a resumption whose config differs from the checkpoint's."""
    listed = ', '.join(changes[:MAX_LISTED]) + (f', ... ({len(changes) - MAX_LISTED} more)'
                                                if len(changes) > MAX_LISTED else '')
    return (f'resuming from {filename}, saved by a run whose config differs from this one in {len(changes)} '
            f'setting(s): {listed}. The run continues with this config; if the checkpoint belongs to another '
            f'experiment, train in another --work-dir instead.')
