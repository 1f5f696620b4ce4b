#!/usr/bin/env python
r"""Measure what ranking across processes costs (``rank_across_processes=True`` of the ranking losses).

    python tools/benchmark_global_ranking.py [--processes 2] [--size 1000000] [--ratio 0.01]
                                             [--regimes early trained] [--losses brs bap rs_exact ap_exact]
                                             [--repeats 5] [--warmup 1]
                                             [--configs CONFIG ...] [--img-size 128 128] [--batch 1] [--iters 3]

Spawns ``--processes`` CPU processes joined by a gloo group (each standing for one GPU) and times, with the option
off and on: the ranking losses alone on one cell of the loss benchmark's grid (every process holds ``--size``
logits with ``--ratio`` positives; ``--size 0`` skips this) and one DDP training iteration of each ``--configs``
config on synthetic images. Prints Markdown tables with the median times, the slowdown and the bytes each process
receives. The logic lives in :mod:`brs_detr.benchmarks.global_ranking`; this file parses the arguments. See
docs/rank_based_heads.md.

Example (the numbers in the docs)::

    python tools/benchmark_global_ranking.py --size 1000000 --ratio 0.01 \
        --configs configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py
"""
import argparse
from typing import List, Optional

from brs_detr.apis.cli import add_debug_argument, run_tool_main
from brs_detr.benchmarks.global_ranking import DEFAULT_LOSSES, REGIMES
from brs_detr.benchmarks.loss_grid import LOSSES


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('--processes', type=int, default=2, help='gloo processes (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process (default: %(default)s)')
    parser.add_argument('--size', type=int, default=1_000_000, help='logits per process; 0 skips the loss cell')
    parser.add_argument('--ratio', type=float, default=0.01, help='fraction of positives (default: %(default)s)')
    parser.add_argument('--regimes', nargs='+', default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument('--losses', nargs='+', default=list(DEFAULT_LOSSES),
                        choices=[key for key in LOSSES if key != 'focal'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--repeats', type=int, default=5, help='timed loss calls')
    parser.add_argument('--configs', nargs='*', default=[], help='configs whose DDP iteration is timed')
    parser.add_argument('--img-size', type=int, nargs=2, default=[128, 128], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1, help='images per process')
    parser.add_argument('--num-gts', type=int, default=3, help='ground-truth boxes per image')
    parser.add_argument('--iters', type=int, default=3, help='timed iterations per config')
    parser.add_argument('--warmup', type=int, default=1, help='untimed calls / iterations first')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error('--processes must be at least 2 (one process has nothing to gather)')
    if args.size < 0 or not 0 < args.ratio < 1 or args.repeats < 1 or args.iters < 1 or args.warmup < 0:
        parser.error('need --size >= 0, 0 < --ratio < 1, --repeats >= 1, --iters >= 1, --warmup >= 0')
    if not args.size and not args.configs:
        parser.error('nothing to measure: give --size > 0 or --configs')
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from brs_detr.apis.config_loading import check_config_components, read_config

    for config in args.configs:  # a bad config fails before any process starts
        check_config_components(read_config(config))
    from brs_detr.benchmarks.global_ranking import run  # after parsing: --help and bad arguments answer at once
    run(args)


if __name__ == '__main__':
    run_tool_main(main)
