"""Where the demo tools run: the inference device and whether a window can be shown."""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def has_display() -> bool:
    """Whether a window can be opened (assumed on Windows and macOS; on other systems ``DISPLAY``/``WAYLAND_DISPLAY``)."""
    if os.name != 'posix' or sys.platform == 'darwin':
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


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
