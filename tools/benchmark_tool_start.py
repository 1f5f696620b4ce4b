#!/usr/bin/env python
"""Time the start of every tool: ``--help`` of tools/*.py, tools/analysis_tools/*.py, tools/deployment/*.py and
demo/*.py, and ``tools/download_checkpoint.py --list``, each in fresh processes (median of ``--runs``), and list the
heavy packages (torch, mmcv, mmdet) each imports. Prints a Markdown table (docs/tools.md has the numbers).

Examples::

    python tools/benchmark_tool_start.py
    python tools/benchmark_tool_start.py --runs 3 --commands "tools/train.py --help" "tools/make_toy_coco.py --help"

Exit status 1 when a command imports a heavy package or its median exceeds ``--limit``.
"""
import argparse
import os.path as osp
import shlex
import sys
from typing import Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout without install

from brs_detr.apis.cli import add_debug_argument, run_tool_main  # noqa: E402
from brs_detr.benchmarks.tool_start import format_table, measure, tool_commands  # noqa: E402

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('--runs', type=int, default=5, help='timed runs per command (median reported)')
    parser.add_argument('--limit', type=float, default=1.5, help='seconds a command may take (median)')
    parser.add_argument('--commands', nargs='+', metavar='COMMAND',
                        help='repository-relative commands, e.g. "tools/train.py --help" (default: every tool)')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error('--runs must be at least 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    commands = [shlex.split(command) for command in args.commands] if args.commands else tool_commands(REPO_ROOT)
    results = []
    for command in commands:
        if not osp.isfile(osp.join(REPO_ROOT, command[0])):
            print(f'benchmark_tool_start.py: error: {command[0]} is not a file of {REPO_ROOT}', file=sys.stderr)
            return 2
        results.append(measure(command, REPO_ROOT, runs=args.runs))
        print(f'{" ".join(command)}: median {results[-1].median:.2f} s', file=sys.stderr, flush=True)
    print(f'Python {sys.version.split()[0]}, {args.runs} runs per command, wall clock from start to exit\n')
    print(format_table(results, args.limit))
    return int(any(result.heavy or result.median >= args.limit for result in results))


if __name__ == '__main__':
    run_tool_main(main)
