"""Train a detector with an mmdet 3.x / mmengine config (mmdet's ``tools/train.py`` interface).

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr] [--resume [CHECKPOINT]]
                          [--overwrite-work-dir] [--non-finite-loss {stop,skip}] [--max-consecutive-skips N]
                          [--skip-data-check] [--cfg-options [+]KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
                          [--debug]

Multi-process training goes through ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``.
The logic lives in :func:`brs_detr.apis.train.train`; docs/tools.md describes the options, docs/reliability.md
what happens on a crash, a NaN loss or bad input.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from brs_detr.apis.cli import add_launch_arguments, parse_tool_args, run_tool_main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector (brs-detr, mmdet 3.x)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (needs a CUDA device)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by (total batch size) / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto', metavar='CHECKPOINT',
                        help='resume from CHECKPOINT; without a value, resume from the latest checkpoint in the '
                        'work_dir')
    parser.add_argument('--overwrite-work-dir', action='store_true',
                        help='start a new run in a work_dir that holds the checkpoints of an earlier run: the earlier '
                        'run is first moved to WORK_DIR.previous-<time> (nothing is deleted); without it, such a '
                        'start is refused')
    parser.add_argument('--non-finite-loss', choices=['stop', 'skip'],
                        help='what to do when a loss is NaN/Inf: stop before the update (default) or skip the '
                        'iteration (no optimizer step); overrides NonFiniteLossHook in the config')
    parser.add_argument('--max-consecutive-skips', type=int, metavar='N',
                        help='with --non-finite-loss skip: stop after more than N skipped iterations in a row '
                        '(default 10)')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not check the annotation files and images before training')
    add_launch_arguments(parser)
    args = parse_tool_args(parser, argv)
    if args.resume is not None and args.overwrite_work_dir:
        parser.error('--resume continues the run in the work_dir, --overwrite-work-dir starts a new one: give one')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and bad arguments answer at once
    from brs_detr.apis.train import train
    train(args)


if __name__ == '__main__':
    run_tool_main(main)
