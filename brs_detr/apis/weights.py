"""Strict loading of inference weights, with an error that says which keys do not fit.

mmengine's inferencers load weights with ``strict=False``: weights of another model (another config, another
number of classes) load "successfully", a log line lists the keys that did not fit, and the demo then draws the
detections of a partly random network. Here the checkpoint's state dict is compared with the model's first (names
and shapes, :func:`brs_detr.engine.runner.checkpoint_fit.state_dict_fit`); any difference raises
:class:`WeightsMismatchError` naming the keys, and only an exact fit is loaded.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from brs_detr.engine.runner.checkpoint_fit import state_dict_fit
from brs_detr.engine.runner.runner import CheckpointFitError

#: Key prefix a DistributedDataParallel wrapper adds (removed before comparing, as mmengine does).
DDP_PREFIX = re.compile(r'^module\.')


class WeightsMismatchError(CheckpointFitError):
    """The weights do not fit the model built from the config exactly (missing, unexpected or reshaped keys)."""


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
    fit = state_dict_fit(model.state_dict(), state_dict)
    if not fit.exact:
        raise WeightsMismatchError(
            f'the weights {source} do not fit the model of {config or "the config"} ({fit.describe()}): they were '
            f'trained with another config (model, backbone or number of classes); pass the config they were trained '
            f'with (tools/train.py saves it next to the checkpoint)')
    model.load_state_dict(state_dict, strict=True)
