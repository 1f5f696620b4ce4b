"""Export a detector to ONNX and check the export (mmdet / MMDeploy-like interface).

Usage::

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out model.onnx [--shape H W] [--dynamic-shape]
                                            [--opset 17] [--images IMG ...] [--num-images 3] [--top-k 10]
                                            [--verbose] [--cfg-options K=V ...]

The graph takes one image resized by the config's test pipeline (``image``: 1x3xHxW float BGR 0-255) and its
``scale_factor`` (w_scale, h_scale), and returns ``boxes`` (N, 4: x1 y1 x2 y2 in original image pixels), ``scores``
(N) and ``labels`` (N) with the model's post-processing inside, and for Mask R-CNN ``masks`` (N, H0, W0 bool in the
original image). After the export: ``onnx.checker``, then onnxruntime (CPU) against the PyTorch model on the
--images (or synthetic images); exit status 1 if they differ.
The logic lives in :mod:`brs_detr.deployment.pytorch2onnx`; docs/deployment.md describes it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from brs_detr.apis.cli import add_cfg_options_argument, add_debug_argument, run_tool_main
from brs_detr.deployment.defaults import DEFAULT_OPSET, TOP_K


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a detector to ONNX and check it against PyTorch')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size of the graph (default: the test-pipeline size of the first --images image, '
                        'or of a 480x640 image)')
    parser.add_argument('--dynamic-shape', action='store_true', help='export H and W as dynamic axes')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET}, '
                        f'at least 16)')
    parser.add_argument('--images', nargs='+', help='images (files, folders, quoted globs) for the comparison '
                        '(default: synthetic images)')
    parser.add_argument('--num-images', type=int, default=3, help='synthetic images to compare (default 3)')
    parser.add_argument('--top-k', type=int, default=TOP_K, help=f'detections compared per image (default {TOP_K})')
    parser.add_argument('--verbose', action='store_true', help='list the Python values the tracer fixed')
    add_cfg_options_argument(parser, 'override config keys (key=value)')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.top_k < 1:
        parser.error('--num-images and --top-k must be at least 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and bad arguments answer at once
    from brs_detr.fileio.output_paths import check_output_file
    check_output_file(args.out, '--out')  # before the export, not after it
    from brs_detr.deployment.pytorch2onnx import run
    sys.exit(run(args))


if __name__ == '__main__':
    run_tool_main(main)
