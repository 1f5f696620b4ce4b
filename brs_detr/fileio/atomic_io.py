"""Atomic file writing: a crash never leaves a truncated file behind.

A checkpoint written in place (``open(path, 'wb')``) is truncated first; a crash, a full disk or a
killed job in the middle of the write leaves a half-written ``epoch_N.pth`` that later breaks
``resume=True``. Everything here writes to a temporary file in the destination's directory
(same file system, so the rename is atomic), flushes and fsyncs it, and only then moves it over
the destination with :func:`os.replace`. On failure the temporary file is removed and the old
destination, if any, is untouched.
"""
import contextlib
import io
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

PathLike = Union[str, Path]

#: Size of the pieces :func:`atomic_write_bytes` writes at a time.
WRITE_CHUNK_BYTES = 16 * 1024 * 1024
#: Marker in the names of temporary files, so that stray ones are easy to spot and clean up.
TEMP_INFIX = '.tmp-'


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _current_umask()


def _fsync_directory(directory: str) -> None:
    """Persist a rename by fsyncing its directory (POSIX only; a no-op where unsupported)."""
    if not hasattr(os, 'O_DIRECTORY'):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = 'wb', encoding: Optional[str] = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit atomically replace ``path`` with it.

    Args:
        path: Destination file. Its directory is created if missing.
        mode: ``'wb'`` or ``'w'``.
        encoding: Text encoding for ``mode='w'`` (default utf-8).

    Yields:
        The open temporary file. If the ``with`` body raises, the temporary file is removed and
        ``path`` keeps its previous content; an ``OSError`` that names no file (a write on a full disk) is
        raised again with ``path`` as its ``filename``.
    """
    if mode not in ('wb', 'w'):
        raise ValueError(f'atomic_open supports modes "wb" and "w", got {mode!r}')
    path = osp.abspath(osp.expanduser(str(path)))
    directory = osp.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=osp.basename(path) + TEMP_INFIX, dir=directory)
    try:
        if mode == 'w':
            file = io.open(fd, 'w', encoding=encoding or 'utf-8')
        else:
            file = io.open(fd, 'wb')
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            # a failed write (full disk) names no file: name the destination
            raise type(error)(error.errno, error.strerror, path) from error
        raise
    _fsync_directory(directory)


def _write_all(file: IO[bytes], data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to ``file`` in :data:`WRITE_CHUNK_BYTES` pieces."""
    view = memoryview(data)
    for start in range(0, len(view), WRITE_CHUNK_BYTES):
        file.write(view[start:start + WRITE_CHUNK_BYTES])


def atomic_write_bytes(data: Union[bytes, bytearray, memoryview], path: PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, os.replace)."""
    with atomic_open(path, 'wb') as file:
        _write_all(file, data)


def atomic_write_text(text: str, path: PathLike, encoding: str = 'utf-8') -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(text.encode(encoding), path)


def atomic_torch_save(obj: Any, path: PathLike, save_fn: Optional[Callable[[Any, IO[bytes]], None]] = None) -> None:
    """``torch.save(obj, path)``, but atomic: a failure never leaves a truncated ``path``.

    Args:
        obj: Object to save (usually a dict of tensors).
        path: Destination file.
        save_fn: Serializer taking ``(obj, file)``; defaults to :func:`torch.save`.
    """
    if save_fn is None:
        import torch
        save_fn = torch.save
    with atomic_open(path, 'wb') as file:
        save_fn(obj, file)
