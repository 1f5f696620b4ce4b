"""Common machinery of the ranking-based losses: input contract, autograd function and module base class."""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .cross_process import gather_global_batch, process_count
from .ranking_core import (NEGATIVE_METHODS, NegativeRanker, PositiveWindows, smoothed_step,
                           sorting_error_and_grad, sorting_error_and_grad_pairwise)
from .sorted_search import sort_ascending

#: Default cap on the number of pairwise elements held at once (|rows| x |cols|), about 32 MB in float64.
DEFAULT_BLOCK_ELEMENTS = 1 << 22
#: Up to this many positives the sorting error is computed densely over the P x P pairs (one block): cheaper
#: than the dominance tree's fixed per-level cost (DETR heads call the loss with tens of positives). Measured
#: (one thread): 1.8 ms dense / 2.2 ms tree at 256 positives, 8.0 / 2.1 ms at 512.
DENSE_SORT_MAX_POSITIVES = 256


def _work_dtype(logits: Tensor) -> torch.dtype:
    """Dtype of the M-sized work: float64 for float64 logits, float32 otherwise (half precision is widened)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _accumulation_dtype(logits: Tensor) -> torch.dtype:
    """Statistics are accumulated in float64 (prefix sums over up to millions of values); MPS lacks float64."""
    return torch.float32 if logits.device.type == 'mps' else torch.float64


class _RankingLossFunction(torch.autograd.Function):
    """Ranking loss whose backward returns the identity-update gradients (Eq. 7-8) instead of autograd's.

    Returns two scalars, the ranking and the sorting loss; each has its own gradient, and the backward
    combines them with their own incoming gradients (the published code used only the first one).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, loss: 'RankingLoss') -> Tuple[Tensor, Tensor]:
        out_dtype = _work_dtype(logits)
        ctx.logits_dtype = logits.dtype
        with torch.autocast(device_type=logits.device.type, enabled=False):
            rank_loss, sort_loss, rank_grad, pos_idx, pos_sort_grad = loss.losses_and_gradients(
                logits.detach(), targets.detach())
        ctx.save_for_backward(rank_grad, pos_idx, pos_sort_grad)
        return rank_loss.to(out_dtype), sort_loss.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_rank: Tensor, grad_sort: Tensor) -> Tuple[Optional[Tensor], None, None]:
        rank_grad, pos_idx, pos_sort_grad = ctx.saved_tensors
        grad = rank_grad * grad_rank.to(rank_grad.dtype)
        grad.index_add_(0, pos_idx, pos_sort_grad * grad_sort.to(rank_grad.dtype))
        return grad.to(ctx.logits_dtype), None, None


class RankingLoss(nn.Module):
    """Base class of AP, RS and their bucketed versions (BRS paper Sec. 3-4).

    Contract: called with 1-D ``logits`` and ``targets`` of equal length. ``targets > 0`` marks a positive
    (its IoU for RS/BRS, any positive value for AP/BAP, where it is treated as 1), ``0`` a negative and ``< 0``
    an ignored example. Returns ``{'loss_rank': ...}`` (plus ``'loss_sort'`` for RS/BRS): scalars multiplied
    by ``loss_weight``. Backward gives the identity-update gradients; each output has its own.

    A positive must have a target strictly greater than 0: a head whose positive box has IoU 0 with its ground
    truth keeps it positive by clamping its target to a small value (see
    :func:`brs_detr.models.losses.ranking_targets`), so it is never silently turned into a negative.

    Args:
        delta (float): Smoothing of the step function (Eq. 2); ``0`` gives the hard step.
        loss_weight (float): Multiplier of every returned loss.
        method (str): How negatives are handled: ``'bucketed'`` (prototypes of the ``|P| + 1`` buckets,
            Sec. 4.1), ``'exact'`` (exact loss from prefix sums, ``O(N log P)``) or ``'pairwise'`` (blocked
            ``O(P N)`` computation, the cost profile of the published losses).
        with_sort (bool): Add the RS sorting error (Eq. 10-11).
        interpolated (bool): AP only: interpolate precision (running maximum over lower-ranked positives,
            a positive counts itself as 1), as the AP loss released with aLRP/RS does.
        block_elements (int): Largest number of pairwise elements held at once by the blocked parts.
        eps (float): A positive spreads its error only when its pmf denominator exceeds ``eps``.
        rank_across_processes (bool): Rank the global batch of all processes instead of this process's batch
            (off by default, as in the paper). Each process receives the other processes' positives and the
            negatives that can change the loss (:mod:`.cross_process`), computes the loss of the global batch (the
            same value on every process) and returns the gradients of its own logits multiplied by the number of
            processes, because DDP averages the gradients over processes: the parameter update then equals that of
            one process with the whole batch. Every process must call the loss the same number of times.
    """

    #: Name used in error messages.
    loss_name = 'RankingLoss'

    def __init__(self, delta: float, loss_weight: float = 1.0, method: str = 'exact', with_sort: bool = False,
                 interpolated: bool = False, block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                 eps: float = 1e-10, rank_across_processes: bool = False) -> None:
        super().__init__()
        if delta < 0:
            raise ValueError(f'{self.loss_name}: delta must be >= 0, got {delta}')
        if method not in NEGATIVE_METHODS:
            raise ValueError(f'{self.loss_name}: method must be one of {NEGATIVE_METHODS}, got {method!r}')
        if interpolated and with_sort:
            raise ValueError(f'{self.loss_name}: interpolated precision is defined for the AP loss only')
        if block_elements < 1:
            raise ValueError(f'{self.loss_name}: block_elements must be positive, got {block_elements}')
        self.delta = float(delta)
        self.loss_weight = loss_weight
        self.method = method
        self.with_sort = with_sort
        self.interpolated = interpolated
        self.block_elements = int(block_elements)
        self.eps = eps
        self.rank_across_processes = bool(rank_across_processes)
        #: Bytes received from other processes by the calls with ``rank_across_processes`` (a running total).
        self.gathered_bytes = 0

    def extra_repr(self) -> str:
        return (f'delta={self.delta}, loss_weight={self.loss_weight}, method={self.method!r}'
                + (', interpolated=True' if self.interpolated else '')
                + (', rank_across_processes=True' if self.rank_across_processes else ''))

    @property
    def ranks_across_processes(self) -> bool:
        """Whether this call ranks the global batch: the option is on and there is more than one process."""
        return self.rank_across_processes and process_count() > 1

    def _check_inputs(self, logits: Tensor, targets: Tensor) -> None:
        if logits.dim() != 1 or targets.dim() != 1 or logits.shape != targets.shape:
            raise ValueError(f'{self.loss_name}: expected 1-D logits and targets of equal length, got logits of '
                             f'shape {tuple(logits.shape)} and targets of shape {tuple(targets.shape)}')
        if not logits.is_floating_point():
            raise TypeError(f'{self.loss_name}: logits must be floating point, got {logits.dtype}')
        if logits.device != targets.device:
            raise ValueError(f'{self.loss_name}: logits on {logits.device} but targets on {targets.device}')
        if logits.numel() == 0:
            return
        # min/max propagate NaN and expose +-Inf: one reduction pass instead of an elementwise isfinite mask
        lo, hi = logits.aminmax()
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            bad = int((~torch.isfinite(logits)).sum())
            raise FloatingPointError(f'{self.loss_name}: {bad} of {logits.numel()} logits are NaN or Inf; refusing '
                                     f'to compute a ranking loss on them')
        t_lo, t_hi = targets.aminmax()
        if bool(torch.isnan(t_lo) | torch.isnan(t_hi)):
            bad = int(torch.isnan(targets).sum())
            raise FloatingPointError(f'{self.loss_name}: {bad} of {targets.numel()} targets are NaN')
        if self.with_sort and bool(t_hi > 1):
            raise ValueError(f'{self.loss_name}: positive targets are IoUs and must lie in (0, 1], got a maximum '
                             f'of {float(t_hi)}')

    def forward(self, logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        """Compute the losses.

        Args:
            logits (Tensor): Classification logits, shape (M,).
            targets (Tensor): Targets, shape (M,): > 0 positive, 0 negative, < 0 ignored.

        Returns:
            dict[str, Tensor]: ``loss_rank`` (and ``loss_sort`` when ``with_sort``), scalars.
        """
        if self.ranks_across_processes:
            # every process must reach the collectives; an invalid input is raised there, on every process
            try:
                self._check_inputs(logits, targets)
            except (ValueError, TypeError, FloatingPointError) as error:
                gather_global_batch(logits.detach(), targets.detach(), self.delta, self.loss_name, error)
                raise  # not reached: the call above raises the error on this process
        else:
            self._check_inputs(logits, targets)
        rank_loss, sort_loss = _RankingLossFunction.apply(logits, targets.to(logits.dtype), self)
        losses = {'loss_rank': rank_loss * self.loss_weight}
        if self.with_sort:
            losses['loss_sort'] = sort_loss * self.loss_weight
        return losses

    def losses_and_gradients(self, logits: Tensor, targets: Tensor) -> Tuple[Tensor, ...]:
        """:meth:`compute` on this process's batch, or on the global batch with ``rank_across_processes``.

        In the global case the losses are those of the global batch and the gradients those of this process's
        logits, multiplied by the number of processes (DDP averages gradients); same returns as :meth:`compute`.
        """
        if not self.ranks_across_processes:
            return self.compute(logits, targets)
        work = _work_dtype(logits)
        batch = gather_global_batch(logits.to(work), targets.to(work), self.delta, self.loss_name)
        self.gathered_bytes += batch.gathered_bytes
        rank_loss, sort_loss, rank_grad, pos_idx, pos_sort_grad = self.compute(batch.logits, batch.targets)
        local = batch.local
        is_local = (pos_idx >= local.start) & (pos_idx < local.stop)
        scale = batch.world_size
        return (rank_loss, sort_loss, rank_grad[local] * scale, pos_idx[is_local] - local.start,
                pos_sort_grad[is_local] * scale)

    def compute(self, logits: Tensor, targets: Tensor) -> Tuple[Tensor, ...]:
        """Losses and identity-update gradients without autograd.

        Args:
            logits (Tensor): Logits (M,), finite.
            targets (Tensor): Targets (M,).

        Returns:
            tuple: ``(rank_loss, sort_loss, rank_grad, pos_idx, pos_sort_grad)``: the two scalar losses (before
            ``loss_weight``), the gradient of the ranking loss for every logit (M,), the indices of the positives
            (P,) and their gradients of the sorting loss (P,). Gradients are float32 (float64 for float64 logits),
            already divided by ``|P|``; backward casts them to the logits' dtype.
        """
        acc = _accumulation_dtype(logits)
        work = _work_dtype(logits)
        logits = logits.to(work)
        pos_idx = torch.nonzero(targets > 0).squeeze(1)
        num_pos = pos_idx.numel()
        if num_pos == 0:
            zero = logits.new_zeros((), dtype=acc)
            return zero, zero, torch.zeros_like(logits), pos_idx, logits.new_zeros(0)
        # from here on the positives are in ascending logit order
        pos_logits, order = sort_ascending(logits.index_select(0, pos_idx))
        pos_idx = pos_idx.index_select(0, order)
        pos_sorted = pos_logits.to(acc)
        threshold = pos_logits[0] - self.delta  # in the negatives' dtype, like every comparison with them

        windows = PositiveWindows(pos_sorted, self.delta)
        ranker = NegativeRanker(logits, targets, windows, threshold, self.method, self.block_elements)
        num_fp = ranker.false_positives()
        rank_pos = windows.upper_sums()
        has_fp = num_fp > self.eps
        if self.interpolated:
            # a positive counts itself as 1 and precision is the running maximum over lower-ranked positives
            rank_pos = rank_pos - float(smoothed_step(torch.zeros(()), self.delta)) + 1
            rank = rank_pos + num_fp
            precision = rank_pos / rank
            best = torch.cummax(precision, 0).values  # ascending logits: positions at or below i
            error = 1 - best
            scale = torch.where(precision >= best, torch.ones_like(best),
                                error / (1 - precision).clamp_min(self.eps))
            spread = torch.where(has_fp, scale / rank, torch.zeros_like(rank))
        else:
            rank = rank_pos + num_fp
            error = num_fp / rank
            spread = torch.where(has_fp, 1 / rank, torch.zeros_like(rank))
        rank_grad = ranker.spread(spread / num_pos)
        rank_grad.index_put_((pos_idx,), (-error / num_pos).to(work))
        rank_loss = error.mean()

        if self.with_sort:
            pos_targets = targets.index_select(0, pos_idx).to(acc)
            if self.method == 'pairwise' or num_pos <= DENSE_SORT_MAX_POSITIVES:
                sort_error, sort_grad = sorting_error_and_grad_pairwise(pos_sorted, pos_targets, self.delta,
                                                                        self.block_elements, self.eps)
            else:
                sort_error, sort_grad = sorting_error_and_grad(windows, pos_targets, rank_pos, self.eps)
            sort_loss = sort_error.mean()
            pos_sort_grad = (sort_grad / num_pos).to(work)
        else:
            sort_loss = rank_loss.new_zeros(())
            pos_sort_grad = logits.new_zeros(num_pos)
        return rank_loss, sort_loss, rank_grad, pos_idx, pos_sort_grad
