"""mmengine's local file backend, made atomic: the Runner's checkpoints are never left half-written.

:func:`install_atomic_backend` registers :class:`AtomicLocalBackend` as mmengine's ``'local'`` backend (and
``FileClient``'s ``'disk'``), so ``Runner.save_checkpoint`` -> ``mmengine.runner.save_checkpoint`` ->
``get_file_backend(filename).put`` writes through :func:`~brs_detr.fileio.atomic_io.atomic_write_bytes` and records
the checkpoint as trusted (:mod:`brs_detr.fileio.trust`). :func:`brs_detr.register_all_modules` installs it (and
``import brs_detr`` as soon as ``mmengine.fileio`` is imported); importing this module installs it too.
"""
import logging
from pathlib import Path
from typing import Union

from mmengine.fileio.backends import LocalBackend
from mmengine.logging import print_log

from . import atomic_io
from .trust import record_trusted_file

PathLike = Union[str, Path]


class AtomicLocalBackend(LocalBackend):
    """mmengine's :class:`~mmengine.fileio.LocalBackend` with atomic ``put`` and ``put_text``.

    What changed: mmengine's version opens the destination with ``'wb'`` and writes into it, so a
    crash mid-write leaves a truncated file. Here both go through :func:`~brs_detr.fileio.atomic_io.atomic_open`.

    Every ``.pth`` file written through ``put`` (i.e. a checkpoint the user's own Runner saved) is
    also recorded, with its sha256, in the trust manifest of its directory, so that resuming from
    it later can unpickle the Runner's metadata (see :mod:`brs_detr.fileio.trust`).
    """

    #: File suffixes recorded in the trust manifest when written through :meth:`put`.
    trusted_suffixes = ('.pth', )

    def put(self, obj: bytes, filepath: PathLike) -> None:
        """Atomically write bytes to ``filepath`` (creating its directory)."""
        filepath = str(filepath)
        atomic_io.atomic_write_bytes(obj, filepath)  # through the module: one seam for every atomic write
        if filepath.endswith(self.trusted_suffixes):
            try:
                record_trusted_file(filepath, data=obj, source='written by mmengine Runner (brs_detr atomic backend)')
            except OSError as error:  # a read-only manifest must not lose the checkpoint itself
                print_log(f'Could not record {filepath} in its trust manifest: {error}', logger='current',
                          level=logging.WARNING)

    def put_text(self, obj: str, filepath: PathLike, encoding: str = 'utf-8') -> None:
        """Atomically write text to ``filepath`` (creating its directory)."""
        atomic_io.atomic_write_text(obj, str(filepath), encoding=encoding)


def install_atomic_backend() -> None:
    """Make :class:`AtomicLocalBackend` mmengine's local file backend (idempotent)."""
    from mmengine.fileio import FileClient, register_backend
    from mmengine.fileio import io as mmengine_io
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    FileClient.register_backend('disk', AtomicLocalBackend, force=True)
    # Singleton instances of the old class created before this call would bypass the new one.
    for key, backend in list(mmengine_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            mmengine_io.backend_instances.pop(key)


# Installed on import: brs_detr.registration imports this module once mmengine.fileio has been imported, which may
# happen while this very module imports mmengine.fileio (the import then finishes here, and installs).
install_atomic_backend()
