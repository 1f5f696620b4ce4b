"""Project utilities: safe checkpoint loading, trust registry, atomic writes, model-zoo downloads.

Importing this package (which ``import brs_detr`` does) installs brs_detr's checkpoint loaders and
its atomic local file backend into mmengine; see :mod:`brs_detr.utils.checkpoint`.
"""
from .atomic_io import AtomicLocalBackend, atomic_open, atomic_torch_save, atomic_write_bytes, atomic_write_text
from .checkpoint import (TORCHVISION_URLS, UntrustedCheckpointError, install, load_from_http_safe,
                         load_from_local_safe, load_from_torchvision_safe, safe_torch_load)
from .download import ChecksumError, DownloadError, download_file
from .model_zoo import ModelZooError, load_index
from .trust import is_trusted, record_trusted_file, reset_trust, sha256_file, trust_directory, trust_file, trust_reason

install_checkpoint_safety = install
install()

__all__ = [
    'AtomicLocalBackend', 'atomic_open', 'atomic_torch_save', 'atomic_write_bytes', 'atomic_write_text',
    'TORCHVISION_URLS', 'UntrustedCheckpointError', 'install', 'install_checkpoint_safety', 'load_from_http_safe',
    'load_from_local_safe', 'load_from_torchvision_safe', 'safe_torch_load', 'ChecksumError', 'DownloadError',
    'download_file', 'ModelZooError', 'load_index', 'is_trusted', 'record_trusted_file', 'reset_trust',
    'sha256_file', 'trust_directory', 'trust_file', 'trust_reason'
]
