"""Files brs_detr reads and writes safely: atomic writes, the file lock, the trust registry, checkpoint loading.

The lowest layer of brs_detr: it imports no other brs_detr package (docs/architecture.md).

* :mod:`~brs_detr.fileio.atomic_io`: atomic file writes (temporary file, fsync, ``os.replace``);
* :mod:`~brs_detr.fileio.file_lock`: an inter-process lock;
* :mod:`~brs_detr.fileio.trust`: which checkpoint files may be unpickled with code execution;
* :mod:`~brs_detr.fileio.checkpoint`: safe loading of local checkpoints (mmengine's ``''`` loader);
* :mod:`~brs_detr.fileio.backend`: mmengine's local file backend made atomic (the Runner's checkpoints).

Names are imported on first access, so ``from brs_detr.fileio import trust_file`` imports neither torch nor mmengine.
"""
from brs_detr.lazy_import import lazy_exports

_EXPORTS = {
    '.atomic_io': ['atomic_open', 'atomic_torch_save', 'atomic_write_bytes', 'atomic_write_text'],
    '.backend': ['AtomicLocalBackend', 'install_atomic_backend'],
    '.checkpoint': ['CheckpointReadError', 'UntrustedCheckpointError', 'check_checkpoint_readable',
                    'install_local_loader', 'load_from_local_safe', 'safe_torch_load'],
    '.trust': ['is_trusted', 'record_trusted_file', 'reset_trust', 'sha256_file', 'trust_directory', 'trust_file',
               'trust_reason'],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
