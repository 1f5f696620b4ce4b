"""Inference speed and memory of a detector, PyTorch and exported ONNX (mmdet's benchmark.py interface).

Usage::

    python tools/analysis_tools/benchmark.py CONFIG [CHECKPOINT] [--task inference] [--repeat-num 1]
        [--max-iter 20] [--num-warmup 2] [--onnx model.onnx] [--skip-pytorch] [--device cpu|cuda|auto]
        [--img-size 480 640] [--num-images 4] [--cfg-options K=V ...]

Times one resized image -> detections (normalization, network, post-processing) for the PyTorch model
(random weights without CHECKPOINT: fine for speed) and for the --onnx model (onnxruntime), and prints a Markdown
table: images/s, latency median and p90, peak memory. The logic lives in :mod:`brs_detr.deployment.benchmark`
(timing and table: :mod:`brs_detr.benchmarks.inference`);
docs/deployment.md has the measured table and the commands.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from brs_detr.apis.cli import (ToolInputError, add_cfg_options_argument, add_debug_argument, check_checkpoint_file,
                               check_config_file, run_tool_main)

TASKS = ('inference', )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark inference of a detector (PyTorch and ONNX Runtime)')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    parser.add_argument('--task', choices=TASKS, default='inference', help='what to benchmark (inference)')
    parser.add_argument('--repeat-num', type=int, default=1, help='rounds of --max-iter timed calls (default 1)')
    parser.add_argument('--max-iter', type=int, default=20, help='timed calls per round (default 20)')
    parser.add_argument('--num-warmup', type=int, default=2, help='untimed calls first (default 2)')
    parser.add_argument('--onnx', help='also time this exported model (tools/deployment/pytorch2onnx.py)')
    parser.add_argument('--skip-pytorch', action='store_true', help='time only the --onnx model')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto (default cpu)')
    parser.add_argument('--img-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='size of the synthetic images before the test pipeline resizes them (default 480 640)')
    parser.add_argument('--num-images', type=int, default=4, help='distinct synthetic images, cycled (default 4)')
    add_cfg_options_argument(parser, 'override config keys (key=value)')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if min(args.repeat_num, args.max_iter, args.num_images) < 1 or args.num_warmup < 0:
        parser.error('--repeat-num, --max-iter and --num-images must be at least 1, --num-warmup at least 0')
    if args.skip_pytorch and args.onnx is None:
        parser.error('--skip-pytorch needs --onnx')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and bad arguments answer at once
    from brs_detr.apis.runtime import resolve_device
    from brs_detr.benchmarks.inference import DEFAULT_IMAGE_SIZE, describe_run, format_table
    from brs_detr.deployment.benchmark import benchmark_inference

    check_config_file(args.config)
    if args.checkpoint is not None:
        check_checkpoint_file(args.checkpoint)
    if args.onnx is not None:
        import os.path as osp
        if not osp.isfile(args.onnx):
            raise ToolInputError(f'--onnx file not found: {args.onnx}')
    device = resolve_device(args.device)
    image_size = tuple(args.img_size or DEFAULT_IMAGE_SIZE)
    results = benchmark_inference(args.config, args.checkpoint, args.onnx, device, args.repeat_num, args.max_iter,
                                  args.num_warmup, image_size, args.num_images, args.cfg_options, args.skip_pytorch)
    print('\n' + describe_run(args.config, results, args.repeat_num, args.max_iter, args.num_warmup, image_size))
    print('\n' + format_table(args.config, results))


if __name__ == '__main__':
    run_tool_main(main)
