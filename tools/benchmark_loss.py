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

The logic lives in :mod:`brs_detr.benchmarks.loss` (scheduling and outputs),
:mod:`brs_detr.benchmarks.loss_worker` (inputs, timing, memory) and :mod:`brs_detr.benchmarks.loss_report`
(tables, target verdict, plot); this file parses the arguments.

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
import sys
from typing import Optional, Sequence

from brs_detr.apis.cli import add_debug_argument, run_tool_main
from brs_detr.benchmarks.loss import DEFAULT_RATIOS, DEFAULT_SIZES, LOSSES, METRIC_TEXT, REGIMES, run_benchmark
from brs_detr.fileio.output_paths import OutputPathError, check_output_file


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
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.pairwise_max_seconds is None:
        args.pairwise_max_seconds = args.max_seconds
    args.sizes = sorted(set(args.sizes))
    args.ratios = sorted(set(args.ratios))
    args.losses = [k for k in LOSSES if k in args.losses]
    if args.device != 'cpu' and not args.device.startswith('cuda'):
        parser.error(f"--device must be 'cpu' or 'cuda[:index]', got {args.device!r}")
    for option, path in (('--out-md', args.out_md), ('--out-png', args.out_png), ('--out-json', args.out_json)):
        if path:
            try:
                check_output_file(path, option)  # before the benchmark runs, not after it
            except OutputPathError as error:
                parser.error(str(error))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_benchmark(parse_args(argv))


if __name__ == '__main__':
    run_tool_main(main)
