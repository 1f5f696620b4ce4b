"""A work_dir belongs to one training run at a time, and ``last_checkpoint`` names a file of its own work_dir.

Light (standard library only): ``tools/train.py`` takes the work_dir before its heavy imports, so a second run in
the same work_dir, a fresh start over an earlier run's checkpoints, or a work_dir that cannot be written are refused
within a second.

* :class:`WorkDirOwnership` holds an ``flock`` on ``<work_dir>/brs_detr_run.lock`` for the run's lifetime (the
  kernel releases it when the process ends, even by ``kill -9``); the file says who holds it (pid, host, command,
  start time), so a second run names the first. Only rank 0 of a distributed run takes it.
* A fresh start (no ``--resume``) in a work_dir holding checkpoints is refused; ``--overwrite-work-dir`` moves the
  earlier run into ``<work_dir>.previous-<time>`` (nothing is deleted).
* :func:`resolve_last_checkpoint`: ``last_checkpoint`` holds a name relative to its work_dir (written by
  :func:`last_checkpoint_text`); an absolute name from an older run, or from before the work_dir was copied or moved,
  resolves to the file of the same name in this work_dir when there is one.
"""
from __future__ import annotations

import datetime
import json
import os
import os.path as osp
import re
import shlex
import socket
import sys
import time
from typing import IO, List, Optional, Tuple

#: File in the work_dir whose ``flock`` a training run holds.
LOCK_FILE = 'brs_detr_run.lock'
#: File in the work_dir naming the latest checkpoint (written by the CheckpointHook).
LAST_CHECKPOINT_MARKER = 'last_checkpoint'
#: Names of the checkpoints the CheckpointHook writes by default (``epoch_N.pth`` / ``iter_N.pth``).
RESUMABLE_CHECKPOINT = re.compile(r'^(epoch|iter)_\d+\.pth$')
#: Checkpoints of a run: the resumable ones and the best ones (``save_best``).
RUN_CHECKPOINT = re.compile(r'^((epoch|iter)_\d+|best_.+)\.pth$')
#: Where ``--overwrite-work-dir`` moves an earlier run: ``<work_dir><suffix><time>``.
PREVIOUS_RUN_SUFFIX = '.previous-'


class WorkDirError(RuntimeError):
    """The work_dir cannot be used by this run: another run holds it, or it holds an earlier run's checkpoints."""


def run_checkpoints(work_dir: str) -> List[str]:
    """The names of an earlier run's checkpoints (and ``last_checkpoint``) directly in ``work_dir``."""
    if not osp.isdir(work_dir):
        return []
    return sorted(name for name in os.listdir(work_dir)
                  if RUN_CHECKPOINT.match(name) or name == LAST_CHECKPOINT_MARKER)


def _same_directory(a: str, b: str) -> bool:
    return osp.realpath(a) == osp.realpath(b)


def last_checkpoint_text(work_dir: str, checkpoint: str) -> str:
    """What ``last_checkpoint`` says for ``checkpoint``: its name relative to ``work_dir`` when it lies in it (so a
    copied or moved work_dir resumes from its own files), else the path as given (``out_dir`` elsewhere, a URL)."""
    if '://' in checkpoint:
        return checkpoint
    if _same_directory(osp.dirname(osp.abspath(checkpoint)), work_dir):
        return osp.basename(checkpoint)
    return checkpoint


def resolve_last_checkpoint(work_dir: str, named: str) -> Tuple[str, Optional[str]]:
    """The file ``last_checkpoint`` of ``work_dir`` means by ``named``, and a note when it was re-based.

    A relative name is relative to ``work_dir``. An absolute path outside ``work_dir`` (a work_dir copied or moved
    after an older brs-detr or mmengine wrote it) means the file of the same name in ``work_dir`` when that exists,
    so that a copy never resumes from (or deletes) the files of its original.
    """
    if '://' in named:
        return named, None
    if not osp.isabs(named):
        return osp.join(work_dir, named), None
    local = osp.join(work_dir, osp.basename(named))
    if not _same_directory(osp.dirname(named), work_dir) and osp.isfile(local):
        return local, (f'{osp.join(work_dir, LAST_CHECKPOINT_MARKER)} names {named}, outside this work_dir (copied or '
                       f'moved?); using {local}, the file of the same name in it')
    return named, None


def _owner_text() -> str:
    return json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'command': shlex.join(sys.argv),
                       'started': datetime.datetime.now().isoformat(timespec='seconds')})


def _describe_owner(text: str) -> str:
    try:
        owner = json.loads(text)
        return (f'pid {owner["pid"]} on {owner["host"]}, started {owner["started"].replace("T", " ")}: '
                f'{owner["command"]}')
    except (ValueError, KeyError, TypeError, AttributeError):
        return 'a process that has not yet said who it is'


class WorkDirOwnership:
    """The lock a training run holds on its work_dir, and the checks of a fresh start (see the module docstring).

    Args:
        work_dir: The run's work_dir.
        option: How the user named it (for messages).
    """

    def __init__(self, work_dir: str, option: str = '--work-dir') -> None:
        self.work_dir = work_dir
        self.option = option
        self._file: Optional[IO[str]] = None

    @property
    def lock_path(self) -> str:
        return osp.join(self.work_dir, LOCK_FILE)

    def acquire(self) -> None:
        """Create the work_dir if needed and take its lock.

        Raises:
            OutputPathError: The work_dir is a regular file, or cannot be created or written (read-only, no
                permission, full).
            WorkDirError: Another run holds it; the message names that run.
        """
        from brs_detr.fileio.output_paths import OutputPathError, check_output_dir

        check_output_dir(self.work_dir, self.option, create=True)
        try:
            import fcntl
        except ImportError:  # Windows: no locking
            return
        try:
            file = open(self.lock_path, 'a+', encoding='utf-8')
        except OSError as error:
            raise OutputPathError(f'{self.option} {self.work_dir}: cannot create {LOCK_FILE}: {error.strerror}') \
                from error
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            owner = file.read()
            file.close()
            if not owner:  # the holder has locked but not yet written: read once more
                time.sleep(0.2)
                with open(self.lock_path, encoding='utf-8') as again:
                    owner = again.read()
            raise WorkDirError(f'{self.option} {self.work_dir} is in use by another training run '
                               f'({_describe_owner(owner)}). Wait until it ends, or choose another {self.option}.') \
                from None
        file.seek(0)
        file.truncate()
        file.write(_owner_text())
        file.flush()
        self._file = file

    def release(self) -> None:
        """Give the lock up (the lock file stays: it is free without its ``flock``)."""
        if self._file is not None:
            self._file.close()  # closing the last descriptor releases the flock
            self._file = None

    def __enter__(self) -> 'WorkDirOwnership':
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def check_fresh_start(self, resume: bool, overwrite: bool) -> None:
        """Refuse to start a new run (``resume=False``) over an earlier run's checkpoints unless ``overwrite``.

        Raises:
            WorkDirError: Naming the checkpoints, ``--resume`` and ``--overwrite-work-dir``.
        """
        if resume or overwrite:
            return
        found = run_checkpoints(self.work_dir)
        if not found:
            return
        shown = ', '.join(found[:4]) + (f', ... ({len(found) - 4} more)' if len(found) > 4 else '')
        raise WorkDirError(
            f'{self.option} {self.work_dir} holds the checkpoints of an earlier run ({shown}); a new run would '
            f'overwrite them and mix its files with that run\'s. Continue that run with --resume; or start over with '
            f'--overwrite-work-dir, which first moves the earlier run to {self.work_dir.rstrip(os.sep)}'
            f'{PREVIOUS_RUN_SUFFIX}<time> (nothing is deleted); or choose another {self.option}.')

    def move_previous_run_aside(self) -> Optional[str]:
        """Move everything in the work_dir but the lock into ``<work_dir>.previous-<time>``; return that folder
        (``None`` when there was nothing to move)."""
        entries = [name for name in sorted(os.listdir(self.work_dir)) if name != LOCK_FILE]
        if not entries:
            return None
        base = self.work_dir.rstrip(os.sep) + PREVIOUS_RUN_SUFFIX + time.strftime('%Y%m%d_%H%M%S')
        target, number = base, 1
        while osp.lexists(target):
            number += 1
            target = f'{base}_{number}'
        os.makedirs(target)
        for name in entries:
            os.rename(osp.join(self.work_dir, name), osp.join(target, name))
        return target
