"""Strict loading of inference weights, with an error that says which keys do not fit.

mmengine's inferencers load weights with ``strict=False``: weights of another model (another config, another
number of classes) load "successfully", a log line lists the keys that did not fit, and the demo then draws the
detections of a partly random network. Here the checkpoint's state dict is compared with the model's first (names
and shapes); any difference raises :class:`WeightsMismatchError` naming the keys, and only a perfect fit is loaded.
"""
from __future__ import annotations

import os.path as osp
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from brs_detr.utils.trust import trust_directory

#: How many keys of each kind a mismatch error lists.
MAX_KEYS_SHOWN = 10
#: Key prefix a DistributedDataParallel wrapper adds (removed before comparing, as mmengine does).
DDP_PREFIX = re.compile(r'^module\.')
#: Marker file mmengine's CheckpointHook writes into every work_dir it saves checkpoints to.
LAST_CHECKPOINT_MARKER = 'last_checkpoint'


class WeightsMismatchError(RuntimeError):
    """The weights do not fit the model built from the config (missing, unexpected or reshaped keys)."""


def checkpoint_state_dict(checkpoint: Any, source: str) -> Dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint (``checkpoint['state_dict']`` or the checkpoint itself).

    Args:
        checkpoint: What :func:`torch.load` returned.
        source: The file it came from (for the error message).

    Raises:
        WeightsMismatchError: The checkpoint holds no dict of tensors.
    """
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise WeightsMismatchError(f'{source} holds no model weights: expected a state dict of tensors, or a '
                                   f'checkpoint with one under "state_dict" (as tools/train.py saves them)')
    return {DDP_PREFIX.sub('', key): value for key, value in state_dict.items()}


def _listed(keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:MAX_KEYS_SHOWN])
    return shown + (f', ... ({len(keys) - MAX_KEYS_SHOWN} more)' if len(keys) > MAX_KEYS_SHOWN else '')


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Tuple[List[str], List[str],
                                                                                             List[str]]:
    """Compare a state dict with ``model.state_dict()``.

    Returns:
        ``(missing, unexpected, reshaped)``: sorted keys the model has and the weights lack, keys the weights have
        and the model lacks, and ``"key: weights (shape) vs model (shape)"`` for keys present in both with
        different shapes.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    reshaped = [
        f'{key}: weights {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}'
        for key in sorted(set(expected) & set(state_dict)) if state_dict[key].shape != expected[key].shape
    ]
    return missing, unexpected, reshaped


def load_weights_strictly(model: nn.Module, checkpoint: Any, source: str, config: Optional[str] = None) -> None:
    """Load a checkpoint's weights into ``model``, refusing any key or shape that does not fit.

    Args:
        model: The model built from the config.
        checkpoint: The loaded checkpoint (a dict with ``state_dict``, or a plain state dict).
        source: The weights file (for messages).
        config: The config file the model was built from (for messages).

    Raises:
        WeightsMismatchError: Missing, unexpected or reshaped keys; the message lists them.
    """
    state_dict = checkpoint_state_dict(checkpoint, source)
    missing, unexpected, reshaped = state_dict_mismatch(model, state_dict)
    if missing or unexpected or reshaped:
        lines = [f'the weights {source} do not fit the model of {config or "the config"}: they were trained with '
                 f'another config (another model, backbone or number of classes). Pass the config they were trained '
                 f'with (tools/train.py saves it next to the checkpoint).']
        if missing:
            lines.append(f'  {len(missing)} keys of the model are missing from the weights: {_listed(missing)}')
        if unexpected:
            lines.append(f'  {len(unexpected)} keys of the weights are not in the model: {_listed(unexpected)}')
        if reshaped:
            lines.append(f'  {len(reshaped)} keys have another shape: {_listed(reshaped)}')
        raise WeightsMismatchError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=True)


def trust_runner_work_dir(weights: str) -> bool:
    """Trust the folder of ``weights`` for full unpickling when it is a Runner work_dir, as ``tools/test.py`` does.

    A Runner checkpoint holds Python objects (``HistoryBuffer``, numpy scalars) that ``weights_only=True`` rejects.
    Checkpoints saved by a brs-detr Runner are trusted anyway through their signed manifest entries
    (:mod:`brs_detr.utils.trust`); this also admits a work_dir copied from another machine of the user's. Any other
    folder stays untrusted (weights-only loading).

    Returns:
        Whether the folder is now trusted.
    """
    if '://' in weights:
        return False
    folder = osp.dirname(osp.abspath(weights))
    if not osp.isfile(osp.join(folder, LAST_CHECKPOINT_MARKER)):
        return False
    trust_directory(folder)
    return True
