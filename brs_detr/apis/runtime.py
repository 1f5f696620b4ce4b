"""The device the inference demo runs on."""
from __future__ import annotations

from typing import Optional

import torch

from .cli import ToolInputError


class DeviceError(ToolInputError):
    """The requested device does not exist on this machine."""


def resolve_device(device: Optional[str]) -> str:
    """The device to run inference on: ``device`` after checking it exists, or the best one available.

    Args:
        device: ``None``/``'auto'`` (CUDA when available, else mmengine's choice: NPU/MLU/MPS/CPU), ``'cpu'``,
            ``'cuda'`` or ``'cuda:N'``, or any other device string torch accepts.

    Raises:
        DeviceError: A CUDA device was asked for and this torch has none (or fewer), or torch does not know the
            device string.
    """
    if device is None or device == 'auto':
        from mmengine.device import get_device
        return get_device()
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise DeviceError(f'--device {device}: {error}') from error
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError(f'--device {device}: CUDA is not available on this machine (torch {torch.__version__}); '
                              f'use --device cpu')
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f'--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    return device
