"""Loss benchmark, worker side: the cells' inputs and the process that times them.

Used by :mod:`brs_detr.benchmarks.loss` (``tools/benchmark_loss.py``, see ``docs/benchmark_loss.md``), which
starts :func:`worker_main` in a spawned process and sends it one cell at a time. The worker builds each loss from
mmdet's MODELS registry, times forward + backward of one call on the cell's logits (a warm-up call, whose peak
extra memory is measured, then timed repeats within the cell's budget) and sends back a :class:`CellResult`.

The grid itself (losses, regimes, :class:`CellResult`) is :mod:`brs_detr.benchmarks.loss_grid`; peak memory is
measured by :class:`~brs_detr.benchmarks.memory.PeakMemoryMeter` (CPU: the process's peak RSS, Linux only; CUDA:
``torch.cuda.max_memory_allocated``).
"""
import gc
import math
import statistics
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from brs_detr.known_warnings import ignore_known_warnings
from .loss_grid import IOU_LOW, LOSSES, REGIMES, CellResult, cell_seed, num_positives
from .memory import MIB, PeakMemoryMeter, libc_function


def make_inputs(regime: str, size: int, ratio: float, seed: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Logits (L,), IoU targets (L,) and binary labels (L,) of one cell, float32 on the CPU.

    Returns:
        tuple[Tensor, Tensor, Tensor]: logits; targets (IoU in (0.1, 1] for positives, 0 for negatives);
        binary targets (1 for positives, 0 for negatives).
    """
    neg_mean, neg_std, pos_mean, pos_std = REGIMES[regime]
    gen = torch.Generator().manual_seed(cell_seed(seed, regime, size, ratio))
    num_pos = num_positives(size, ratio)
    is_pos = torch.zeros(size, dtype=torch.bool)
    is_pos[torch.randperm(size, generator=gen)[:num_pos]] = True
    noise = torch.randn(size, generator=gen)
    logits = torch.where(is_pos, noise * pos_std + pos_mean, noise * neg_std + neg_mean)
    iou = 1 - (1 - IOU_LOW) * torch.rand(size, generator=gen)  # (0.1, 1]
    targets = torch.where(is_pos, iou, torch.zeros_like(iou))
    return logits, targets, is_pos.float()


#: glibc ``mallopt`` parameters and values of ``--malloc keep``: freed memory stays in the process (trimmed only by
#: the memory probe's explicit ``malloc_trim``), blocks up to 32 MiB come from the heap instead of fresh mappings.
_MALLOC_KEEP = {'M_TRIM_THRESHOLD': (-1, 1 << 30), 'M_MMAP_THRESHOLD': (-3, 1 << 25)}


def _keep_freed_memory() -> str:
    """Ask glibc to keep freed memory (``--malloc keep``); returns a description, or why it could not."""
    mallopt = libc_function('mallopt')
    if mallopt is None:
        return 'the C library default (no glibc mallopt)'
    done = [name for name, (param, value) in _MALLOC_KEEP.items() if mallopt(param, value) == 1]
    return ('freed memory kept in the process (glibc ' + ', '.join(f'{n} {_MALLOC_KEEP[n][1] >> 20} MiB'
                                                                     for n in done) + ')') if done else 'glibc default'


class _Runner:
    """Builds the losses and runs cells inside the worker process."""

    def __init__(self, device: str, threads: Optional[int], malloc: str = 'keep') -> None:
        self.malloc = _keep_freed_memory() if malloc == 'keep' else 'glibc default'
        import brs_detr.models  # noqa: F401  (registers the losses in mmdet's MODELS)
        from mmdet.registry import MODELS
        if threads:
            torch.set_num_threads(threads)
        self.models = MODELS
        gc.freeze()  # the imported modules are permanent: later gc.collect() calls only scan the cells' objects
        self.device = torch.device(device)
        self.memory = PeakMemoryMeter(self.device)
        self._cache_key = None

    def info(self) -> dict:
        info = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(self.device),
                    memory_method=self.memory.method, malloc=self.malloc)
        if self.device.type == 'cuda':
            info['device_name'] = torch.cuda.get_device_name(self.device)
        return info

    def _inputs(self, regime: str, size: int, ratio: float, seed: int) -> List[Tensor]:
        key = (regime, size, ratio, seed)
        if key != self._cache_key:
            self._cache = [t.to(self.device) for t in make_inputs(regime, size, ratio, seed)]
            self._cache_key = key
        return self._cache

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _make_call(self, loss_key: str, logits: Tensor, targets: Tensor,
                   binary: Tensor) -> Callable[[], Dict[str, Tensor]]:
        spec = LOSSES[loss_key]
        loss = self.models.build(spec.cfg).to(self.device)
        if loss_key == 'focal':
            # mmdet's one-class sigmoid focal loss: predictions (L, 1), labels 0 (the class) or 1 (background),
            # averaged over the positives as the dense heads do. On CUDA mmdet uses the mmcv kernel.
            labels = (binary == 0).long()
            num_pos = binary.sum()

            def call():
                x = logits[:, None].detach().requires_grad_()
                value = loss(x, labels, avg_factor=num_pos)
                value.backward()
                return {'loss_cls': value}
        else:
            cell_targets = binary if spec.binary_targets else targets

            def call():
                x = logits.detach().requires_grad_()
                values = loss(x, cell_targets)
                sum(values.values()).backward()
                return values
        return call

    def run(self, cell: dict, conn) -> CellResult:
        result = CellResult(cell['regime'], cell['size'], cell['ratio'], cell['loss'],
                            num_positives(cell['size'], cell['ratio']), cell['max_seconds'])
        logits, targets, binary = self._inputs(cell['regime'], cell['size'], cell['ratio'], cell['seed'])
        call = self._make_call(cell['loss'], logits, targets, binary)
        repeat_budget = cell['repeat_seconds']
        conn.send(('start', None))
        # warm-up call: its memory is measured, its time decides how many repeats fit in the budget
        self.memory.reset()
        self._sync()
        c0, t0 = time.process_time(), time.perf_counter()
        values = call()
        self._sync()
        first = time.perf_counter() - t0
        first_cpu = time.process_time() - c0
        if self.memory.resettable:
            peak, baseline = self.memory.read()
            result.peak_mib = (peak - baseline) / MIB
        result.first_ms = first * 1e3
        result.loss_values = {k: float(v.detach()) for k, v in values.items()}
        if not all(math.isfinite(v) for v in result.loss_values.values()):
            result.status, result.error = 'failed', f'non-finite loss values {result.loss_values}'
            return result
        conn.send(('first', result.first_ms))
        times: List[float] = []
        while len(times) < cell['repeats']:
            estimate = times[-1] if times else first
            if time.perf_counter() - t0 + estimate > repeat_budget:
                break
            self._sync()
            c1, t1 = time.process_time(), time.perf_counter()
            call()
            self._sync()
            times.append(time.perf_counter() - t1)
            result.cpu_ms.append((time.process_time() - c1) * 1e3)  # all threads: shows contention
        result.times_ms = [t * 1e3 for t in times]
        result.median_ms = statistics.median(result.times_ms) if times else result.first_ms
        result.median_cpu_ms = statistics.median(result.cpu_ms) if times else first_cpu * 1e3
        return result


def worker_main(conn, device: str, threads: Optional[int], malloc: str) -> None:
    """Worker process: receives cells, sends ``('start')``, ``('first', ms)`` and ``('done', result)``.

    Args:
        conn (multiprocessing.connection.Connection): The worker's end of the pipe to the parent; ``None``
            received on it ends the worker.
        device (str): torch device of the losses and inputs.
        threads (int, optional): torch intra-op threads (torch's default when None).
        malloc (str): ``'keep'`` (glibc keeps freed memory) or ``'default'``.
    """
    ignore_known_warnings()  # a spawned process: the parent's warning filters do not reach it
    try:
        runner = _Runner(device, threads, malloc)
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(('error', f'{type(exc).__name__}: {exc}'))
        return
    conn.send(('ready', runner.info()))
    while True:
        cell = conn.recv()
        if cell is None:
            return
        try:
            result = runner.run(cell, conn)
        except Exception as exc:
            result = CellResult(cell['regime'], cell['size'], cell['ratio'], cell['loss'],
                                num_positives(cell['size'], cell['ratio']), cell['max_seconds'], status='failed',
                                error=f'{type(exc).__name__}: {exc}')
        conn.send(('done', asdict(result)))
