#!/usr/bin/env python
"""Benchmark the ranking-based losses on the synthetic grid of the BRS paper (Sec. 5, "efficiency").

Every cell of the grid is one flat logit vector of length ``L`` with a fraction ``m`` of positives, drawn from
one of two stated logit generators (fixed seeds):

* ``early``:   all logits ~ N(0, 1) (an untrained detector: nearly every negative is relevant);
* ``trained``: negatives ~ N(-3, 1.5), positives ~ N(1, 1.5).

Positives' targets (IoUs) are uniform in (0.1, 1]; AP and BAP get binary targets. For each loss the tool
times forward + backward (``loss(logits, targets)``, backward through the sum of the returned values) and
reports the median over ``--repeats`` calls made after one warm-up call, together with the peak extra memory
of one call. The sigmoid focal loss of mmdet on the same logits, as a one-class problem with
``avg_factor = #positives``, is the score-based floor.

Rows (``--losses``): ``focal``, ``rs`` (RankSortLoss, pairwise: the cost profile of the published RS loss),
``rs_exact`` (RankSortLoss, exact prefix-sum method), ``brs`` (BucketedRankSortLoss), ``ap`` (APLoss,
pairwise), ``ap_exact`` (APLoss, exact) and ``bap`` (BucketedAPLoss).

The run ends with the target check: for every cell with L in ``--target-sizes`` (default 1M) that ran both BRS and
focal, the ratio BRS / focal of the reported times and whether it is at most ``--target-ratio`` (default 3).

Every cell runs in a worker process. A cell whose first call does not finish within ``--max-seconds``
(``--pairwise-max-seconds`` for the pairwise rows) is killed and reported as ``> N s`` (the worker is
restarted), and larger cells of the same loss and regime are then skipped. After the first call, timed
repeats run while the cell's total time stays within ``--repeat-seconds``; when not even one fits, the first
call's time is reported (marked ``†``).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the call. On CPU torch's
allocations are invisible to tracemalloc, so the worker measures the process's resident set: free heap memory
is returned to the OS (``malloc_trim``), the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``),
and the peak extra memory is ``VmHWM`` after the call minus ``VmRSS`` before it (Linux only; ``n/a``
elsewhere). This is measured on the warm-up call; the timed calls run on a warm allocator.

Examples::

    # the full grid on CPU (both regimes, 3 sizes, 4 ratios, 7 losses)
    python tools/benchmark_loss.py --out-md work_dirs/benchmark_loss.md --out-png work_dirs/benchmark_loss.png
    # a quick run
    python tools/benchmark_loss.py --sizes 10000 --ratios 0.01 --repeats 2 --out-md /tmp/b.md
    # the target rows: BRS / focal at L = 1M for m up to 5 %, one thread, CPU time (a few minutes)
    python tools/benchmark_loss.py --sizes 1000000 --ratios 0.001 0.01 0.02 0.05 --losses focal brs rs_exact \
        --threads 1 --metric cpu
    # only the fast losses, on a GPU
    python tools/benchmark_loss.py --device cuda --losses focal brs rs_exact bap ap_exact
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


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

#: Rows computed pair by pair (O(P N)); they get their own time budget.
PAIRWISE = ('rs', 'ap')

#: Logit generators: (negative mean, negative std, positive mean, positive std).
REGIMES: Dict[str, Tuple[float, float, float, float]] = {
    'early': (0.0, 1.0, 0.0, 1.0),
    'trained': (-3.0, 1.5, 1.0, 1.5),
}
REGIME_TEXT = {
    'early': 'all logits N(0, 1)',
    'trained': 'negatives N(-3, 1.5), positives N(1, 1.5)',
}

#: Ratio rows of the time table: (title, numerator key, denominator key).
RATIOS: List[Tuple[str, str, str]] = [
    ('BRS / focal', 'brs', 'focal'),
    ('RS (pairwise) / BRS', 'rs', 'brs'),
    ('RS exact / BRS', 'rs_exact', 'brs'),
    ('BAP / focal', 'bap', 'focal'),
    ('AP (pairwise) / BAP', 'ap', 'bap'),
    ('AP exact / BAP', 'ap_exact', 'bap'),
]

#: Table heading of each reported time metric.
METRIC_TEXT = {'wall': 'time', 'cpu': 'CPU time'}

#: Lower end of the positives' IoU targets (uniform in (IOU_LOW, 1]).
IOU_LOW = 0.1
#: Seconds a worker may take to start and to build a cell's inputs before it is considered hung.
SETUP_GRACE_S = 300.0
MIB = 1024 * 1024

DEFAULT_SIZES = [10_000, 100_000, 1_000_000]
DEFAULT_RATIOS = [0.001, 0.01, 0.02, 0.05]


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


# --------------------------------------------------------------------------------------------------------------
# Worker side: runs in a separate process (imports torch, mmdet and brs_detr).
# --------------------------------------------------------------------------------------------------------------

class _CpuMemoryProbe:
    """Peak extra resident memory of a call on Linux, via ``/proc/self/clear_refs`` and ``/proc/self/status``."""

    available = True

    def __init__(self) -> None:
        import ctypes
        import ctypes.util
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self._read('VmHWM')
        except OSError:
            self.available = False
        try:
            self._libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            self._libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            self._libc = None

    @staticmethod
    def _read(key: str) -> int:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
        raise OSError(f'{key} not in /proc/self/status')

    def start(self) -> None:
        import gc
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset the peak resident set size (VmHWM) to the current one
        self._base = self._read('VmRSS')

    def stop(self) -> float:
        return (self._read('VmHWM') - self._base) / MIB


class _CudaMemoryProbe:
    available = True

    def __init__(self, device) -> None:
        import torch
        self._torch, self._device = torch, device

    def start(self) -> None:
        cuda = self._torch.cuda
        cuda.synchronize(self._device)
        self._base = cuda.memory_allocated(self._device)
        cuda.reset_peak_memory_stats(self._device)

    def stop(self) -> float:
        cuda = self._torch.cuda
        cuda.synchronize(self._device)
        return (cuda.max_memory_allocated(self._device) - self._base) / MIB


class _NoMemoryProbe:
    available = False

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return float('nan')


def cell_seed(seed: int, regime: str, size: int, ratio: float) -> int:
    """Deterministic seed of one grid cell (the same inputs for every loss of the cell)."""
    return (seed * 1_000_003 + zlib.crc32(f'{regime}/{size}/{ratio!r}'.encode())) % (2 ** 63)


def num_positives(size: int, ratio: float) -> int:
    """Number of positives of a cell: ``round(size * ratio)``, at least 1."""
    return max(1, int(round(size * ratio)))


def make_inputs(regime: str, size: int, ratio: float, seed: int):
    """Logits (L,), IoU targets (L,) and binary labels (L,) of one cell, float32 on the CPU.

    Returns:
        tuple[Tensor, Tensor, Tensor]: logits; targets (IoU in (0.1, 1] for positives, 0 for negatives);
        binary targets (1 for positives, 0 for negatives).
    """
    import torch
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
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return 'the C library default (no glibc mallopt)'
    done = [name for name, (param, value) in _MALLOC_KEEP.items() if mallopt(param, value) == 1]
    return ('freed memory kept in the process (glibc ' + ', '.join(f'{n} {_MALLOC_KEEP[n][1] >> 20} MiB'
                                                                     for n in done) + ')') if done else 'glibc default'


class _Runner:
    """Builds the losses and runs cells inside the worker process."""

    def __init__(self, device: str, threads: Optional[int], malloc: str = 'keep') -> None:
        self.malloc = _keep_freed_memory() if malloc == 'keep' else 'glibc default'
        import torch
        import brs_detr  # noqa: F401  (registers the losses in mmdet's MODELS)
        from mmdet.registry import MODELS
        if threads:
            torch.set_num_threads(threads)
        self.torch, self.models = torch, MODELS
        import gc
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
        torch = self.torch
        info = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(self.device),
                    memory_method=type(self.probe).__name__, malloc=self.malloc)
        if self.device.type == 'cuda':
            info['device_name'] = torch.cuda.get_device_name(self.device)
        return info

    def _inputs(self, regime: str, size: int, ratio: float, seed: int):
        key = (regime, size, ratio, seed)
        if key != self._cache_key:
            self._cache = [t.to(self.device) for t in make_inputs(regime, size, ratio, seed)]
            self._cache_key = key
        return self._cache

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            self.torch.cuda.synchronize(self.device)

    def _make_call(self, loss_key: str, logits, targets, binary):
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


def _worker_main(conn, device: str, threads: Optional[int], malloc: str) -> None:
    """Worker process: receives cells, sends ``('start')``, ``('first', ms)`` and ``('done', result)``."""
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


# --------------------------------------------------------------------------------------------------------------
# Parent side: schedules cells, enforces the budget, writes the table and the plot.
# --------------------------------------------------------------------------------------------------------------

class _Worker:
    """A worker process that can be killed and replaced when a cell runs over its budget."""

    def __init__(self, device: str, threads: Optional[int], malloc: str) -> None:
        self._device, self._threads, self._malloc = device, threads, malloc
        self._proc = None
        self.info: dict = {}

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context('spawn')
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child, self._device, self._threads, self._malloc),
                                 daemon=True)
        self._proc.start()
        child.close()
        kind, payload = self._recv(SETUP_GRACE_S, 'starting the worker')
        if kind == 'error':
            self.close()
            raise SystemExit(f'benchmark_loss: the worker could not start: {payload}')
        self.info = payload

    def _recv(self, timeout: float, what: str):
        if not self._conn.poll(timeout):
            raise TimeoutError(f'{what} took more than {timeout:.0f} s')
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise ChildProcessError(f'the worker died while {what} (exit code {self._proc.exitcode}; '
                                    f'a negative code is a signal, -9 usually means out of memory)')

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._proc = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (BrokenPipeError, OSError):
                pass
        self.kill()

    def run(self, cell: dict) -> CellResult:
        self._ensure()
        base = CellResult(cell['regime'], cell['size'], cell['ratio'], cell['loss'],
                          num_positives(cell['size'], cell['ratio']), cell['max_seconds'])
        budget = cell['max_seconds']
        self._conn.send(cell)
        try:
            kind, payload = self._recv(SETUP_GRACE_S, 'building the inputs')
            if kind == 'done':  # failed before the first call
                return CellResult(**payload)
            try:
                kind, payload = self._recv(budget, 'the first call')
            except TimeoutError:
                self.kill()
                base.status, base.error = 'over_budget', f'first call killed after {budget:g} s'
                return base
            if kind == 'done':
                return CellResult(**payload)
            # repeats stop by themselves once the repeat budget is used; allow one more call's worth of slack
            slack = cell['repeat_seconds'] + payload + SETUP_GRACE_S
            kind, payload = self._recv(slack, 'the timed repeats')
            return CellResult(**payload)
        except (TimeoutError, ChildProcessError) as exc:
            self.kill()
            base.status, base.error = 'failed', str(exc)
            return base


def _progress_text(r: CellResult) -> str:
    if r.status != 'ok':
        return f'{_time_cell(r):>10s}  {r.error}'
    return (f'{_time_cell(r):>10s} ms (CPU {_time_cell(r, "cpu")} ms)  peak {_mem_cell(r):>6s} MiB  '
            f'{len(r.times_ms)} timed')


def _dominates(smaller: CellResult, size: int, ratio: float) -> bool:
    return smaller.size <= size and smaller.ratio <= ratio


def run_grid(args) -> Tuple[List[CellResult], dict]:
    """Run every requested cell; returns the results and the worker's environment description."""
    worker = _Worker(args.device, args.threads, args.malloc)
    results: List[CellResult] = []
    over: Dict[Tuple[str, str], List[CellResult]] = {}
    cells = [(r, s, m, k) for r in args.regimes for s in sorted(args.sizes) for m in sorted(args.ratios)
             for k in args.losses]
    finished = False
    try:
        for index, (regime, size, ratio, key) in enumerate(cells, 1):
            budget = args.pairwise_max_seconds if key in PAIRWISE else args.max_seconds
            load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
            blockers = [c for c in over.get((regime, key), []) if _dominates(c, size, ratio)]
            if blockers:
                b = blockers[0]
                result = CellResult(regime, size, ratio, key, num_positives(size, ratio), budget, status='skipped',
                                    error=f'{_size_label(b.size)} / {_ratio_label(b.ratio)} already exceeded '
                                          f'the budget')
            else:
                cell = dict(regime=regime, size=size, ratio=ratio, loss=key, seed=args.seed,
                            repeats=args.repeats, max_seconds=budget, repeat_seconds=args.repeat_seconds)
                result = worker.run(cell)
            result.load1 = load
            if result.status in ('over_budget', 'skipped'):
                over.setdefault((regime, key), []).append(result)
            results.append(result)
            print(f'[{index}/{len(cells)}] {regime:7s} L={_size_label(size):>5s} m={_ratio_label(ratio):>5s} '
                  f'{key:9s} {_progress_text(result)}', flush=True)
        info = dict(worker.info)
        finished = True
    finally:
        if finished:
            worker.close()
        else:  # interrupted (Ctrl-C, SIGTERM) or failed: do not wait for a running call
            worker.kill()
    return results, info


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------

def _size_label(size: int) -> str:
    for unit, name in ((1_000_000, 'M'), (1_000, 'K')):
        if size >= unit and size % (unit // 10) == 0:
            return f'{size / unit:g}{name}'
    return str(size)


def _ratio_label(ratio: float) -> str:
    return f'{ratio * 100:g}%'


def _fmt_ms(ms: float) -> str:
    if ms < 10:
        return f'{ms:.2f}'
    if ms < 100:
        return f'{ms:.1f}'
    return f'{ms:.0f}'


def _shown(r: CellResult, metric: str) -> Optional[float]:
    return r.median_cpu_ms if metric == 'cpu' else r.median_ms


def _time_cell(r: CellResult, metric: str = 'wall') -> str:
    if r.status in ('over_budget', 'skipped'):
        return f'> {r.budget_s:g} s' + (' (skipped)' if r.status == 'skipped' else '')
    if r.status == 'failed' or _shown(r, metric) is None:
        return 'failed'
    mark = '' if r.times_ms else ' †'
    return _fmt_ms(_shown(r, metric)) + mark


def _mem_cell(r: CellResult) -> str:
    if r.status != 'ok':
        return '–'
    if r.peak_mib is None or math.isnan(r.peak_mib):
        return 'n/a'
    return f'{r.peak_mib:.0f}' if r.peak_mib >= 10 else f'{r.peak_mib:.1f}'


def _ratio_cell(num: Optional[CellResult], den: Optional[CellResult], metric: str) -> str:
    if num is None or den is None:
        return '–'
    if den.status != 'ok' or not _shown(den, metric):
        return 'n/a'
    if num.status in ('over_budget', 'skipped'):
        return f'> {num.budget_s * 1e3 / _shown(den, metric):.0f}'
    if num.status != 'ok' or _shown(num, metric) is None:
        return 'n/a'
    return f'{_shown(num, metric) / _shown(den, metric):.2f}'


def _fastest(r: CellResult, metric: str) -> Optional[float]:
    """The fastest timed call of a cell (the warm-up call when none was timed)."""
    times = r.cpu_ms if metric == 'cpu' else r.times_ms
    return min(times) if times else _shown(r, metric)


def target_cells(results: Sequence[CellResult], args) -> List[dict]:
    """The BRS / focal target (issue 8): one row per (regime, size in ``--target-sizes``, ratio) where both ran.

    Returns:
        list[dict]: ``regime``, ``size``, ``ratio``, ``focal`` and ``brs`` (the reported times, ms), ``value`` (their
        ratio, None when a cell did not finish), ``fastest`` (the ratio of the fastest calls) and ``met``.
    """
    by_key = {(r.regime, r.size, r.ratio, r.loss): r for r in results}
    rows = []
    for regime in args.regimes:
        for size in sorted(set(args.sizes) & set(args.target_sizes)):
            for ratio in sorted(args.ratios):
                focal, brs = by_key.get((regime, size, ratio, 'focal')), by_key.get((regime, size, ratio, 'brs'))
                if focal is None or brs is None:
                    continue
                done = focal.status == 'ok' and brs.status == 'ok' and _shown(focal, args.metric)
                value = _shown(brs, args.metric) / _shown(focal, args.metric) if done else None
                fastest = _fastest(brs, args.metric) / _fastest(focal, args.metric) if done else None
                rows.append(dict(regime=regime, size=size, ratio=ratio, focal=_shown(focal, args.metric),
                                 brs=_shown(brs, args.metric), value=value, fastest=fastest,
                                 met=value is not None and value <= args.target_ratio))
    return rows


def render_target(results: Sequence[CellResult], args) -> List[str]:
    """Markdown section of :func:`target_cells` with the verdict (empty when the run has no target cell)."""
    rows = target_cells(results, args)
    if not rows:
        return []
    sizes = ', '.join(_size_label(s) for s in sorted({row['size'] for row in rows}))
    lines = [f'## Target: BRS at most {args.target_ratio:g}x the focal loss at L = {sizes}', '',
             f'Forward + backward {METRIC_TEXT[args.metric]}: the reported times (medians) and their ratio, which '
             'decides; the ratio of the fastest calls of each cell is given for reference.', '',
             '| regime | L | m | focal (ms) | BRS (ms) | BRS / focal | fastest calls | met |',
             '|---|---:|---:|---:|---:|---:|---:|---|']
    for row in rows:
        value = f'{row["value"]:.2f}' if row['value'] is not None else 'n/a'
        fastest = f'{row["fastest"]:.2f}' if row['fastest'] is not None else 'n/a'
        focal = _fmt_ms(row['focal']) if row['focal'] else 'n/a'
        brs = _fmt_ms(row['brs']) if row['brs'] else 'n/a'
        lines.append(f'| {row["regime"]} | {_size_label(row["size"])} | {_ratio_label(row["ratio"])} | {focal} | '
                     f'{brs} | {value} | {fastest} | {"yes" if row["met"] else "**no**"} |')
    missed = [row for row in rows if not row['met']]
    worst = max((row for row in rows if row['value'] is not None), key=lambda row: row['value'], default=None)
    worst_text = (f'; largest ratio {worst["value"]:.2f} ({worst["regime"]}, m = {_ratio_label(worst["ratio"])})'
                  if worst else '')
    lines += ['', (f'**Target met** in all {len(rows)} cells{worst_text}.' if not missed else
                   f'**Target not met** in {len(missed)} of {len(rows)} cells{worst_text}.'), '']
    return lines


def render_markdown(results: Sequence[CellResult], args, info: dict, started: str) -> str:
    """The result tables (one time table with ratio rows and one memory table per regime) as Markdown."""
    by_key = {(r.regime, r.size, r.ratio, r.loss): r for r in results}
    sizes, ratios = sorted(args.sizes), sorted(args.ratios)
    columns = [(s, m) for s in sizes for m in ratios]
    header = '| loss | ' + ' | '.join(f'{_size_label(s)} · {_ratio_label(m)}' for s, m in columns) + ' |'
    rule = '|---|' + '---:|' * len(columns)
    cpu = _cpu_model()
    threads = info.get('threads')
    device = info.get('device_name', cpu) if info.get('device', 'cpu').startswith('cuda') else cpu
    lines = [
        '# Ranking-loss benchmark',
        '',
        f'* Command: `{" ".join(shlex.quote(a) for a in ["python", "tools/benchmark_loss.py"] + args.argv)}`',
        f'* Started {started}; device `{info.get("device", args.device)}` ({device}); torch {info.get("torch")}, '
        f'{threads} thread{"" if threads == 1 else "s"}; {os.cpu_count()} logical CPUs; 1-minute load average '
        f'before the cells {_load_text(results)} (the run itself accounts for about {threads}; more means other '
        f'processes shared the machine); memory allocator: {info.get("malloc", "unknown")}.',
        f'* Forward + backward of one call, {_metric_text(args.metric)} (ms): median of up to {args.repeats} '
        f'timed calls after one warm-up call, repeats limited to {args.repeat_seconds:g} s per cell (`†`: no '
        f'repeat fitted, the warm-up call is reported). A first call still running after {args.max_seconds:g} s '
        f'({args.pairwise_max_seconds:g} s for the pairwise rows) is killed (`> N s`) and larger cells of that loss '
        f'are skipped.',
        f'* Peak extra memory of the warm-up call (MiB): {_memory_text(info)}.',
        f'* Inputs: L logits with round(m·L) positives at random positions; positives\' targets uniform in '
        f'({IOU_LOW:g}, 1] (binary for focal, AP, BAP); seed {args.seed}.',
        '',
    ]
    for regime in args.regimes:
        lines += [f'## Regime `{regime}`: {REGIME_TEXT[regime]}', '',
                  f'### Forward + backward {METRIC_TEXT[args.metric]} (ms)', '', header, rule]
        for key in args.losses:
            cells = [by_key.get((regime, s, m, key)) for s, m in columns]
            lines.append(f'| {LOSSES[key].title} | '
                         + ' | '.join(_time_cell(c, args.metric) if c else '–' for c in cells) + ' |')
        for title, num, den in RATIOS:
            if num in args.losses and den in args.losses:
                cells = [_ratio_cell(by_key.get((regime, s, m, num)), by_key.get((regime, s, m, den)), args.metric)
                         for s, m in columns]
                lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
        lines += ['', '### Peak extra memory (MiB)', '', header, rule]
        for key in args.losses:
            cells = [by_key.get((regime, s, m, key)) for s, m in columns]
            lines.append(f'| {LOSSES[key].title} | ' + ' | '.join(_mem_cell(c) if c else '–' for c in cells) + ' |')
        lines.append('')
    lines += render_target(results, args)
    failed = [r for r in results if r.status == 'failed']
    if failed:
        lines += ['## Failed cells', '']
        lines += [f'* {r.regime} L={_size_label(r.size)} m={_ratio_label(r.ratio)} {r.loss}: {r.error}'
                  for r in failed]
        lines.append('')
    return '\n'.join(lines)


def _metric_text(metric: str) -> str:
    if metric == 'cpu':
        return 'CPU time of the worker process (all its threads), not wall-clock time'
    return 'wall-clock time'


def _load_text(results: Sequence[CellResult]) -> str:
    loads = [r.load1 for r in results if r.load1 is not None]
    if not loads:
        return 'unknown'
    return f'{min(loads):.2f} to {max(loads):.2f} (mean {statistics.mean(loads):.2f})'


def _memory_text(info: dict) -> str:
    method = info.get('memory_method', '')
    if method == '_CudaMemoryProbe':
        return '`torch.cuda.max_memory_allocated()` minus the allocation before the call'
    if method == '_CpuMemoryProbe':
        return ('process peak resident set during the call minus the resident set before it '
                '(`malloc_trim(0)`, then `VmHWM` reset through `/proc/self/clear_refs`)')
    return 'not measured on this platform'


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_png(results: Sequence[CellResult], args, path: str) -> None:
    """Time against L, one panel per (regime, ratio), one line per loss (log-log); over-budget cells as ^."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    by_key = {(r.regime, r.size, r.ratio, r.loss): r for r in results}
    sizes, ratios = sorted(args.sizes), sorted(args.ratios)
    rows, cols = len(args.regimes), len(ratios)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharex=True,
                             sharey=True)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, regime in enumerate(args.regimes):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            for k, key in enumerate(args.losses):
                color = colors[k % len(colors)]
                cells = [by_key.get((regime, s, ratio, key)) for s in sizes]
                ok = [(c.size, _shown(c, args.metric)) for c in cells
                      if c and c.status == 'ok' and _shown(c, args.metric)]
                over = [(c.size, c.budget_s * 1e3) for c in cells if c and c.status in ('over_budget', 'skipped')]
                if ok:
                    ax.plot(*zip(*ok), marker='o', ms=3, lw=1.2, color=color, label=LOSSES[key].title)
                if over:
                    ax.plot(*zip(*over), ls='none', marker='^', ms=5, color=color)
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.grid(True, which='major', lw=0.4, alpha=0.5)
            ax.set_title(f'{regime}, m = {_ratio_label(ratio)}', fontsize=9)
            if i == rows - 1:
                ax.set_xlabel('L (logits)', fontsize=8)
            if j == 0:
                ax.set_ylabel(f'fwd + bwd {METRIC_TEXT[args.metric]} (ms)', fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 7), fontsize=8, frameon=False)
    fig.suptitle(f'Loss forward + backward {METRIC_TEXT[args.metric]} (^: first call over the cell budget, '
                 'plotted at the budget)',
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    _atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=80))
    plt.close(fig)


def _atomic_write(path: str, write, mode: str = 'wb') -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path), suffix='.tmp')
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f'a positive ratio is a fraction in (0, 1) (0.01 = 1%), got {text}')
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text}')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Time forward + backward and peak memory of the ranking-based losses (RS, BRS, AP, BAP) '
                    'against the sigmoid focal loss on the synthetic grid of the BRS paper.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--regimes', nargs='+', choices=list(REGIMES), default=list(REGIMES),
                        help='logit generators')
    parser.add_argument('--sizes', nargs='+', type=_positive_int, default=DEFAULT_SIZES,
                        help='numbers of logits L')
    parser.add_argument('--ratios', nargs='+', type=_fraction, default=DEFAULT_RATIOS,
                        help='fractions of positives m (0.01 = 1%%)')
    parser.add_argument('--losses', nargs='+', choices=list(LOSSES), default=list(LOSSES),
                        help='rows of the table')
    parser.add_argument('--repeats', type=_positive_int, default=5,
                        help='timed calls per cell after the warm-up call (median reported)')
    parser.add_argument('--max-seconds', type=_positive_float, default=60.0,
                        help='a first (warm-up) call that takes longer is killed and the cell reported as over budget')
    parser.add_argument('--pairwise-max-seconds', type=_positive_float, default=None,
                        help='the same for the pairwise rows (rs, ap), which are O(P N); default: --max-seconds')
    parser.add_argument('--repeat-seconds', type=_positive_float, default=30.0,
                        help='timed repeats stop once a cell (first call included) would exceed this time')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda' ('cuda:1', ...)")
    parser.add_argument('--threads', type=_positive_int, default=None,
                        help='torch intra-op threads (default: torch\'s default)')
    parser.add_argument('--metric', choices=list(METRIC_TEXT), default='wall',
                        help="what the tables report: 'wall' clock time, or the worker's 'cpu' time (all threads; "
                             "robust on a shared machine when used with --threads 1)")
    parser.add_argument('--seed', type=int, default=0, help='base seed of the inputs')
    parser.add_argument('--malloc', choices=['keep', 'default'], default='keep',
                        help="'keep': the worker asks glibc to keep freed memory, so that a call does not fault in "
                             "again what the previous call's frees returned to the system (up to 12K page faults per "
                             "call otherwise, depending on the heap's state); 'default': glibc's own trimming")
    parser.add_argument('--target-ratio', type=_positive_float, default=3.0,
                        help='the target: BRS forward + backward at most this many times the focal loss')
    parser.add_argument('--target-sizes', nargs='+', type=_positive_int, default=[1_000_000],
                        help='numbers of logits L whose cells the target applies to')
    parser.add_argument('--out-md', default=None, help='write the Markdown tables here')
    parser.add_argument('--out-png', default=None, help='write the plot here (PNG)')
    parser.add_argument('--out-json', default=None, help='write the raw measurements here')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.pairwise_max_seconds is None:
        args.pairwise_max_seconds = args.max_seconds
    args.sizes = sorted(set(args.sizes))
    args.ratios = sorted(set(args.ratios))
    args.losses = [k for k in LOSSES if k in args.losses]
    if args.device != 'cpu' and not args.device.startswith('cuda'):
        parser.error(f"--device must be 'cpu' or 'cuda[:index]', got {args.device!r}")
    for path in (args.out_md, args.out_png, args.out_json):
        if path and os.path.isdir(path):
            parser.error(f'output path {path} is a directory; give a file name')
    return args


def _check_device(device: str) -> None:
    if device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f'benchmark_loss: --device {device} requested but CUDA is not available '
                             f'(torch {torch.__version__})')


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_grid, which kills the worker


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _check_device(args.device)
    started = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    results, info = run_grid(args)
    markdown = render_markdown(results, args, info, started)
    print()
    print(markdown)
    if args.out_md:
        _atomic_write(args.out_md, lambda f: f.write(markdown + '\n'), mode='w')
        print(f'wrote {args.out_md}')
    if args.out_png:
        render_png(results, args, args.out_png)
        print(f'wrote {args.out_png}')
    if args.out_json:
        payload = dict(args=vars(args), info=info, started=started, results=[asdict(r) for r in results],
                       target=target_cells(results, args))
        _atomic_write(args.out_json, lambda f: json.dump(payload, f, indent=1), mode='w')
        print(f'wrote {args.out_json}')
    return 1 if any(r.status == 'failed' for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
