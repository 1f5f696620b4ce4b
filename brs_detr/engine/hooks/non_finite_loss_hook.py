"""Stop training, or skip the iteration, when a loss becomes NaN or infinite: before the update reaches the weights."""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.dist import all_gather, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

#: What the hook does about a non-finite loss.
ACTIONS = ('stop', 'skip')
#: Default limit of consecutive skipped iterations before training stops anyway.
DEFAULT_MAX_CONSECUTIVE_SKIPS = 10
#: Substring that marks the log variables summed into the training loss (as in mmengine's ``parse_losses``).
LOSS_KEY_MARKER = 'loss'


class NonFiniteError(FloatingPointError):
    """A loss (or a weight about to be saved) is NaN or infinite; training stopped."""


def _first_non_finite(named_tensors) -> Optional[str]:
    """Name of the first floating-point tensor with a NaN/Inf value, or ``None``."""
    for name, tensor in named_tensors:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Check every training loss before the backward pass; stop, or skip the update, when one is NaN/Inf.

    mmengine's ``train_step`` sums the losses (``parse_losses``) and immediately runs backward and the optimizer
    step; a NaN/Inf loss turns every weight into NaN and the run goes on, saving NaN checkpoints, until someone reads
    the log. This hook wraps the model's ``parse_losses`` and the optimizer wrapper's ``update_params`` for the
    duration of training (instance attributes, removed in ``after_train``):

    * after ``parse_losses``, all log variables of the iteration are copied to the host in one transfer (in a
      distributed run: gathered from every rank in one ``all_gather``, so all ranks take the same decision). The
      returned log variables are these host copies, so the logging hooks no longer synchronise once per key: the
      check replaces their synchronisations instead of adding one;
    * a non-finite value of a loss term (a key containing ``'loss'``) is reported with its key, its rank, the
      iteration and the epoch. ``action='stop'`` raises :class:`NonFiniteError` before backward: the weights,
      the optimizer state and the checkpoints stay as they were after the last good iteration.
      ``action='skip'`` logs a warning and makes ``update_params`` skip backward and the optimizer step of this
      iteration (gradients accumulated in the current ``accumulative_counts`` window are dropped too); more than
      ``max_consecutive_skips`` skips in a row stop training;
    * before a checkpoint is saved its weights are checked: a NaN/Inf weight (e.g. from a non-finite gradient of a
      finite loss) stops training instead of saving it.

    Args:
        action: ``'stop'`` (default) or ``'skip'``.
        max_consecutive_skips: With ``action='skip'``, how many iterations in a row may be skipped before training
            stops.
        check_checkpoint_weights: Refuse to save a checkpoint whose weights are not finite.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 action: str = 'stop',
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS,
                 check_checkpoint_weights: bool = True) -> None:
        if action not in ACTIONS:
            raise ValueError(f'NonFiniteLossHook: action must be one of {ACTIONS}, got {action!r}')
        if int(max_consecutive_skips) < 0:
            raise ValueError(f'NonFiniteLossHook: max_consecutive_skips must be >= 0, got {max_consecutive_skips}')
        self.action = action
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.check_checkpoint_weights = check_checkpoint_weights
        self.consecutive_skips = 0
        self.skipped_iters: List[int] = []
        self._skip_update = False
        self._batch_idx = 0
        self._runner = None
        self._patched: List[Tuple[object, str]] = []

    # ------------------------------------------------------------------ installing the wrappers
    def before_train(self, runner) -> None:
        self._runner = runner
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._patch(model, 'parse_losses', self._guard_parse_losses(model.parse_losses))
        optim_wrapper = runner.optim_wrapper
        if hasattr(optim_wrapper, 'update_params') and hasattr(optim_wrapper, 'zero_grad'):
            self._patch(optim_wrapper, 'update_params', self._guard_update_params(optim_wrapper))
        elif self.action == 'skip':
            raise ValueError(f'NonFiniteLossHook(action="skip") needs a single OptimWrapper, got '
                             f'{type(optim_wrapper).__name__}; use action="stop"')

    def _patch(self, owner: object, name: str, replacement: Callable) -> None:
        setattr(owner, name, replacement)
        self._patched.append((owner, name))

    def after_train(self, runner) -> None:
        for owner, name in self._patched:
            vars(owner).pop(name, None)
        self._patched.clear()
        if self.skipped_iters:
            shown = ', '.join(map(str, self.skipped_iters[:20])) + (', ...' if len(self.skipped_iters) > 20 else '')
            print_log(f'NonFiniteLossHook: {len(self.skipped_iters)} iterations were skipped because of a '
                      f'non-finite loss: {shown}', logger='current', level=logging.WARNING)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._batch_idx = batch_idx

    # ------------------------------------------------------------------ the checks
    def _guard_parse_losses(self, parse_losses: Callable) -> Callable:

        def guarded(losses: Dict[str, torch.Tensor]):
            loss, log_vars = parse_losses(losses)
            return loss, self._check_log_vars(log_vars)

        return guarded

    def _guard_update_params(self, optim_wrapper) -> Callable:
        update_params = optim_wrapper.update_params

        def guarded(loss: torch.Tensor, step_kwargs: Optional[dict] = None, zero_kwargs: Optional[dict] = None):
            if not self._skip_update:
                return update_params(loss, step_kwargs=step_kwargs, zero_kwargs=zero_kwargs)
            self._skip_update = False
            optim_wrapper._inner_count += 1  # the iteration still counts (accumulation windows stay aligned)
            optim_wrapper.zero_grad(**(zero_kwargs or {}))
            return None

        return guarded

    def _gather_to_host(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of every rank as a (world_size, K) CPU tensor (one transfer, one collective)."""
        if get_world_size() > 1:
            values = torch.stack(all_gather(values))
        else:
            values = values[None]
        return values.cpu()

    def _check_log_vars(self, log_vars: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
        names = list(log_vars)
        device = next((v.device for v in log_vars.values() if torch.is_tensor(v)), torch.device('cpu'))
        values = torch.stack([v.detach() if torch.is_tensor(v) else torch.tensor(float(v), device=device)
                              for v in log_vars.values()]).float()
        host = self._gather_to_host(values)
        local = OrderedDict(zip(names, host[get_rank()].unbind()))
        finite = np.isfinite(host.numpy())
        if finite.all():  # the usual case: one check on the host copy
            self.consecutive_skips = 0
            return local
        bad = [(rank, name, float(host[rank, i])) for rank in range(host.shape[0]) for i, name in enumerate(names)
               if LOSS_KEY_MARKER in name and not finite[rank, i]]
        if not bad:  # only values that are not losses (accuracies...) are non-finite: nothing to protect
            self.consecutive_skips = 0
            return local
        self._handle_non_finite(bad, distributed=host.shape[0] > 1)
        return OrderedDict((name, value) for (name, value), ok in zip(local.items(), finite[get_rank()]) if ok)

    def _where(self) -> str:
        runner = self._runner
        epoch_length = len(runner.train_dataloader) if runner is not None else '?'
        return (f'iteration {runner.iter + 1} (epoch {runner.epoch + 1}, batch {self._batch_idx + 1}/'
                f'{epoch_length})')

    def _describe(self, bad: Sequence[Tuple[int, str, float]], distributed: bool) -> str:
        total = [item for item in bad if item[1] == LOSS_KEY_MARKER]
        terms = [item for item in bad if item[1] != LOSS_KEY_MARKER] or total
        text = ', '.join(f'{name}={value}' + (f' on rank {rank}' if distributed else '') for rank, name, value in terms)
        model = self._runner.model
        bad_weight = _first_non_finite(model.named_parameters())
        if bad_weight is not None:
            text += (f'. The weights are already non-finite (first: {bad_weight}): an earlier update with a '
                     f'non-finite gradient of finite losses caused it')
        return text

    def _handle_non_finite(self, bad: Sequence[Tuple[int, str, float]], distributed: bool) -> None:
        where, what = self._where(), self._describe(bad, distributed)
        if self.action == 'skip':
            self.consecutive_skips += 1
            if self.consecutive_skips <= self.max_consecutive_skips:
                self.skipped_iters.append(self._runner.iter + 1)
                print_log(f'Non-finite loss at {where}: {what}. Skipping this iteration (no optimizer step; '
                          f'{self.consecutive_skips} in a row, at most {self.max_consecutive_skips}).',
                          logger='current', level=logging.WARNING)
                self._skip_update = True
                return
            reason = (f'{self.consecutive_skips} iterations in a row had a non-finite loss (more than '
                      f'max_consecutive_skips={self.max_consecutive_skips}); the last one')
        else:
            reason = 'Non-finite loss'
        last_checkpoint = self._runner.message_hub.get_info('last_ckpt')
        message = (f'{reason} at {where}: {what}. Training stopped before this iteration updated the weights. '
                   + (f'The last checkpoint is {last_checkpoint}. ' if last_checkpoint else 'No checkpoint was '
                      'saved yet. ') +
                   'Fix the cause (learning rate, warm-up, data) and resume with --resume, or skip such iterations: '
                   'tools/train.py --non-finite-loss skip (custom_hooks: NonFiniteLossHook(action="skip")).')
        print_log(message, logger='current', level=logging.ERROR)
        raise NonFiniteError(message)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.check_checkpoint_weights:
            return
        bad_weight = _first_non_finite(checkpoint.get('state_dict', {}).items())
        if bad_weight is not None:
            done = checkpoint.get('meta', {}).get('iter', runner.iter)
            message = (f'Refusing to save a checkpoint after iteration {done}: weight {bad_weight} has '
                       f'NaN/Inf values (a non-finite gradient of finite losses?). Training stopped; the checkpoints '
                       f'already saved are unchanged.')
            print_log(message, logger='current', level=logging.ERROR)
            raise NonFiniteError(message)
