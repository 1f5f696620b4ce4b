"""Timers of a model's submodules for the training benchmark: forward time of matched modules, and the ranking
losses' forward and backward (:mod:`brs_detr.benchmarks.train`). On CUDA each timing point synchronises the device.
"""
from __future__ import annotations

import re
import time
from typing import Callable, Dict

import torch
from torch import nn


class ForwardTimer:
    """Accumulates the forward time (and calls) of given submodules through forward pre- and post-hooks.

    Attributes:
        names (list[str]): Qualified names of the timed modules.
        forward (float): Seconds in their forward since the last :meth:`reset`.
        forward_calls (int): Calls since the last :meth:`reset`.
    """

    def __init__(self, modules: Dict[str, nn.Module], device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock
        self.names = list(modules)
        self._starts: Dict[int, float] = {}
        self._handles = []
        self.reset()
        for module in modules.values():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _pre_hook(self, module: nn.Module, args) -> None:
        self._sync()
        self._starts[id(module)] = self.clock()

    def _post_hook(self, module: nn.Module, args, output) -> None:
        self._sync()
        self.forward += self.clock() - self._starts.pop(id(module))
        self.forward_calls += 1

    @property
    def total(self) -> float:
        """Seconds timed since the last :meth:`reset`."""
        return self.forward

    def reset(self) -> None:
        self.forward = 0.0
        self.forward_calls = 0

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class ModuleTimer(ForwardTimer):
    """Accumulates the forward time of the submodules whose qualified name matches ``pattern`` (outermost matches
    only, so nested matches are not counted twice)."""

    def __init__(self, model: nn.Module, pattern: str, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        regex = re.compile(pattern)
        matched: Dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            if name and regex.search(name) and not any(name.startswith(parent + '.') for parent in matched):
                matched[name] = module
        super().__init__(matched, device, clock)


class RankingLossTimer(ForwardTimer):
    """Accumulates the time spent inside the ranking losses of ``model``, forward and backward.

    Forward: pre/post forward hooks on every :class:`RankingLoss` submodule. Backward: the backward of the
    losses' autograd Function is replaced by a timed wrapper until :meth:`remove` (restores it). On CUDA each
    timing point synchronises ``device``.

    Attributes:
        backward (float): Seconds in the Function's backward since the last :meth:`reset`.
        backward_calls (int): Calls since the last :meth:`reset`.
    """

    def __init__(self, model: nn.Module, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from brs_detr.models.losses import RankingLoss
        # private on purpose: the tool times exactly the Function whose backward scatters the gradients
        from brs_detr.models.losses.ranking_loss import _RankingLossFunction

        super().__init__({name: module for name, module in model.named_modules() if isinstance(module, RankingLoss)},
                         device, clock)
        self._function = _RankingLossFunction
        self._saved_backward = _RankingLossFunction.__dict__['backward']
        self._function.backward = staticmethod(self._timed(_RankingLossFunction.backward))

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

    @property
    def total(self) -> float:
        """Forward plus backward seconds since the last :meth:`reset`."""
        return self.forward + self.backward

    def reset(self) -> None:
        super().reset()
        self.backward = 0.0
        self.backward_calls = 0

    def remove(self) -> None:
        """Remove the hooks and restore the Function's backward."""
        super().remove()
        if self._function is not None:
            self._function.backward = self._saved_backward
            self._function = None
