"""Loss benchmark, worker side: the grid's cells, their inputs, and the process that times them.

Used by :mod:`brs_detr.benchmarks.loss` (``tools/benchmark_loss.py``, see ``docs/benchmark_loss.md``), which
starts :func:`worker_main` in a spawned process and sends it one cell at a time. The worker builds each loss from
mmdet's MODELS registry, times forward + backward of one call on the cell's logits (a warm-up call, whose peak
extra memory is measured, then timed repeats within the cell's budget) and sends back a :class:`CellResult`.

Peak memory on CPU: torch's allocations are invisible to tracemalloc, so :class:`_CpuMemoryProbe` measures the
process's resident set (``malloc_trim``, then the kernel's peak-RSS counter reset through ``/proc/self/clear_refs``;
Linux only). On CUDA :class:`_CudaMemoryProbe` reads ``torch.cuda.max_memory_allocated``.
"""
import ctypes
import ctypes.util
import gc
import math
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class LossSpec:
    """One row of the benchmark.

    Attributes:
        title (str): Row name in the table.
        cfg (dict): mmdet MODELS config of the loss.
        binary_targets (bool): Targets are 1 for positives (AP, BAP, focal) instead of IoUs.
    """
    title: str
    cfg: dict
    binary_targets: bool


#: Losses by command-line key, in table order.
LOSSES: Dict[str, LossSpec] = {
    'focal': LossSpec('focal (mmdet sigmoid)', dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25),
                      True),
    'rs': LossSpec('RS (pairwise)', dict(type='RankSortLoss', delta=0.5, method='pairwise'), False),
    'rs_exact': LossSpec('RS exact', dict(type='RankSortLoss', delta=0.5, method='exact'), False),
    'brs': LossSpec('BRS', dict(type='BucketedRankSortLoss', delta=0.5), False),
    'ap': LossSpec('AP (pairwise)', dict(type='APLoss', delta=1.0, method='pairwise'), True),
    'ap_exact': LossSpec('AP exact', dict(type='APLoss', delta=1.0, method='exact'), True),
    'bap': LossSpec('BAP', dict(type='BucketedAPLoss', delta=1.0), True),
}

#: Logit generators: (negative mean, negative std, positive mean, positive std).
REGIMES: Dict[str, Tuple[float, float, float, float]] = {
    'early': (0.0, 1.0, 0.0, 1.0),
    'trained': (-3.0, 1.5, 1.0, 1.5),
}
REGIME_TEXT = {
    'early': 'all logits N(0, 1)',
    'trained': 'negatives N(-3, 1.5), positives N(1, 1.5)',
}

#: Lower end of the positives' IoU targets (uniform in (IOU_LOW, 1]).
IOU_LOW = 0.1
MIB = 1024 * 1024


@dataclass
class CellResult:
    """Measurement of one (regime, size, ratio, loss) cell.

    ``status`` is ``ok``, ``over_budget`` (first call killed after the budget), ``skipped`` (a smaller cell of
    the same loss and regime was over budget) or ``failed`` (the worker crashed or the loss raised).
    """
    regime: str
    size: int
    ratio: float
    loss: str
    num_pos: int
    budget_s: float = 0.0
    status: str = 'ok'
    median_ms: Optional[float] = None
    median_cpu_ms: Optional[float] = None
    first_ms: Optional[float] = None
    times_ms: List[float] = field(default_factory=list)
    cpu_ms: List[float] = field(default_factory=list)
    peak_mib: Optional[float] = None
    loss_values: Dict[str, float] = field(default_factory=dict)
    error: str = ''
    load1: Optional[float] = None


def cell_seed(seed: int, regime: str, size: int, ratio: float) -> int:
    """Deterministic seed of one grid cell (the same inputs for every loss of the cell)."""
    return (seed * 1_000_003 + zlib.crc32(f'{regime}/{size}/{ratio!r}'.encode())) % (2 ** 63)


def num_positives(size: int, ratio: float) -> int:
    """Number of positives of a cell: ``round(size * ratio)``, at least 1."""
    return max(1, int(round(size * ratio)))


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


def _libc_function(name: str) -> Optional[Callable]:
    """A function of the C library (``malloc_trim``, ``mallopt``: glibc only), or None where it has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6'), name)
    except (OSError, AttributeError):
        return None


class _CpuMemoryProbe:
    """Peak extra resident memory of a call on Linux, via ``/proc/self/clear_refs`` and ``/proc/self/status``."""

    available = True

    def __init__(self) -> None:
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self._read('VmHWM')
        except OSError:
            self.available = False
        self._malloc_trim = _libc_function('malloc_trim')

    @staticmethod
    def _read(key: str) -> int:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
        raise OSError(f'{key} not in /proc/self/status')

    def start(self) -> None:
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset the peak resident set size (VmHWM) to the current one
        self._base = self._read('VmRSS')

    def stop(self) -> float:
        return (self._read('VmHWM') - self._base) / MIB


class _CudaMemoryProbe:
    available = True

    def __init__(self, device: torch.device) -> None:
        self._device = device

    def start(self) -> None:
        torch.cuda.synchronize(self._device)
        self._base = torch.cuda.memory_allocated(self._device)
        torch.cuda.reset_peak_memory_stats(self._device)

    def stop(self) -> float:
        torch.cuda.synchronize(self._device)
        return (torch.cuda.max_memory_allocated(self._device) - self._base) / MIB


class _NoMemoryProbe:
    available = False

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return float('nan')


#: glibc ``mallopt`` parameters and values of ``--malloc keep``: freed memory stays in the process (trimmed only by
#: the memory probe's explicit ``malloc_trim``), blocks up to 32 MiB come from the heap instead of fresh mappings.
_MALLOC_KEEP = {'M_TRIM_THRESHOLD': (-1, 1 << 30), 'M_MMAP_THRESHOLD': (-3, 1 << 25)}


def _keep_freed_memory() -> str:
    """Ask glibc to keep freed memory (``--malloc keep``); returns a description, or why it could not."""
    mallopt = _libc_function('mallopt')
    if mallopt is None:
        return 'the C library default (no glibc mallopt)'
    done = [name for name, (param, value) in _MALLOC_KEEP.items() if mallopt(param, value) == 1]
    return ('freed memory kept in the process (glibc ' + ', '.join(f'{n} {_MALLOC_KEEP[n][1] >> 20} MiB'
                                                                     for n in done) + ')') if done else 'glibc default'


class _Runner:
    """Builds the losses and runs cells inside the worker process."""

    def __init__(self, device: str, threads: Optional[int], malloc: str = 'keep') -> None:
        self.malloc = _keep_freed_memory() if malloc == 'keep' else 'glibc default'
        import brs_detr  # noqa: F401  (registers the losses in mmdet's MODELS)
        from mmdet.registry import MODELS
        if threads:
            torch.set_num_threads(threads)
        self.models = MODELS
        gc.freeze()  # the imported modules are permanent: later gc.collect() calls only scan the cells' objects
        self.device = torch.device(device)
        if self.device.type == 'cuda':
            self.probe = _CudaMemoryProbe(self.device)
        elif sys.platform.startswith('linux'):
            self.probe = _CpuMemoryProbe()
            if not self.probe.available:
                self.probe = _NoMemoryProbe()
        else:
            self.probe = _NoMemoryProbe()
        self._cache_key = None

    def info(self) -> dict:
        info = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(self.device),
                    memory_method=type(self.probe).__name__, malloc=self.malloc)
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
        self.probe.start()
        self._sync()
        c0, t0 = time.process_time(), time.perf_counter()
        values = call()
        self._sync()
        first = time.perf_counter() - t0
        first_cpu = time.process_time() - c0
        result.peak_mib = self.probe.stop() if self.probe.available else None
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
