"""mmengine's CheckpointHook made safe against a kill (``kill -9``, preemption, node failure) at any moment."""
from __future__ import annotations

import errno
import glob
import os
import os.path as osp
from typing import Any, List, Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmdet.registry import HOOKS

from brs_detr.fileio.atomic_io import TEMP_INFIX, atomic_write_text
from ..work_dir import LAST_CHECKPOINT_MARKER, last_checkpoint_text, resolve_last_checkpoint

#: ``OSError`` numbers of a full disk or quota.
DISK_FULL_ERRNOS = tuple(getattr(errno, name) for name in ('ENOSPC', 'EDQUOT') if hasattr(errno, name))


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk); the message names it and the checkpoint that is kept."""


class _DeferredRemovals:
    """A file backend whose ``remove``/``rmtree`` are recorded instead of done, until :meth:`apply`."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pending: List[Tuple[str, str]] = []

    def remove(self, path: str) -> None:
        self.pending.append(('remove', path))

    def rmtree(self, path: str) -> None:
        self.pending.append(('rmtree', path))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def apply(self, keep: Tuple[str, ...] = ()) -> None:
        """Do the recorded removals, except of the paths in ``keep``."""
        for operation, path in self.pending:
            if path not in keep:
                getattr(self.backend, operation)(path)
        self.pending.clear()


@HOOKS.register_module()
class CrashSafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook` that never leaves the work_dir without a usable checkpoint.

    Same arguments and checkpoints as the parent. What changed, and why:

    * Outdated checkpoints (``max_keep_ckpts``) and the previous best checkpoint (``save_best``) are removed only
      after the new checkpoint is completely written. mmengine removes them first, so a kill during the save, or a
      save that fails (full disk), leaves a ``max_keep_ckpts=1`` run with no checkpoint at all.
    * ``last_checkpoint`` is written atomically (temporary file, then rename), and only after the checkpoint it
      names is complete. mmengine truncates and rewrites it in place: a kill at that moment leaves it empty and
      ``--resume`` then has nothing to resume from.

    * Before training, temporary files that a killed save left in the checkpoint directory (``<name>.tmp-*``,
      never read by anything) are removed.
    * ``last_checkpoint`` names the checkpoint relative to the work_dir when the Runner resolves such names
      (:class:`~brs_detr.engine.runner.ReliableRunner`), and the best checkpoints a resumed run remembers are looked
      for in this run's checkpoint folder: a copied or moved work_dir neither resumes from nor deletes the files of
      its original (mmengine keeps their absolute paths).
    * A save that fails on a full disk raises :class:`CheckpointWriteError`, naming the file and the previous
      checkpoint, which is kept.

    The checkpoint files themselves are written atomically by brs_detr's local file backend
    (:class:`brs_detr.fileio.backend.AtomicLocalBackend`). A checkpoint kept because the run was killed between
    the save and the removal stays on disk (it is not tracked for removal any more).
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._rebase_best_checkpoints(runner)
        if not is_main_process():
            return
        for directory in {self.out_dir, runner.work_dir}:
            if not osp.isdir(directory):
                continue  # not a local directory
            for path in glob.glob(osp.join(glob.escape(directory), f'*{TEMP_INFIX}*')):
                if not osp.isfile(path):
                    continue
                runner.logger.info(f'Removing {path}, left by an interrupted save')
                os.remove(path)

    def _rebase_best_checkpoints(self, runner) -> None:
        """Point the remembered best checkpoints into this run's checkpoint folder (see the class docstring)."""
        if not osp.isdir(self.out_dir):
            return  # not a local folder

        def rebased(path):
            if not path or '://' in path or osp.realpath(osp.dirname(osp.abspath(path))) == osp.realpath(self.out_dir):
                return path
            local = osp.join(self.out_dir, osp.basename(path))
            runner.logger.info(f'The best checkpoint {path} remembered by the resumed run is outside {self.out_dir} '
                               f'(a copied or moved work_dir?): using {local}')
            return local

        if getattr(self, 'best_ckpt_path', None):
            self.best_ckpt_path = rebased(self.best_ckpt_path)
        for key, path in list(getattr(self, 'best_ckpt_path_dict', {}).items()):
            self.best_ckpt_path_dict[key] = rebased(path)

    def _previous_checkpoint(self, runner) -> Optional[str]:
        """The checkpoint ``last_checkpoint`` names now (``None``: none)."""
        marker = osp.join(runner.work_dir, LAST_CHECKPOINT_MARKER)
        if not osp.isfile(marker):
            return None
        with open(marker, encoding='utf-8') as file:
            named = file.read().strip()
        return resolve_last_checkpoint(runner.work_dir, named)[0] if named else None

    def _outdated_checkpoints(self, runner, step: int) -> List[str]:
        """Track ``step`` among the kept checkpoints; return the paths that fall out of ``max_keep_ckpts``."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []  # keep everything, or this step is saved again (a best checkpoint in the same epoch)
        outdated = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            oldest = self.keep_ckpt_ids.popleft()
            outdated.append(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(oldest)))
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated

    def _remove_checkpoint(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are directories
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        """Save, then point ``last_checkpoint`` at the new file (atomically), then remove outdated checkpoints."""
        outdated = self._outdated_checkpoints(runner, step)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(
                self.out_dir,
                ckpt_filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        except OSError as error:
            if error.errno not in DISK_FULL_ERRNOS:
                raise
            previous = self._previous_checkpoint(runner)
            kept = (f'the previous checkpoint {previous} is kept (last_checkpoint names it): free some space, then '
                    f'continue with --resume' if previous else 'no earlier checkpoint exists')
            raise CheckpointWriteError(error.errno, f'{error.strerror} while saving the checkpoint {self.last_ckpt}; '
                                       f'nothing was replaced: {kept}') from error
        if not is_main_process():
            return
        marker = self.last_ckpt
        if getattr(runner, 'resolves_relative_last_checkpoint', False):
            marker = last_checkpoint_text(runner.work_dir, self.last_ckpt)
        atomic_write_text(marker, osp.join(runner.work_dir, LAST_CHECKPOINT_MARKER))
        for path in outdated:
            if path != self.last_ckpt:
                self._remove_checkpoint(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """The parent's logic, with the previous best checkpoint removed only after the new one is saved."""
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        current = (getattr(self, 'best_ckpt_path', None), *getattr(self, 'best_ckpt_path_dict', {}).values(),
                   self.last_ckpt)
        if is_main_process():
            deferred.apply(keep=tuple(path for path in current if path))
