"""An inter-process lock on a lock file (POSIX ``flock``; a no-op where ``fcntl`` does not exist)."""
import contextlib
import hashlib
import os
import os.path as osp
from typing import Iterator


@contextlib.contextmanager
def file_lock(lock_path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created, with its directory) for the ``with`` body."""
    try:
        import fcntl
    except ImportError:  # Windows: no locking
        yield
        return
    os.makedirs(osp.dirname(osp.abspath(lock_path)), exist_ok=True)
    with open(lock_path, 'a') as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def lock_path_for(path: str, lock_dir: str) -> str:
    """A lock file in ``lock_dir`` named after the absolute ``path`` (keeps lock files out of data directories)."""
    return osp.join(lock_dir, hashlib.sha1(osp.abspath(path).encode()).hexdigest() + '.lock')
