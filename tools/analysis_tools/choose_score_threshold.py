"""Choose score thresholds for a checkpoint on the validation set: per class and for all classes together.

Usage::

    python tools/analysis_tools/choose_score_threshold.py CONFIG CHECKPOINT [--results RESULTS.pkl]
        [--target-precision P] [--iou-thr 0.5] [--out FILE] [--work-dir DIR] [--skip-data-check]
        [--cfg-options KEY=VALUE ...]

The detections of the config's validation set (``val_dataloader``) come from ``--results`` (the pickle of
``tools/test.py CONFIG CHECKPOINT --out RESULTS.pkl`` run on that set) or from running CHECKPOINT on it. Each
detection is matched to the objects (IoU >= ``--iou-thr``) and each class gets the threshold with the best F1, or
with ``--target-precision P`` the lowest threshold whose precision is at least P; a class without validation objects
or true positives gets the global one. The table is printed and written to ``CHECKPOINT.score_thr.json`` (or
``--out``), where ``demo/image_demo.py``, ``BRSDetInferencer`` and ``tools/test.py --confusion-matrix`` take their
thresholds from by default (an explicit ``--score-thr`` wins). The logic is in
:mod:`brs_detr.apis.score_thresholds` and :mod:`brs_detr.analysis.score_threshold`; docs/custom_dataset.md explains
it.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from brs_detr.apis.cli import add_cfg_options_argument, add_debug_argument, run_tool_main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Choose per-class score thresholds on the validation set')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='the checkpoint file; the thresholds are written next to it')
    parser.add_argument('--results', help='the --out pickle of tools/test.py on the validation set (default: run '
                        'the checkpoint on it)')
    parser.add_argument('--target-precision', type=float, metavar='P',
                        help='choose the lowest threshold with at least this precision (default: the best F1)')
    parser.add_argument('--iou-thr', type=float, default=0.5, help='IoU at which a detection matches an object '
                        '(default 0.5)')
    parser.add_argument('--out', help='write the thresholds here instead of CHECKPOINT.score_thr.json (the demo '
                        'then does not find them)')
    parser.add_argument('--work-dir', help='work dir of the run on the validation set (default: '
                        './work_dirs/<config name>)')
    parser.add_argument('--skip-data-check', action='store_true', help='do not check the validation data first')
    add_cfg_options_argument(parser, 'override config keys (the key must exist in the config; +key=value adds one)')
    add_debug_argument(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and bad arguments answer at once
    from brs_detr.apis.score_thresholds import choose_thresholds
    choose_thresholds(args)


if __name__ == '__main__':
    run_tool_main(main)
