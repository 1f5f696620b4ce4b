#!/usr/bin/env python
r"""Time training iterations (forward, backward, optimizer step) of detectors on synthetic data.

    python tools/benchmark_train.py CONFIG [CONFIG ...] [--iters 3] [--warmup 1] [--device cpu|cuda]
                                    [--img-size 320 320] [--batch 1] [--num-gts 10] [--metric wall|cpu]
                                    [--threads N]
                                    [--time-modules REGEX] [--no-ranking-timer]
                                    [--cfg-options KEY=VALUE ...]

Each config's model is built without pretrained weights (backbone ``init_cfg`` off) and trained
with the config's own optimizer wrapper (lr multipliers, gradient clipping) through
``model.train_step``, i.e. data preprocessor + loss + backward + step, on random images with random
ground-truth boxes. Warm-up iterations are excluded; the median (and mean) seconds per iteration
are printed as a Markdown table, with the peak memory of the timed iterations (CPU: process peak RSS,
reset before the timed iterations; CUDA: peak allocated tensor memory) and the time and memory ratios to
the first config. Submodules whose qualified name matches ``--time-modules``
(default: the loss modules, ``loss_cls``, ``loss_bbox``...) are timed with forward hooks and their
share of the iteration is reported (their forward only; backward time is not attributed).

Ranking losses (RS, BRS, AP, BAP: every :class:`brs_detr.models.losses.RankingLoss` submodule, found by type)
are timed forward *and* backward, and their share of the iteration is reported separately:

* forward: a pre- and a post-forward hook on each RankingLoss module (input checks plus the autograd
  Function's forward, where the loss and all gradients are computed);
* backward: the ranking loss's autograd Function (``_RankingLossFunction``) only scatters the precomputed
  gradients in its backward; its ``backward`` is wrapped with a timer while the benchmark runs (the autograd
  engine looks it up at call time), so exactly that node of the backward graph is timed, whichever thread the
  engine runs it on. Module backward hooks are not used: they bracket an interval in which the engine may
  run unrelated nodes.

On CUDA every timing point synchronises the device, which serialises the work being timed (the iteration is
slightly slower than without timers; ``--time-modules ''`` and ``--no-ranking-timer`` remove them). The
ranking-loss share is the median over the timed iterations of (forward + backward time in the ranking losses)
/ (iteration time); ``ratio to first`` is the median s/iter divided by that of the first config,
``memory ratio to first`` the same for the peak memory.

The logic lives in :mod:`brs_detr.benchmarks.train`; this file parses the arguments.

Example, Co-DETR (focal) vs RS-DETR vs BRS-DETR, ResNet-50, one 320x320 image per iteration (the default size: a
few minutes for all three on a 2-core CPU; pass ``--img-size 800 1333`` for the COCO test scale)::

    python tools/benchmark_train.py \
        configs/co_deformable_detr/co_deformable_detr_r50_8xb2-12e_coco.py \
        configs/brs_detr/rs-detr_r50_4xb4-12e_coco.py configs/brs_detr/brs-detr_r50_4xb4-12e_coco.py \
        --device cuda
"""
import argparse
from typing import List, Optional

from brs_detr.apis.cli import add_cfg_options_argument, add_debug_argument, run_tool_main
from brs_detr.benchmarks.train import DEFAULT_IMG_SIZE, DEFAULT_TIME_MODULES


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--iters', type=int, default=3, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations first')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--img-size', type=int, nargs=2, default=list(DEFAULT_IMG_SIZE), metavar=('H', 'W'),
                        help='image height and width (default: %(default)s)')
    parser.add_argument('--batch', type=int, default=1, help='images per iteration')
    parser.add_argument('--num-gts', type=int, default=10, help='ground-truth boxes per image')
    parser.add_argument('--time-modules', default=DEFAULT_TIME_MODULES,
                        help='regex on qualified submodule names to time ("" disables)')
    parser.add_argument('--no-ranking-timer', dest='ranking_timer', action='store_false',
                        help='do not time the ranking losses (forward + backward)')
    parser.add_argument('--metric', choices=['wall', 'cpu'], default='wall',
                        help='wall-clock seconds, or CPU seconds of this process (steadier on a shared machine; '
                        'CPU devices only)')
    parser.add_argument('--threads', type=int, help='torch intra-op threads (default: torch\'s choice)')
    add_cfg_options_argument(parser, 'override config settings (applied to every config; each key must exist in '
                             'each config and keep its type, +key=value adds a new one)')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        parser.error('need --iters >= 1, --warmup >= 0, --batch >= 1')
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda but CUDA is not available')
    if args.device == 'cuda' and args.metric == 'cpu':
        parser.error('--metric cpu measures host CPU time: use --metric wall with --device cuda')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be >= 1')
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from brs_detr.apis.config_loading import NEW_KEY_PREFIX, check_config_components, read_config

    configs = [read_config(config, args.cfg_options) for config in args.configs]  # every config before any run
    args.cfg_options = {key[len(NEW_KEY_PREFIX):] if key.startswith(NEW_KEY_PREFIX) else key: value
                        for key, value in (args.cfg_options or {}).items()} or None
    import torch  # after parsing: --help and bad arguments answer at once

    from brs_detr.benchmarks.train import run_benchmarks
    for cfg in configs:
        check_config_components(cfg)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_benchmarks(args)


if __name__ == '__main__':
    run_tool_main(main)
