"""Files brs_detr reads and writes safely: checkpoint loading, the trust registry, atomic writes, the file lock.

Importing this package (which ``import brs_detr`` does) installs brs_detr's checkpoint loaders and
its atomic local file backend into mmengine; see :mod:`brs_detr.fileio.checkpoint`.
"""
from .atomic_io import AtomicLocalBackend, atomic_open, atomic_torch_save, atomic_write_bytes, atomic_write_text
from .checkpoint import (TORCHVISION_URLS, UntrustedCheckpointError, install, load_from_http_safe,
                         load_from_local_safe, load_from_torchvision_safe, safe_torch_load)
from .trust import is_trusted, record_trusted_file, reset_trust, sha256_file, trust_directory, trust_file, trust_reason

install_checkpoint_safety = install
install()

__all__ = [
    'AtomicLocalBackend', 'atomic_open', 'atomic_torch_save', 'atomic_write_bytes', 'atomic_write_text',
    'TORCHVISION_URLS', 'UntrustedCheckpointError', 'install', 'install_checkpoint_safety', 'load_from_http_safe',
    'load_from_local_safe', 'load_from_torchvision_safe', 'safe_torch_load', 'is_trusted', 'record_trusted_file',
    'reset_trust', 'sha256_file', 'trust_directory', 'trust_file', 'trust_reason'
]
