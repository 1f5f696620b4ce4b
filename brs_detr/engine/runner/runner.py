"""mmengine's Runner with crash-safe work_dir files and checkpoints that must fit the model."""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from typing import Callable, List, Optional, Union

from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

from mmdet.registry import RUNNERS

from brs_detr.fileio.atomic_io import atomic_write_text
from brs_detr.fileio.checkpoint import CheckpointReadError, check_checkpoint_readable
from .checkpoint_fit import state_dict_fit

#: File in the work_dir naming the latest checkpoint (written by the CheckpointHook).
LAST_CHECKPOINT_MARKER = 'last_checkpoint'
#: Names of the checkpoints the CheckpointHook writes by default (``epoch_N.pth`` / ``iter_N.pth``).
RESUMABLE_CHECKPOINT = re.compile(r'^(epoch|iter)_\d+\.pth$')
#: How strictly a checkpoint loaded with ``load_from`` must fit the model (resuming is always ``'exact'``).
FIT_POLICIES = ('partial', 'weights')
#: Buffers a checkpoint of the same model may lack without changing its predictions (older BatchNorm checkpoints).
OPTIONAL_BUFFER_SUFFIXES = ('num_batches_tracked', )


class CheckpointFitError(ValueError):
    """A checkpoint does not fit the model: another model, backbone or number of classes."""


def _is_complete(path: str) -> bool:
    try:
        check_checkpoint_readable(path)
    except (OSError, CheckpointReadError):
        return False
    return True


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names, if it is complete, else the
    newest complete ``epoch_N.pth``/``iter_N.pth`` of ``work_dir`` (with a warning); ``None`` when there is none.
    """
    marker = osp.join(work_dir, LAST_CHECKPOINT_MARKER)
    named = None
    if osp.isfile(marker):
        with open(marker, encoding='utf-8') as file:
            named = file.read().strip() or None
        if named is not None and osp.isfile(named) and _is_complete(named):
            return named
    candidates: List[str] = []
    if osp.isdir(work_dir):
        candidates = [osp.join(work_dir, name) for name in os.listdir(work_dir) if RESUMABLE_CHECKPOINT.match(name)]
    candidates = sorted((path for path in candidates if _is_complete(path)), key=osp.getmtime)
    if not candidates:
        return None
    if named is not None or osp.isfile(marker):
        print_log(f'{marker} names {named or "nothing"}, which is missing or incomplete; resuming from the newest '
                  f'complete checkpoint {candidates[-1]} instead', logger='current', level=logging.WARNING)
    return candidates[-1]


@RUNNERS.register_module()
class ReliableRunner(Runner):
    """mmengine's :class:`~mmengine.runner.Runner`, with what changes listed here (``tools/train.py`` and
    ``tools/test.py`` use it unless the config names a ``runner_type``).

    * The config dump in the work_dir is written atomically (mmengine truncates and rewrites it in place).
    * ``resume=True`` without ``load_from`` resumes from :func:`find_resumable_checkpoint`: when ``last_checkpoint``
      is missing, empty or names a file that is gone or truncated, the newest complete checkpoint is used instead
      of failing (mmengine then tries to load an empty path).
    * A checkpoint's state dict is compared with the model's before anything is loaded:

      - resuming needs an exact fit (mmengine loads with ``strict=False``: a checkpoint of another model resumes
        with a warning and partly random weights);
      - ``load_from`` with ``checkpoint_fit='partial'`` (training; fine-tuning from another number of classes is
        normal) refuses only a checkpoint of which nothing fits and logs what does not;
        ``checkpoint_fit='weights'`` (testing) refuses any missing or reshaped weight (a missing BatchNorm
        ``num_batches_tracked`` counter is tolerated: it does not change predictions).

      The error (:class:`CheckpointFitError`) names the file, counts what fits and lists the first mismatching
      keys with their shapes.
    """

    #: How strictly a ``load_from`` checkpoint must fit (one of :data:`FIT_POLICIES`); set by the tools.
    checkpoint_fit: str = 'partial'
    _resuming = False

    def dump_config(self) -> None:
        """Write the config into the work_dir atomically (only on the main process, as the parent does)."""
        from mmengine.dist import is_main_process
        if not is_main_process():
            return
        filename = osp.basename(self.cfg.filename) if self.cfg.filename is not None else f'{self.timestamp}.py'
        atomic_write_text(self.cfg.dump(), osp.join(self.work_dir, filename))  # dump() returns the text

    def load_or_resume(self) -> None:
        if not self._has_loaded and self._resume and self._load_from is None:
            found = find_resumable_checkpoint(self.work_dir)
            if found is not None:
                self.logger.info(f'Auto resumed from the latest checkpoint {found}.')
                self._load_from = found
            else:
                self.logger.warning(f'resume=True but {self.work_dir} has no checkpoint: training starts from '
                                    'scratch')
                self._resume = False
        super().load_or_resume()

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        self._resuming = True
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._resuming = False

    def _check_fit(self, filename: str, checkpoint: dict, model, revise_keys: list) -> None:
        state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise CheckpointFitError(f'{filename} holds no state dict (expected a dict with "state_dict")')
        for pattern, replacement in revise_keys:
            state = {re.sub(pattern, replacement, key): value for key, value in state.items()}
        if self.checkpoint_fit not in FIT_POLICIES:
            raise ValueError(f'checkpoint_fit must be one of {FIT_POLICIES}, got {self.checkpoint_fit!r}')
        fit = state_dict_fit(model.state_dict(), state)
        if fit.exact:
            return
        config = self.cfg.filename or 'the config'
        if self._resuming:
            raise CheckpointFitError(f'cannot resume from {filename}: it is not a checkpoint of the model of '
                                     f'{config} ({fit.describe()}). Resume with the config it was trained with.')
        missing_weights = [key for key in fit.missing if not key.endswith(OPTIONAL_BUFFER_SUFFIXES)]
        if self.checkpoint_fit == 'weights' and (missing_weights or fit.reshaped):
            raise CheckpointFitError(f'the weights {filename} do not fit the model of {config} ({fit.describe()}): '
                                     'they were trained with another config (model, backbone or number of classes)')
        if fit.num_loaded == 0:
            raise CheckpointFitError(f'nothing in {filename} fits the model of {config} ({fit.describe()}): it is '
                                     'a checkpoint of another model')
        self.logger.warning(f'{filename} fits the model of {config} only partly: {fit.describe()}')

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006  (the parent's signature)
        """The parent's steps (read, ``after_load_checkpoint`` hooks, load into the model), with the fit check
        before the weights are loaded."""
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        # mmengine loads the weights of a test-time-augmentation model into its detector (tools/test.py --tta)
        self._check_fit(filename, checkpoint, model.module if isinstance(model, BaseTTAModel) else model, revise_keys)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
