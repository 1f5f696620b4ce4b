"""Training-iteration benchmark: time (and peak memory) of full training steps on synthetic data.

Used by ``tools/benchmark_train.py``; see ``docs/benchmark_train.md``. Each config's model is built without
pretrained weights and trained through ``model.train_step`` with the config's own optimizer wrapper, on random
images with random ground-truth boxes, so the numbers cover data preprocessing (on device), forward, every loss,
backward and the optimizer step, but no data loading.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from .memory import MIB

#: Synthetic image size (H, W) when none is given: small enough that the R50 Co-DETR, RS-DETR and BRS-DETR configs
#: finish a default run in a few minutes on a 2-core CPU, large enough that every feature level is non-trivial.
DEFAULT_IMG_SIZE = (320, 320)
#: Default regex of the submodules whose forward is timed: every ``loss_*`` module.
DEFAULT_TIME_MODULES = r'(^|\.)loss_\w+$'
#: What a time is measured in: wall-clock seconds, or CPU seconds of this process (all its threads), which other
#: jobs on a shared machine disturb far less (use one thread for comparable numbers).
CLOCKS: Dict[str, Callable[[], float]] = dict(wall=time.perf_counter, cpu=time.process_time)


def synthetic_batch(batch: int, img_size, num_gts: int, num_classes: int,
                    generator: torch.Generator) -> dict:
    """Random uint8 images with random boxes, as a dataloader yields them."""
    import torch
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


def build_training(config: str, cfg_options: Optional[dict], device: torch.device):
    """Build ``config``'s model (no pretrained weights, seed 0) on ``device`` and its optimizer wrapper.

    Returns:
        tuple: ``(cfg, model, optim_wrapper)``.
    """
    import torch
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import brs_detr.models  # noqa: F401  (registers the project's models)
    from brs_detr.datasets.num_classes import read_config, resolve_num_classes
    from brs_detr.engine.runner.model_build import named_build_errors
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    # the per-parameter initialization report is not wanted here
    logging.getLogger('mmengine').setLevel(logging.WARNING)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    cfg = read_config(config)  # num_classes='from_dataset' resolved after cfg_options
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    resolve_num_classes(cfg)
    if cfg.model.get('backbone') is not None:
        cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    with named_build_errors(cfg.model):
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
    return cfg, model, optim_wrapper


def benchmark(config: str, iters: int = 10, warmup: int = 2, device: str = 'cpu',
              img_size: Sequence[int] = DEFAULT_IMG_SIZE, batch: int = 1, num_gts: int = 10,
              time_modules: str = DEFAULT_TIME_MODULES, ranking_timer: bool = True,
              cfg_options: Optional[dict] = None, metric: str = 'wall') -> dict:
    """Time ``iters`` training iterations of ``config`` after ``warmup`` untimed ones.

    Args:
        config (str): Config file.
        iters (int): Timed iterations (>= 1).
        warmup (int): Untimed iterations first (>= 0); they also allocate the optimizer state, so the memory
            baseline of the timed iterations includes it.
        device (str): ``'cpu'`` or ``'cuda'``.
        img_size (Sequence[int]): Synthetic image ``(H, W)``.
        batch (int): Images per iteration.
        num_gts (int): Random ground-truth boxes per image.
        time_modules (str): Regex of submodule names whose forward is timed (``''``: none).
        ranking_timer (bool): Time the ranking losses, forward and backward.
        cfg_options (dict, optional): Overrides merged into the config.
        metric (str): ``'wall'`` (seconds) or ``'cpu'`` (CPU seconds of this process, CPU devices only); every
            time (iterations and timed modules) is measured with it.

    Returns:
        dict: ``config``, ``params``, ``median``/``mean`` s/iter, ``share`` (forward share of the timed modules),
        ``timed`` (their count), ``rank_share``, ``rank_forward``, ``rank_backward`` (medians, seconds),
        ``rank_modules``, ``peak_memory`` and ``memory_baseline`` (bytes, see :class:`PeakMemoryMeter`),
        ``memory_resettable`` and ``load`` (1-minute load average before and after).

    Raises:
        RuntimeError: A non-finite loss, or ranking-loss backward calls outside the modules.
    """
    import torch

    from .memory import PeakMemoryMeter
    from .timers import ModuleTimer, RankingLossTimer

    torch_device = torch.device(device)
    cfg, model, optim_wrapper = build_training(config, cfg_options, torch_device)
    num_classes = _num_classes(cfg)
    generator = torch.Generator().manual_seed(0)
    clock = CLOCKS[metric]
    timer = ModuleTimer(model, time_modules, torch_device, clock) if time_modules else None
    rank_timer = RankingLossTimer(model, torch_device, clock) if ranking_timer else None
    if rank_timer is not None and not rank_timer.names:
        rank_timer.remove()
        rank_timer = None
    memory = PeakMemoryMeter(torch_device)

    times, shares = [], []
    rank_shares, rank_forward, rank_backward = [], [], []
    load_before = _load_average()
    try:
        for iteration in range(warmup + iters):
            if iteration == warmup:
                memory.reset()
            data = synthetic_batch(batch, img_size, num_gts, num_classes, generator)
            if timer is not None:
                timer.reset()
            if rank_timer is not None:
                rank_timer.reset()
            if torch_device.type == 'cuda':
                torch.cuda.synchronize(torch_device)
            start = clock()
            log_vars = model.train_step(data, optim_wrapper)
            if torch_device.type == 'cuda':
                torch.cuda.synchronize(torch_device)
            elapsed = clock() - start
            if not torch.isfinite(torch.as_tensor(log_vars['loss'])):
                raise RuntimeError(f'{config}: non-finite loss at iteration {iteration}')
            if rank_timer is not None and rank_timer.backward_calls > rank_timer.forward_calls:
                raise RuntimeError(
                    f'{config}: {rank_timer.backward_calls} ranking-loss backward calls for '
                    f'{rank_timer.forward_calls} module calls; a ranking loss ran outside its module')
            phase = 'warm-up' if iteration < warmup else 'timed'
            ranking = '' if rank_timer is None else (
                f', ranking losses {1e3 * rank_timer.forward:.2f} ms fwd + {1e3 * rank_timer.backward:.2f} ms bwd')
            print(f'{config}: iteration {iteration + 1} ({phase}) {elapsed:.3f} s{ranking}', file=sys.stderr,
                  flush=True)
            if iteration >= warmup:
                times.append(elapsed)
                if timer is not None:
                    shares.append(timer.total / elapsed)
                if rank_timer is not None:
                    rank_shares.append(rank_timer.total / elapsed)
                    rank_forward.append(rank_timer.forward)
                    rank_backward.append(rank_timer.backward)
        peak_memory, memory_baseline = memory.read()
    finally:
        if timer is not None:
            timer.remove()
        if rank_timer is not None:
            rank_timer.remove()
    result = dict(
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
        peak_memory=peak_memory,
        memory_baseline=memory_baseline,
        memory_resettable=memory.resettable,
        load=(load_before, _load_average()))
    # free this config's model and optimizer state before the next config is measured
    del model, optim_wrapper, timer, rank_timer
    gc.collect()
    if torch_device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def format_table(rows: List[dict]) -> List[str]:
    """Markdown table of :func:`benchmark` results, one row per config; ratios are to the first row."""
    lines = [
        '| config | params | median s/iter | mean s/iter | share in timed modules | ranking-loss share (fwd + bwd) | '
        'ranking loss fwd / bwd ms/iter | ratio to first | peak memory MiB (+ over model & optimizer) | '
        'memory ratio to first |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
    ]
    first = rows[0]
    for row in rows:
        share = '-' if row['share'] is None else f"{100 * row['share']:.1f}% ({row['timed']} modules)"
        if row['rank_share'] is None:
            rank_share, rank_time = '- (no ranking loss)', '-'
        else:
            rank_share = f"{100 * row['rank_share']:.1f}% ({row['rank_modules']} modules)"
            rank_time = f"{1e3 * row['rank_forward']:.2f} / {1e3 * row['rank_backward']:.2f}"
        ratio = row['median'] / first['median']
        extra = row['peak_memory'] - row['memory_baseline']
        memory = f"{row['peak_memory'] / MIB:.0f} (+{extra / MIB:.0f})"
        memory_ratio = row['peak_memory'] / first['peak_memory']
        lines.append(
            f"| {row['config']} | {row['params'] / 1e6:.2f}M | {row['median']:.3f} | {row['mean']:.3f} | {share} | "
            f"{rank_share} | {rank_time} | {ratio:.2f} | {memory} | {memory_ratio:.2f} |")
    return lines


def format_header(rows: List[dict], iters: int, warmup: int, batch: int, img_size: Sequence[int],
                  device: str, metric: str = 'wall') -> str:
    """The line above the table: what was run, on what, under which machine load."""
    import torch

    height, width = img_size
    loads = [load for row in rows for load in row['load'] if load is not None]
    load = (f', 1-min load average {min(loads):.2f}..{max(loads):.2f} on {os.cpu_count()} CPUs' if loads else '')
    if device == 'cuda':
        memory = 'peak memory: CUDA allocated tensors'
    elif all(row['memory_resettable'] for row in rows):
        memory = 'peak memory: process peak RSS during the timed iterations'
    else:
        memory = 'peak memory: process lifetime peak RSS (could not be reset on this OS)'
    times = 'times in CPU seconds of the process' if metric == 'cpu' else 'times in wall-clock seconds'
    return (f'{iters} timed iterations after {warmup} warm-up, batch {batch}, {height}x{width}, {device}, '
            f'torch {torch.__version__}, {torch.get_num_threads()} threads{load}; {times}; {memory}')


def run_benchmarks(args: argparse.Namespace) -> List[dict]:
    """Benchmark every config of ``args.configs`` (as parsed by ``tools/benchmark_train.py``) and print the table."""
    rows = [
        benchmark(config, iters=args.iters, warmup=args.warmup, device=args.device, img_size=args.img_size,
                  batch=args.batch, num_gts=args.num_gts, time_modules=args.time_modules,
                  ranking_timer=args.ranking_timer, cfg_options=args.cfg_options, metric=args.metric)
        for config in args.configs
    ]
    header = format_header(rows, args.iters, args.warmup, args.batch, args.img_size, args.device, args.metric)
    print('\n' + header + '\n')
    print('\n'.join(format_table(rows)))
    return rows
