"""Test (and evaluate) a detector checkpoint with an mmdet 3.x / mmengine config (mmdet's ``tools/test.py`` interface).

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl] [--show-dir DIR] [--show]
                         [--tta] [--classwise] [--confusion-matrix [--score-thr T] [--tp-iou-thr 0.5]]
                         [--skip-data-check] [--cfg-options [+]KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-process testing goes through ``tools/dist_test.sh`` (torchrun) or ``tools/slurm_test.sh``.
The logic lives in :func:`brs_detr.apis.test.test`; docs/tools.md describes the options.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from brs_detr.apis.cli import add_launch_arguments, parse_tool_args, run_tool_main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector (brs-detr, mmdet 3.x)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (path or URL)')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file (.pkl/.pickle) for offline '
                        'evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results in a window')
    parser.add_argument('--show-dir', help='directory where painted images are saved; a relative path is '
                        'relative to work_dir/<timestamp>/')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of --show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation: wrap the model in the '
                        "config's tta_model and test with its tta_pipeline (both must be in the config)")
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not check the annotation file and images of the test set first')
    parser.add_argument('--classwise', action='store_true',
                        help='AP of every class (CocoMetric classwise=True): logged as a table and written to '
                        'WORK_DIR/<timestamp>/classwise_ap.json')
    parser.add_argument('--confusion-matrix', action='store_true',
                        help='confusion matrix of the detections above the score threshold: logged and written to '
                        'WORK_DIR/<timestamp>/confusion_matrix.{json,csv,png}')
    parser.add_argument('--score-thr', type=float,
                        help='score threshold of --confusion-matrix (default: the per-class thresholds of '
                        'CHECKPOINT.score_thr.json if tools/analysis_tools/choose_score_threshold.py wrote it, else '
                        '0.3)')
    parser.add_argument('--tp-iou-thr', type=float,
                        help='IoU at which a detection matches an object in --confusion-matrix (default 0.5)')
    add_launch_arguments(parser)
    return parse_tool_args(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and bad arguments answer at once
    from brs_detr.apis.test import test
    test(args)


if __name__ == '__main__':
    run_tool_main(main)
