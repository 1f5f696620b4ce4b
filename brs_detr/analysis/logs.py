"""Read mmengine scalar logs (``vis_data/scalars.json``): training curves and iteration times.

Used by ``tools/analysis_tools/analyze_logs.py`` (see its docstring for the commands).
"""
from __future__ import annotations

import json
import os
import os.path as osp
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

#: Keys of a training record that say where it was logged, not what was measured.
POSITION_KEYS = ('epoch', 'iter', 'step')
#: Key of a training record holding the seconds of one iteration (mmengine's IterTimerHook).
ITER_TIME_KEY = 'time'
#: Resolution of saved figures.
FIGURE_DPI = 100


@dataclass
class ScalarLog:
    """The records of one scalar log, split into training and validation records (file order kept)."""

    path: str
    train: List[Dict[str, float]] = field(default_factory=list)
    val: List[Dict[str, float]] = field(default_factory=list)

    def available_keys(self) -> List[str]:
        keys = {key for record in self.train + self.val for key in record if key not in POSITION_KEYS}
        return sorted(keys)


class LogError(ValueError):
    """Bad input: the message names the file, line or key."""


def load_scalar_log(path: str) -> ScalarLog:
    """Read a ``scalars.json`` (JSON lines). Records with ``iter`` are training records, the others validation.

    Raises:
        LogError: the file is missing, a line is not a JSON object, or the file holds no record.
    """
    if not osp.isfile(path):
        raise LogError(f'{path}: no such file (expected <work_dir>/<timestamp>/vis_data/scalars.json)')
    log = ScalarLog(path)
    with open(path, encoding='utf-8') as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LogError(f'{path}, line {line_number}: not JSON ({error.msg})') from None
            if not isinstance(record, dict):
                raise LogError(f'{path}, line {line_number}: expected a JSON object, got {type(record).__name__}')
            (log.train if 'iter' in record else log.val).append(record)
    if not log.train and not log.val:
        raise LogError(f'{path}: holds no records')
    return log


def series(log: ScalarLog, key: str) -> Tuple[str, List[float], List[float]]:
    """The values of ``key`` in ``log`` with their x positions.

    Returns:
        ``(x_label, xs, ys)``: validation keys against ``step`` (the epoch of an epoch-based run), training keys
        against the global iteration.

    Raises:
        LogError: no record of the log has ``key``.
    """
    val_points = [(record['step'], record[key]) for record in log.val if key in record]
    train_points = [(record['step'], record[key]) for record in log.train if key in record]
    if val_points:
        points, x_label = val_points, ('epoch' if any('epoch' in r for r in log.train) else 'iteration')
    elif train_points:
        points, x_label = train_points, 'iteration'
    else:
        raise LogError(f'{log.path}: no record has the key {key!r}; keys in this log: '
                       f'{", ".join(log.available_keys())}')
    xs, ys = zip(*points)
    return x_label, list(xs), list(ys)


def default_legend(paths: Sequence[str], keys: Sequence[str]) -> List[str]:
    """``<run>: <key>`` per plotted series; ``<run>`` is the work_dir's name (the config's name by default)."""
    names = []
    for path in paths:
        parts = osp.abspath(path).split(os.sep)
        # <work_dir>/<timestamp>/vis_data/scalars.json -> <work_dir>'s name; any other layout: the file name
        names.append(parts[-4] if len(parts) >= 4 and parts[-2] == 'vis_data' else osp.basename(path))
    return [f'{name}: {key}' if len(keys) > 1 or len(paths) == 1 else name for name in names for key in keys]


def plot_curve(json_logs: Sequence[str], keys: Sequence[str], legend: Optional[Sequence[str]] = None,
               title: Optional[str] = None, out: Optional[str] = None) -> None:
    """Print and plot ``keys`` of every log in ``json_logs``; save to ``out`` (atomically) or show a window.

    Raises:
        LogError: A file that is missing or not JSON lines, a key no record has, or a legend of the wrong length.
    """
    logs = [load_scalar_log(path) for path in json_logs]
    legend = legend or default_legend(json_logs, keys)
    if len(legend) != len(logs) * len(keys):
        raise LogError(f'--legend: {len(legend)} names for {len(logs)} logs x {len(keys)} keys = '
                       f'{len(logs) * len(keys)} curves')
    curves = []
    for log_index, log in enumerate(logs):
        for key_index, key in enumerate(keys):
            curves.append((legend[log_index * len(keys) + key_index], *series(log, key)))

    for name, x_label, xs, ys in curves:
        print(f'{name} ({len(xs)} points)\n  {x_label:>9}  value')
        for x, y in zip(xs, ys):
            print(f'  {x:>9g}  {y:.4f}')

    import matplotlib
    if out is not None:
        matplotlib.use('Agg')  # saving needs no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, _, xs, ys in curves:
        ax.plot(xs, ys, marker='o' if len(xs) <= 50 else None, markersize=3, label=name)
    ax.set_xlabel(curves[0][1])
    ax.set_ylabel(keys[0] if len(keys) == 1 else 'value')
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if out is None:
        plt.show()
    else:
        from brs_detr.fileio.atomic_io import atomic_open
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with atomic_open(out, 'wb') as f:
            fig.savefig(f, format=osp.splitext(out)[1].lstrip('.') or 'png', dpi=FIGURE_DPI)
        print(f'saved {out}')
    plt.close(fig)


def cal_train_time(json_logs: Sequence[str]) -> None:
    """Print the mean seconds per iteration of each log and its slowest and fastest epoch."""
    for path in json_logs:
        log = load_scalar_log(path)
        per_epoch: Dict[int, List[float]] = {}
        for record in log.train:
            if ITER_TIME_KEY in record:
                per_epoch.setdefault(record.get('epoch', 0), []).append(record[ITER_TIME_KEY])
        if not per_epoch:
            raise LogError(f'{path}: no training record has {ITER_TIME_KEY!r} (seconds per iteration)')
        epoch_means = {epoch: statistics.fmean(times) for epoch, times in per_epoch.items()}
        all_times = [t for times in per_epoch.values() for t in times]
        slowest = max(epoch_means, key=epoch_means.get)
        fastest = min(epoch_means, key=epoch_means.get)
        print(f'{path}\n'
              f'  logged iterations: {len(all_times)}, mean {statistics.fmean(all_times):.4f} s/iter, '
              f'std over epochs {statistics.pstdev(epoch_means.values()):.4f}\n'
              f'  slowest epoch {slowest}: {epoch_means[slowest]:.4f} s/iter, '
              f'fastest epoch {fastest}: {epoch_means[fastest]:.4f} s/iter')
