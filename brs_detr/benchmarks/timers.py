"""Timers of a model's submodules for the training benchmark: forward time of matched modules, and the ranking
losses' forward and backward (:mod:`brs_detr.benchmarks.train`). On CUDA each timing point synchronises the device.
"""
from __future__ import annotations

import re
import time
from typing import Callable, Dict, List

import torch
from torch import nn


class ModuleTimer:
    """Accumulates the forward time of the submodules whose qualified name
    matches ``pattern`` (outermost matches only, so nested matches are not
    counted twice)."""

    def __init__(self, model: nn.Module, pattern: str, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock
        self.total = 0.0
        self.names: List[str] = []
        self._starts: Dict[int, float] = {}
        self._handles = []
        regex = re.compile(pattern)
        matched: List[str] = []
        for name, module in model.named_modules():
            if not name or not regex.search(name):
                continue
            if any(name.startswith(parent + '.') for parent in matched):
                continue
            matched.append(name)
            self._handles.append(
                module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))
        self.names = matched

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _pre_hook(self, module: nn.Module, args) -> None:
        self._sync()
        self._starts[id(module)] = self.clock()

    def _post_hook(self, module: nn.Module, args, output) -> None:
        self._sync()
        self.total += self.clock() - self._starts.pop(id(module))

    def reset(self) -> None:
        self.total = 0.0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class RankingLossTimer:
    """Accumulates the time spent inside the ranking losses of ``model``, forward and backward.

    Forward: pre/post forward hooks on every :class:`RankingLoss` submodule. Backward: the backward of the
    losses' autograd Function is replaced by a timed wrapper until :meth:`remove` (restores it). On CUDA each
    timing point synchronises ``device``.

    Attributes:
        names (list[str]): Qualified names of the ranking-loss modules.
        forward (float): Seconds in their forward since the last :meth:`reset`.
        backward (float): Seconds in the Function's backward since the last :meth:`reset`.
        forward_calls, backward_calls (int): Calls since the last :meth:`reset`.
    """

    def __init__(self, model: nn.Module, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from brs_detr.models.losses import RankingLoss
        # private on purpose: the tool times exactly the Function whose backward scatters the gradients
        from brs_detr.models.losses.ranking_loss import _RankingLossFunction

        self.device = device
        self.clock = clock
        self.names = [name for name, module in model.named_modules() if isinstance(module, RankingLoss)]
        self._handles = []
        self._starts: Dict[int, float] = {}
        self.reset()
        for name, module in model.named_modules():
            if isinstance(module, RankingLoss):
                self._handles.append(module.register_forward_pre_hook(self._pre_hook))
                self._handles.append(module.register_forward_hook(self._post_hook))
        self._function = _RankingLossFunction
        self._saved_backward = _RankingLossFunction.__dict__['backward']
        self._function.backward = staticmethod(self._timed(_RankingLossFunction.backward))

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _timed(self, backward: Callable) -> Callable:
        def timed_backward(ctx, *grads):
            self._sync()
            start = self.clock()
            try:
                return backward(ctx, *grads)
            finally:
                self._sync()
                self.backward += self.clock() - start
                self.backward_calls += 1
        return timed_backward

    def _pre_hook(self, module: nn.Module, args) -> None:
        self._sync()
        self._starts[id(module)] = self.clock()

    def _post_hook(self, module: nn.Module, args, output) -> None:
        self._sync()
        self.forward += self.clock() - self._starts.pop(id(module))
        self.forward_calls += 1

    @property
    def total(self) -> float:
        """Forward plus backward seconds since the last :meth:`reset`."""
        return self.forward + self.backward

    def reset(self) -> None:
        self.forward = self.backward = 0.0
        self.forward_calls = self.backward_calls = 0

    def remove(self) -> None:
        """Remove the hooks and restore the Function's backward."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._function is not None:
            self._function.backward = self._saved_backward
            self._function = None
