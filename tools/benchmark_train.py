#!/usr/bin/env python
r"""Time training iterations (forward, backward, optimizer step) of detectors on synthetic data.

    python tools/benchmark_train.py CONFIG [CONFIG ...] [--iters 10] [--warmup 2] [--device cpu|cuda]
                                    [--img-size 800 1333] [--batch 1] [--num-gts 10]
                                    [--time-modules REGEX] [--no-ranking-timer]
                                    [--cfg-options KEY=VALUE ...]

Each config's model is built without pretrained weights (backbone ``init_cfg`` off) and trained
with the config's own optimizer wrapper (lr multipliers, gradient clipping) through
``model.train_step``, i.e. data preprocessor + loss + backward + step, on random images with random
ground-truth boxes. Warm-up iterations are excluded; the median (and mean) seconds per iteration
are printed as a Markdown table. Submodules whose qualified name matches ``--time-modules``
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
/ (iteration time); the last column is the median s/iter divided by that of the first config.

Example, Co-DETR (focal) vs RS-DETR vs BRS-DETR, ResNet-50, one 800x1333 image per iteration::

    python tools/benchmark_train.py \
        configs/co_deformable_detr/co_deformable_detr_r50_8xb2-12e_coco.py \
        configs/brs_detr/rs-detr_r50_4xb4-12e_coco.py configs/brs_detr/brs-detr_r50_4xb4-12e_coco.py \
        --iters 5 --warmup 1 --device cuda
"""
import argparse
import logging
import os
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn


class ModuleTimer:
    """Accumulates the forward time of the submodules whose qualified name
    matches ``pattern`` (outermost matches only, so nested matches are not
    counted twice)."""

    def __init__(self, model: nn.Module, pattern: str,
                 device: torch.device) -> None:
        self.device = device
        self.total = 0.0
        self.names: List[str] = []
        self._starts: Dict[int, float] = {}
        self._handles = []
        regex = re.compile(pattern)
        matched: List[str] = []
        for name, module in model.named_modules():
            if not name or not regex.search(name):
                continue
            if any(name.startswith(parent + '.') for parent in matched):
                continue
            matched.append(name)
            self._handles.append(
                module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))
        self.names = matched

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _pre_hook(self, module: nn.Module, args) -> None:
        self._sync()
        self._starts[id(module)] = time.perf_counter()

    def _post_hook(self, module: nn.Module, args, output) -> None:
        self._sync()
        self.total += time.perf_counter() - self._starts.pop(id(module))

    def reset(self) -> None:
        self.total = 0.0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class RankingLossTimer:
    """Accumulates the time spent inside the ranking losses of ``model``, forward and backward.

    Forward: pre/post forward hooks on every :class:`RankingLoss` submodule. Backward: the backward of the
    losses' autograd Function is replaced by a timed wrapper until :meth:`remove` (restores it). On CUDA each
    timing point synchronises ``device``.

    Attributes:
        names (list[str]): Qualified names of the ranking-loss modules.
        forward (float): Seconds in their forward since the last :meth:`reset`.
        backward (float): Seconds in the Function's backward since the last :meth:`reset`.
        forward_calls, backward_calls (int): Calls since the last :meth:`reset`.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        from brs_detr.models.losses import RankingLoss
        # private on purpose: the tool times exactly the Function whose backward scatters the gradients
        from brs_detr.models.losses.ranking_loss import _RankingLossFunction

        self.device = device
        self.names = [name for name, module in model.named_modules() if isinstance(module, RankingLoss)]
        self._handles = []
        self._starts: Dict[int, float] = {}
        self.reset()
        for name, module in model.named_modules():
            if isinstance(module, RankingLoss):
                self._handles.append(module.register_forward_pre_hook(self._pre_hook))
                self._handles.append(module.register_forward_hook(self._post_hook))
        self._function = _RankingLossFunction
        self._saved_backward = _RankingLossFunction.__dict__['backward']
        self._function.backward = staticmethod(self._timed(_RankingLossFunction.backward))

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _timed(self, backward: Callable) -> Callable:
        def timed_backward(ctx, *grads):
            self._sync()
            start = time.perf_counter()
            try:
                return backward(ctx, *grads)
            finally:
                self._sync()
                self.backward += time.perf_counter() - start
                self.backward_calls += 1
        return timed_backward

    def _pre_hook(self, module: nn.Module, args) -> None:
        self._sync()
        self._starts[id(module)] = time.perf_counter()

    def _post_hook(self, module: nn.Module, args, output) -> None:
        self._sync()
        self.forward += time.perf_counter() - self._starts.pop(id(module))
        self.forward_calls += 1

    @property
    def total(self) -> float:
        """Forward plus backward seconds since the last :meth:`reset`."""
        return self.forward + self.backward

    def reset(self) -> None:
        self.forward = self.backward = 0.0
        self.forward_calls = self.backward_calls = 0

    def remove(self) -> None:
        """Remove the hooks and restore the Function's backward."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._function is not None:
            self._function.backward = self._saved_backward
            self._function = None


def synthetic_batch(batch: int, img_size, num_gts: int, num_classes: int,
                    generator: torch.Generator) -> dict:
    """Random uint8 images with random boxes, as a dataloader yields them."""
    from mmengine.structures import InstanceData

    from mmdet.structures import DetDataSample

    height, width = img_size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(
            torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                          generator=generator))
        xy = torch.rand(num_gts, 2, generator=generator) * torch.tensor(
            [width * 0.7, height * 0.7])
        wh = (torch.rand(num_gts, 2, generator=generator) * 0.25 + 0.05) * \
            torch.tensor([width, height])
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(height, width),
                ori_shape=(height, width),
                scale_factor=(1.0, 1.0),
                flip=False))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], dim=1),
            labels=torch.randint(0, num_classes, (num_gts, ),
                                 generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def benchmark(config: str, args: argparse.Namespace) -> dict:
    """Time ``args.iters`` training iterations of ``config``."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper

    import brs_detr  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    # the per-parameter initialization report is not wanted here
    logging.getLogger('mmengine').setLevel(logging.WARNING)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.model.get('backbone') is not None:
        cfg.model.backbone.init_cfg = None
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.to(device)
    model.train()
    # one 'skipped since its requires_grad=False' warning per frozen parameter is not wanted either
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    finally:
        logger.setLevel(level)
    num_classes = _num_classes(cfg)
    generator = torch.Generator().manual_seed(0)
    timer = ModuleTimer(model, args.time_modules, device) \
        if args.time_modules else None
    rank_timer = RankingLossTimer(model, device) if args.ranking_timer else None
    if rank_timer is not None and not rank_timer.names:
        rank_timer.remove()
        rank_timer = None

    times, shares = [], []
    rank_shares, rank_forward, rank_backward = [], [], []
    load_before = _load_average()
    try:
        for iteration in range(args.warmup + args.iters):
            data = synthetic_batch(args.batch, args.img_size, args.num_gts,
                                   num_classes, generator)
            if timer is not None:
                timer.reset()
            if rank_timer is not None:
                rank_timer.reset()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            log_vars = model.train_step(data, optim_wrapper)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if not torch.isfinite(torch.as_tensor(log_vars['loss'])):
                raise RuntimeError(f'{config}: non-finite loss at iteration '
                                   f'{iteration}')
            if rank_timer is not None and \
                    rank_timer.backward_calls > rank_timer.forward_calls:
                raise RuntimeError(
                    f'{config}: {rank_timer.backward_calls} ranking-loss '
                    f'backward calls for {rank_timer.forward_calls} module '
                    f'calls; a ranking loss ran outside its module')
            phase = 'warm-up' if iteration < args.warmup else 'timed'
            ranking = '' if rank_timer is None else (
                f', ranking losses {1e3 * rank_timer.forward:.2f} ms fwd + '
                f'{1e3 * rank_timer.backward:.2f} ms bwd')
            print(f'{config}: iteration {iteration + 1} ({phase}) '
                  f'{elapsed:.3f} s{ranking}', file=sys.stderr, flush=True)
            if iteration >= args.warmup:
                times.append(elapsed)
                if timer is not None:
                    shares.append(timer.total / elapsed)
                if rank_timer is not None:
                    rank_shares.append(rank_timer.total / elapsed)
                    rank_forward.append(rank_timer.forward)
                    rank_backward.append(rank_timer.backward)
    finally:
        if timer is not None:
            timer.remove()
        if rank_timer is not None:
            rank_timer.remove()
    return dict(
        config=config,
        params=sum(p.numel() for p in model.parameters()),
        median=statistics.median(times),
        mean=statistics.mean(times),
        share=statistics.median(shares) if shares else None,
        timed=len(timer.names) if timer is not None else 0,
        rank_share=statistics.median(rank_shares) if rank_shares else None,
        rank_forward=statistics.median(rank_forward) if rank_forward else None,
        rank_backward=statistics.median(rank_backward) if rank_backward else None,
        rank_modules=len(rank_timer.names) if rank_timer is not None else 0,
        load=(load_before, _load_average()))


def _load_average() -> Optional[float]:
    """The 1-minute load average of the machine (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _num_classes(cfg) -> int:
    head = cfg.model.get('bbox_head')
    if isinstance(head, (list, tuple)):
        head = head[0]
    if head is not None and 'num_classes' in head:
        return head['num_classes']
    return 80


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--iters', type=int, default=10,
                        help='timed iterations')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed iterations first')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--img-size', type=int, nargs=2, default=[800, 1333],
                        metavar=('H', 'W'), help='image height and width')
    parser.add_argument('--batch', type=int, default=1, help='images per iteration')
    parser.add_argument('--num-gts', type=int, default=10,
                        help='ground-truth boxes per image')
    parser.add_argument(
        '--time-modules',
        default=r'(^|\.)loss_\w+$',
        help='regex on qualified submodule names to time ("" disables)')
    parser.add_argument(
        '--no-ranking-timer', dest='ranking_timer', action='store_false',
        help='do not time the ranking losses (forward + backward)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        parser.error('need --iters >= 1, --warmup >= 0, --batch >= 1')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but CUDA is not available')
    return args


def format_table(rows: List[dict]) -> List[str]:
    """Markdown table of the benchmark results, one row per config."""
    lines = [
        '| config | params | median s/iter | mean s/iter | '
        'share in timed modules | ranking-loss share (fwd + bwd) | '
        'ranking loss fwd / bwd ms/iter | ratio to first |',
        '|---|---:|---:|---:|---:|---:|---:|---:|'
    ]
    for row in rows:
        share = '-' if row['share'] is None else \
            f"{100 * row['share']:.1f}% ({row['timed']} modules)"
        if row['rank_share'] is None:
            rank_share, rank_time = '- (no ranking loss)', '-'
        else:
            rank_share = (f"{100 * row['rank_share']:.1f}% "
                          f"({row['rank_modules']} modules)")
            rank_time = (f"{1e3 * row['rank_forward']:.2f} / "
                         f"{1e3 * row['rank_backward']:.2f}")
        ratio = row['median'] / rows[0]['median']
        lines.append(
            f"| {row['config']} | {row['params'] / 1e6:.2f}M | "
            f"{row['median']:.3f} | {row['mean']:.3f} | {share} | "
            f"{rank_share} | {rank_time} | {ratio:.2f} |")
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    rows = [benchmark(config, args) for config in args.configs]
    height, width = args.img_size
    loads = [load for row in rows for load in row['load'] if load is not None]
    load = (f', 1-min load average {min(loads):.2f}..{max(loads):.2f} on '
            f'{os.cpu_count()} CPUs' if loads else '')
    print(f'\n{args.iters} timed iterations after {args.warmup} warm-up, '
          f'batch {args.batch}, {height}x{width}, {args.device}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads'
          f'{load}\n')
    print('\n'.join(format_table(rows)))


if __name__ == '__main__':
    main()
