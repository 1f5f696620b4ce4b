"""Loss benchmark: forward + backward time and peak memory of the ranking-based losses on the BRS paper's grid.

Used by ``tools/benchmark_loss.py`` (which parses the command line); see ``docs/benchmark_loss.md``. This module
schedules the grid (:mod:`~brs_detr.benchmarks.loss_grid`): every (regime, L, m, loss) cell runs in a spawned worker
process (:func:`~brs_detr.benchmarks.loss_worker.worker_main`), which is killed when its first call exceeds the cell's
budget, so a slow pairwise cell cannot hang the run; larger cells of that loss and regime are then skipped. The
results are written by :mod:`brs_detr.benchmarks.loss_report` (Markdown tables, the BRS / focal target
verdict, a plot) and as raw JSON.

The modules import downward only: this one uses the report and (in the worker process only, it imports torch) the
worker module; all three use the grid's definitions (:data:`LOSSES`, :data:`REGIMES`, :class:`CellResult`).
"""
import argparse
import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Tuple

from brs_detr.fileio.atomic_io import atomic_open, atomic_write_text
from .loss_grid import LOSSES, REGIMES, CellResult, num_positives
from .loss_report import (METRIC_TEXT, mem_cell, ratio_label, render_markdown, render_png, render_target, size_label,
                          target_cells, time_cell)

__all__ = [
    'LOSSES', 'REGIMES', 'METRIC_TEXT', 'PAIRWISE', 'DEFAULT_SIZES', 'DEFAULT_RATIOS', 'CellResult', 'run_grid',
    'run_benchmark', 'target_cells', 'render_target', 'render_markdown', 'render_png'
]

#: Rows computed pair by pair (O(P N)); they get their own time budget.
PAIRWISE = ('rs', 'ap')

#: Seconds a worker may take to start and to build a cell's inputs before it is considered hung.
SETUP_GRACE_S = 300.0

DEFAULT_SIZES = [10_000, 100_000, 1_000_000]
DEFAULT_RATIOS = [0.001, 0.01, 0.02, 0.05]


class _Worker:
    """A worker process that can be killed and replaced when a cell runs over its budget."""

    def __init__(self, device: str, threads: Optional[int], malloc: str) -> None:
        self._device, self._threads, self._malloc = device, threads, malloc
        self._proc = None
        self.info: dict = {}

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        from .loss_worker import worker_main  # imports torch: only the worker needs it
        ctx = mp.get_context('spawn')
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=worker_main, args=(child, self._device, self._threads, self._malloc),
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
        return f'{time_cell(r):>10s}  {r.error}'
    return (f'{time_cell(r):>10s} ms (CPU {time_cell(r, "cpu")} ms)  peak {mem_cell(r):>6s} MiB  '
            f'{len(r.times_ms)} timed')


def _dominates(smaller: CellResult, size: int, ratio: float) -> bool:
    return smaller.size <= size and smaller.ratio <= ratio


def run_grid(args: argparse.Namespace) -> Tuple[List[CellResult], dict]:
    """Run every requested cell; returns the results and the worker's environment description.

    Args:
        args (argparse.Namespace): The command line of ``tools/benchmark_loss.py``: ``regimes``, ``sizes``,
            ``ratios``, ``losses``, ``seed``, ``repeats``, ``max_seconds``, ``pairwise_max_seconds``,
            ``repeat_seconds``, ``device``, ``threads``, ``malloc``.
    """
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
                                    error=f'{size_label(b.size)} / {ratio_label(b.ratio)} already exceeded '
                                          f'the budget')
            else:
                cell = dict(regime=regime, size=size, ratio=ratio, loss=key, seed=args.seed,
                            repeats=args.repeats, max_seconds=budget, repeat_seconds=args.repeat_seconds)
                result = worker.run(cell)
            result.load1 = load
            if result.status in ('over_budget', 'skipped'):
                over.setdefault((regime, key), []).append(result)
            results.append(result)
            print(f'[{index}/{len(cells)}] {regime:7s} L={size_label(size):>5s} m={ratio_label(ratio):>5s} '
                  f'{key:9s} {_progress_text(result)}', flush=True)
        info = dict(worker.info)
        finished = True
    finally:
        if finished:
            worker.close()
        else:  # interrupted (Ctrl-C, SIGTERM) or failed: do not wait for a running call
            worker.kill()
    return results, info


def _check_device(device: str) -> None:
    if device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f'benchmark_loss: --device {device} requested but CUDA is not available '
                             f'(torch {torch.__version__})')


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_grid, which kills the worker


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the grid of ``args`` (as parsed by ``tools/benchmark_loss.py``), print the tables, write the outputs.

    Args:
        args (argparse.Namespace): The parsed command line; besides the grid options of :func:`run_grid` it holds
            ``metric``, ``target_ratio``, ``target_sizes``, ``argv`` (printed as the command) and the output paths
            ``out_md``, ``out_png``, ``out_json`` (None: not written).

    Returns:
        int: The exit status: 1 when a cell failed (the loss raised, returned a non-finite value, or the worker
        died), else 0. Cells over budget are not failures.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _check_device(args.device)
    started = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    results, info = run_grid(args)
    markdown = render_markdown(results, args, info, started)
    print()
    print(markdown)
    if args.out_md:
        atomic_write_text(markdown + '\n', args.out_md)
        print(f'wrote {args.out_md}')
    if args.out_png:
        render_png(results, args, args.out_png)
        print(f'wrote {args.out_png}')
    if args.out_json:
        payload = dict(args=vars(args), info=info, started=started, results=[asdict(r) for r in results],
                       target=target_cells(results, args))
        with atomic_open(args.out_json, 'w') as f:
            json.dump(payload, f, indent=1)
        print(f'wrote {args.out_json}')
    return 1 if any(r.status == 'failed' for r in results) else 0
