"""Faults injected into real training runs by the fault tests (imported through a config's ``custom_imports``).

:class:`FaultInjectionHook` can, at chosen iterations (1-based, as the logs count them):

* turn a loss term into NaN (``nan_at={iteration: key}``; ``nan_ranks`` limits it to some ranks);
* kill the run with SIGKILL in the middle of writing a file whose name contains ``kill_in_write_of`` (its
  ``kill_on_write``-th write, default the first), after half of its bytes reached the disk (the file is written through ``brs_detr.fileio.atomic_io``, like every checkpoint and
  ``last_checkpoint``). ``kill_group=True`` kills the whole job (the torchrun launcher and every rank) at once, as a
  node failure or a scheduler's preemption does;
* press Ctrl-C: send SIGINT to the process after iteration ``sigint_after``;
* fill the disk: the write of a file whose name contains ``disk_full_in_write_of`` fails with ``ENOSPC`` after half of
  its bytes (its temporary file is removed, as a real failed write leaves it).

This module is test code: it patches brs-detr functions, which the package itself never does.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Dict, Optional, Sequence

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from brs_detr.fileio import atomic_io

#: Printed (and flushed) right before the kill, so that a test can see where the run died.
KILL_MARKER = 'FAULT-INJECTION: SIGKILL while writing'


def _children(pid: int) -> list:
    """Child process ids of ``pid`` (Linux ``/proc``)."""
    with open(f'/proc/{pid}/task/{pid}/children') as file:
        return [int(child) for child in file.read().split()]


def _kill(whole_job: bool) -> None:
    """SIGKILL this process, or the whole job: the launcher (our parent, torchrun) and all its workers.

    torchrun starts each worker in a session of its own, so a process-group kill would not reach them.
    """
    if whole_job:
        launcher = os.getppid()
        for pid in [*(p for p in _children(launcher) if p != os.getpid()), launcher]:
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class FaultInjectionHook(Hook):
    """Inject NaN losses and kills into a training run (see the module docstring).

    Args:
        nan_at: ``{iteration: loss key}``: that loss becomes NaN at that iteration.
        nan_ranks: Ranks that get the NaN (default: all).
        kill_in_write_of: Kill while writing a file whose name contains this text.
        kill_on_write: Which write of such a file is killed (1: the first).
        kill_group: Kill the whole job (launcher and all ranks) instead of this process only.
        sigint_after: Send SIGINT (Ctrl-C) to this process after this iteration.
        disk_full_in_write_of: Fail the writes of files whose name contains this text with ENOSPC.
    """

    priority = 'HIGHEST'

    def __init__(self, nan_at: Optional[Dict[int, str]] = None, nan_ranks: Optional[Sequence[int]] = None,
                 kill_in_write_of: Optional[str] = None, kill_on_write: int = 1, kill_group: bool = False,
                 sigint_after: Optional[int] = None, disk_full_in_write_of: Optional[str] = None) -> None:
        self.nan_at = {int(k): v for k, v in (nan_at or {}).items()}
        self.nan_ranks = None if nan_ranks is None else set(nan_ranks)
        self.kill_in_write_of = kill_in_write_of
        self.kill_on_write = kill_on_write
        self.kill_group = kill_group
        self.sigint_after = sigint_after
        self.disk_full_in_write_of = disk_full_in_write_of
        self._iteration = 0

    def before_run(self, runner) -> None:
        if self.kill_in_write_of is not None:
            self._patch_writes()
        if self.disk_full_in_write_of is not None:
            self._patch_writes_to_fail()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.sigint_after is not None and runner.iter + 1 == self.sigint_after:
            os.kill(os.getpid(), signal.SIGINT)

    def _patch_writes_to_fail(self) -> None:
        write_bytes = atomic_io.atomic_write_bytes
        target = self.disk_full_in_write_of

        def half_then_disk_full(data, path) -> None:
            if target not in os.path.basename(str(path)):
                return write_bytes(data, path)
            with atomic_io.atomic_open(path, 'wb') as file:
                file.write(memoryview(data)[:len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        atomic_io.atomic_write_bytes = half_then_disk_full

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        loss = model.loss

        def loss_with_nan(*args, **kwargs):
            losses = loss(*args, **kwargs)
            key = self.nan_at.get(self._iteration)
            if key is not None and (self.nan_ranks is None or get_rank() in self.nan_ranks):
                value = losses[key]
                losses[key] = [v * float('nan') for v in value] if isinstance(value, list) else value * float('nan')
            return losses

        model.loss = loss_with_nan

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._iteration = runner.iter + 1

    def _patch_writes(self) -> None:
        write_bytes = atomic_io.atomic_write_bytes
        target = self.kill_in_write_of
        writes = []

        def write_half_then_die(data, path) -> None:
            if target not in os.path.basename(str(path)) or get_rank() != 0:
                return write_bytes(data, path)
            writes.append(path)
            if len(writes) < self.kill_on_write:
                return write_bytes(data, path)
            with atomic_io.atomic_open(path, 'wb') as file:  # the temporary file the real write would fill
                view = memoryview(data)
                file.write(view[:len(view) // 2])
                file.flush()
                os.fsync(file.fileno())
                print(f'{KILL_MARKER} {file.name} for {path}', flush=True)
                sys.stderr.flush()
                _kill(self.kill_group)

        atomic_io.atomic_write_bytes = write_half_then_die
