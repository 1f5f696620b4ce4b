"""Ranking over the global batch of all processes (``rank_across_processes=True`` of the ranking losses).

By default a ranking loss ranks the logits of its own process's batch (the published method: one call per GPU).
With the option on, every process ranks the logits of the *global* batch: it receives from the other processes the
examples that can change the loss and computes the loss of the whole batch, as one process with all images would.

What a process receives: every positive and every negative with ``s >= min(global positive logits) - delta``. All
other negatives have ``H(s_n - s_i) = 0`` for every positive ``i``: they are in no bucket, no ``N_FP`` and get no
gradient (docs/losses.md, "Algorithms"), so leaving them out changes nothing. Ignored examples (target < 0) are
never sent. Three collectives per loss call: the global minimum positive logit (with a flag that makes every process
raise when one process has invalid inputs, instead of leaving the others waiting), the number of examples each
process sends (a host sync: the receive buffers need the sizes), and the examples themselves (padded to the largest
count). The received logits carry no gradient.

The examples are placed in process order, this process's full input at its own place, so that every process (and a
single process given the concatenated batch) sees the relevant examples in the same order: the loss values are the
same on every process, bit for bit on the CPU.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

#: Bytes of one entry of the gathered sizes (int64).
SIZE_BYTES = 8
#: Registered ranking losses (configs with one of these types take ``rank_across_processes``).
RANKING_LOSS_TYPES = ('RankSortLoss', 'BucketedRankSortLoss', 'APLoss', 'BucketedAPLoss')


def set_rank_across_processes(cfg, value: bool = True) -> int:
    """Set ``rank_across_processes`` in every ranking-loss config below ``cfg`` (nested dicts and lists).

    Args:
        cfg (dict | list): A model config (or any part of one), changed in place.
        value (bool): The option's value.

    Returns:
        int: Number of ranking-loss configs set.
    """
    count = 0
    if isinstance(cfg, dict):
        if cfg.get('type') in RANKING_LOSS_TYPES:
            cfg['rank_across_processes'] = value
            count += 1
        for child in cfg.values():
            count += set_rank_across_processes(child, value)
    elif isinstance(cfg, (list, tuple)):
        for child in cfg:
            count += set_rank_across_processes(child, value)
    return count


def process_count() -> int:
    """Number of processes of the default process group; 1 without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@dataclass
class GlobalBatch:
    """The logits of the global batch as one process sees them.

    Attributes:
        logits (Tensor): The other processes' relevant logits and this process's full input, in process order (T,).
        targets (Tensor): Their targets (T,).
        start (int): Position of this process's first logit in ``logits``.
        num_local (int): Number of this process's logits (its full input, M).
        world_size (int): Number of processes.
        gathered_bytes (int): Bytes this process received: the sizes and the padded examples of every process.
    """
    logits: Tensor
    targets: Tensor
    start: int
    num_local: int
    world_size: int
    gathered_bytes: int

    @property
    def local(self) -> slice:
        """Where this process's logits lie in :attr:`logits`."""
        return slice(self.start, self.start + self.num_local)


def agree_on_inputs(error: Optional[Exception], positive_logits_min: Tensor, loss_name: str) -> Tensor:
    """All-reduce the smallest positive logit, and fail on every process when one process's inputs are invalid.

    Args:
        error (Exception, optional): This process's input error (raised again here after the collective).
        positive_logits_min (Tensor): Smallest positive logit of this process (scalar, ``+inf`` without positives).
        loss_name (str): Name of the loss, for the error message.

    Returns:
        Tensor: The smallest positive logit of all processes (scalar, ``+inf`` if there is none).

    Raises:
        Exception: This process's own ``error``, or a ``FloatingPointError`` naming the process whose inputs
            were invalid.
    """
    # MIN over [smallest positive, -(1 + rank) of a failing process, else 0]: names the last failing process
    failed = 0.0 if error is None else -(1.0 + dist.get_rank())
    stats = torch.stack([positive_logits_min.reshape(()), positive_logits_min.new_tensor(failed)])
    dist.all_reduce(stats, op=dist.ReduceOp.MIN)
    if error is not None:
        raise error
    flag = float(stats[1])
    if flag < 0:
        raise FloatingPointError(f'{loss_name}: the inputs of process {int(-flag) - 1} are invalid (see its '
                                 'error); every process stops instead of waiting for it')
    return stats[0]


def gather_global_batch(logits: Tensor, targets: Tensor, delta: float, loss_name: str,
                        error: Optional[Exception] = None) -> GlobalBatch:
    """Collect the examples of the other processes that can change this loss (see the module docstring).

    Every process of the default group must call this, with the same ``delta``, once per loss call.

    Args:
        logits (Tensor): This process's logits (M,), in the dtype the loss computes in (float32 or float64).
        targets (Tensor): Their targets (M,), same dtype: > 0 positive, 0 negative, < 0 ignored.
        delta (float): Smoothing of the step function: negatives below ``min(positives) - delta`` are irrelevant.
        loss_name (str): Name of the loss, for error messages.
        error (Exception, optional): This process's input error; raised on every process.

    Returns:
        GlobalBatch: The global batch as this process sees it.
    """
    world_size, rank = dist.get_world_size(), dist.get_rank()
    num_local = logits.numel()
    # the agreement runs in float64 whatever the inputs (a process with invalid inputs must still take part)
    local_min = torch.full((), float('inf'), dtype=torch.float64, device=logits.device)
    if error is None and num_local:
        positive = targets > 0
        local_min = torch.where(positive, logits, logits.new_tensor(float('inf'))).amin().to(torch.float64)
    global_min = agree_on_inputs(error, local_min, loss_name).to(logits.dtype)  # exact: a value of that dtype
    positive = targets > 0
    size_bytes = world_size * SIZE_BYTES
    if not bool(torch.isfinite(global_min)):  # no positive anywhere: nothing to rank
        return GlobalBatch(logits, targets, 0, num_local, world_size, 0)
    # the same threshold expression as RankingLoss.compute (in the same dtype), so the same negatives are relevant
    threshold = global_min - delta
    shared = positive | ((targets == 0) & (logits >= threshold))
    examples = torch.stack([logits[shared], targets[shared]])  # (2, n)
    count = torch.tensor([examples.shape[1]], dtype=torch.int64, device=logits.device)
    counts = [torch.empty_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes: List[int] = torch.cat(counts).tolist()
    largest = max(sizes)
    padded = examples.new_zeros(2, largest)
    padded[:, :examples.shape[1]] = examples
    received = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(received, padded)
    parts_logits, parts_targets = [], []
    for process, (part, size) in enumerate(zip(received, sizes)):
        if process == rank:
            parts_logits.append(logits)
            parts_targets.append(targets)
        else:
            parts_logits.append(part[0, :size])
            parts_targets.append(part[1, :size])
    gathered_bytes = size_bytes + world_size * padded.numel() * padded.element_size()
    return GlobalBatch(torch.cat(parts_logits), torch.cat(parts_targets), sum(sizes[:rank]), num_local, world_size,
                       gathered_bytes)
