"""Loss benchmark, output side: Markdown tables, the BRS / focal target verdict and the plot.

Used by :mod:`brs_detr.benchmarks.loss` (``tools/benchmark_loss.py``, see ``docs/benchmark_loss.md``). Every
function takes the :class:`~brs_detr.benchmarks.loss_grid.CellResult` list of a run and the parsed command
line (``regimes``, ``sizes``, ``ratios``, ``losses``, ``metric``, the budgets and the target options).
"""
import math
import os
import platform
import shlex
import statistics
from typing import List, Optional, Sequence

from brs_detr.fileio.atomic_io import atomic_open
from .loss_grid import IOU_LOW, LOSSES, REGIME_TEXT, CellResult

#: Ratio rows of the time table: (title, numerator key, denominator key).
RATIOS = [
    ('BRS / focal', 'brs', 'focal'),
    ('RS (pairwise) / BRS', 'rs', 'brs'),
    ('RS exact / BRS', 'rs_exact', 'brs'),
    ('BAP / focal', 'bap', 'focal'),
    ('AP (pairwise) / BAP', 'ap', 'bap'),
    ('AP exact / BAP', 'ap_exact', 'bap'),
]

#: Table heading of each reported time metric.
METRIC_TEXT = {'wall': 'time', 'cpu': 'CPU time'}


def size_label(size: int) -> str:
    """``10000`` -> ``10K``, ``1000000`` -> ``1M`` (sizes that are not round stay as they are)."""
    for unit, name in ((1_000_000, 'M'), (1_000, 'K')):
        if size >= unit and size % (unit // 10) == 0:
            return f'{size / unit:g}{name}'
    return str(size)


def ratio_label(ratio: float) -> str:
    """``0.01`` -> ``1%``."""
    return f'{ratio * 100:g}%'


def _fmt_ms(ms: float) -> str:
    if ms < 10:
        return f'{ms:.2f}'
    if ms < 100:
        return f'{ms:.1f}'
    return f'{ms:.0f}'


def _shown(r: CellResult, metric: str) -> Optional[float]:
    return r.median_cpu_ms if metric == 'cpu' else r.median_ms


def time_cell(r: CellResult, metric: str = 'wall') -> str:
    """A cell's reported time (ms) as shown in the tables: ``> N s`` over budget, ``†`` when nothing was timed."""
    if r.status in ('over_budget', 'skipped'):
        return f'> {r.budget_s:g} s' + (' (skipped)' if r.status == 'skipped' else '')
    if r.status == 'failed' or _shown(r, metric) is None:
        return 'failed'
    mark = '' if r.times_ms else ' †'
    return _fmt_ms(_shown(r, metric)) + mark


def mem_cell(r: CellResult) -> str:
    """A cell's peak extra memory (MiB) as shown in the tables."""
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
    sizes = ', '.join(size_label(s) for s in sorted({row['size'] for row in rows}))
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
        lines.append(f'| {row["regime"]} | {size_label(row["size"])} | {ratio_label(row["ratio"])} | {focal} | '
                     f'{brs} | {value} | {fastest} | {"yes" if row["met"] else "**no**"} |')
    missed = [row for row in rows if not row['met']]
    worst = max((row for row in rows if row['value'] is not None), key=lambda row: row['value'], default=None)
    worst_text = (f'; largest ratio {worst["value"]:.2f} ({worst["regime"]}, m = {ratio_label(worst["ratio"])})'
                  if worst else '')
    lines += ['', (f'**Target met** in all {len(rows)} cells{worst_text}.' if not missed else
                   f'**Target not met** in {len(missed)} of {len(rows)} cells{worst_text}.'), '']
    return lines


def render_markdown(results: Sequence[CellResult], args, info: dict, started: str) -> str:
    """The result tables (one time table with ratio rows and one memory table per regime) as Markdown."""
    by_key = {(r.regime, r.size, r.ratio, r.loss): r for r in results}
    sizes, ratios = sorted(args.sizes), sorted(args.ratios)
    columns = [(s, m) for s in sizes for m in ratios]
    header = '| loss | ' + ' | '.join(f'{size_label(s)} · {ratio_label(m)}' for s, m in columns) + ' |'
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
                         + ' | '.join(time_cell(c, args.metric) if c else '–' for c in cells) + ' |')
        for title, num, den in RATIOS:
            if num in args.losses and den in args.losses:
                cells = [_ratio_cell(by_key.get((regime, s, m, num)), by_key.get((regime, s, m, den)), args.metric)
                         for s, m in columns]
                lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
        lines += ['', '### Peak extra memory (MiB)', '', header, rule]
        for key in args.losses:
            cells = [by_key.get((regime, s, m, key)) for s, m in columns]
            lines.append(f'| {LOSSES[key].title} | ' + ' | '.join(mem_cell(c) if c else '–' for c in cells) + ' |')
        lines.append('')
    lines += render_target(results, args)
    failed = [r for r in results if r.status == 'failed']
    if failed:
        lines += ['## Failed cells', '']
        lines += [f'* {r.regime} L={size_label(r.size)} m={ratio_label(r.ratio)} {r.loss}: {r.error}'
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
            ax.set_title(f'{regime}, m = {ratio_label(ratio)}', fontsize=9)
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
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=80)
    plt.close(fig)
