"""What ranking across processes costs: extra time and bytes received per call, in gloo processes on this machine.

Used by ``tools/benchmark_global_ranking.py``; see ``docs/rank_based_heads.md`` ("One GPU or many"). Two
measurements, each with ``rank_across_processes`` off and on, in ``processes`` spawned CPU processes joined by a
gloo group (every process a GPU of a real run):

* the loss alone on a cell of the loss benchmark's grid (``tools/benchmark_loss.py``): every process holds its own
  ``L`` logits with a fraction ``m`` of positives, from the same logit generators and a seed per process;
* one DDP training iteration of each given config on synthetic images (mmengine's DDP wrapper, the config's own
  optimizer wrapper), as in ``tools/benchmark_train.py``.

A timed call or iteration starts and ends with a barrier, so its time is that of the slowest process, as in a
synchronous data-parallel step. Bytes are what one process receives from the collectives of the ranking losses
(the all-gathered sizes and padded examples, including its own; each call also all-reduces 16 bytes).
"""
from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time
from typing import Dict, List, Sequence

from .loss_grid import LOSSES, REGIMES

#: Loss benchmark rows measured by default (the fast methods; the pairwise rows rank the same way).
DEFAULT_LOSSES = ('brs', 'bap', 'rs_exact', 'ap_exact')
MIB = 2**20


def _timed(call, repeats: int, warmup: int) -> List[float]:
    """Wall seconds of ``call()`` between two barriers, ``warmup`` untimed calls first."""
    import torch.distributed as dist

    times = []
    for index in range(warmup + repeats):
        dist.barrier()
        start = time.perf_counter()
        call()
        dist.barrier()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _gathered_bytes(module: torch.nn.Module) -> int:
    from brs_detr.models.losses import RankingLoss

    return sum(m.gathered_bytes for m in module.modules() if isinstance(m, RankingLoss))


def loss_job(rank: int, world_size: int, losses: Sequence[str], regimes: Sequence[str], size: int, ratio: float,
             seed: int, repeats: int, warmup: int) -> List[dict]:
    """Time each loss with and without the option on this process's cell; one row per (regime, loss, option)."""
    import brs_detr.models  # noqa: F401  (registers the losses)
    from mmdet.registry import MODELS
    from .loss_worker import make_inputs

    rows = []
    for regime in regimes:
        logits, iou_targets, binary_targets = make_inputs(regime, size, ratio, seed + rank)
        for key in losses:
            spec = LOSSES[key]
            targets = binary_targets if spec.binary_targets else iou_targets
            for across in (False, True):
                loss = MODELS.build(dict(spec.cfg, rank_across_processes=across))

                def call():
                    x = logits.clone().requires_grad_()
                    sum(loss(x, targets).values()).backward()

                times = _timed(call, repeats, warmup)
                rows.append(dict(regime=regime, loss=spec.title, across=across, seconds=statistics.median(times),
                                 bytes=loss.gathered_bytes / (repeats + warmup)))
    return rows


def model_job(rank: int, world_size: int, configs: Sequence[str], img_size: Sequence[int], batch: int,
              num_gts: int, iters: int, warmup: int) -> List[dict]:
    """Time DDP training iterations of each config with and without the option."""
    import torch
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import build_optim_wrapper

    from brs_detr.engine.runner.model_build import named_build_errors
    from brs_detr.models.losses import set_rank_across_processes
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from .train import _num_classes, synthetic_batch

    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    rows = []
    for config in configs:
        for across in (False, True):
            cfg = Config.fromfile(config)
            if cfg.model.get('backbone') is not None:
                cfg.model.backbone.init_cfg = None
            num_losses = set_rank_across_processes(cfg.model, across)
            torch.manual_seed(0)
            with named_build_errors(cfg.model):
                model = MODELS.build(cfg.model)
            model.init_weights()
            model.train()
            wrapped = MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                                find_unused_parameters=False)
            optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
            generator = torch.Generator().manual_seed(rank)
            data = [synthetic_batch(batch, img_size, num_gts, _num_classes(cfg), generator)
                    for _ in range(warmup + iters)]
            step = iter(data)
            times = _timed(lambda: wrapped.train_step(next(step), optim_wrapper), iters, warmup)
            rows.append(dict(config=config, across=across, ranking_losses=num_losses,
                             seconds=statistics.median(times),
                             bytes=_gathered_bytes(model) / (warmup + iters)))
    return rows


def _pairs(rows: List[dict], key: str) -> Dict[str, Dict[bool, dict]]:
    table: Dict[str, Dict[bool, dict]] = {}
    for row in rows:
        table.setdefault(row[key], {})[row['across']] = row
    return table


def format_loss_table(rows: List[dict], size: int, ratio: float, processes: int) -> List[str]:
    lines = [f'| regime | loss | per process ms | across processes ms | extra | MiB received per call |',
             '|---|---|---:|---:|---:|---:|']
    for regime in dict.fromkeys(row['regime'] for row in rows):
        for title, pair in _pairs([r for r in rows if r['regime'] == regime], 'loss').items():
            local, across = pair[False], pair[True]
            lines.append(f"| {regime} | {title} | {local['seconds'] * 1e3:.1f} | {across['seconds'] * 1e3:.1f} | "
                         f"{across['seconds'] / local['seconds']:.2f}x | {across['bytes'] / MIB:.2f} |")
    lines.append('')
    lines.append(f'{processes} processes, each with L = {size:,} logits and {ratio:.1%} positives (its own seed); '
                 'median forward + backward time between barriers.')
    return lines


def format_model_table(rows: List[dict], processes: int, batch: int, img_size: Sequence[int]) -> List[str]:
    lines = ['| config | ranking losses | per process s/iter | across processes s/iter | extra | '
             'KiB received per iteration |', '|---|---:|---:|---:|---:|---:|']
    for config, pair in _pairs(rows, 'config').items():
        local, across = pair[False], pair[True]
        lines.append(f"| `{config}` | {across['ranking_losses']} | {local['seconds']:.3f} | "
                     f"{across['seconds']:.3f} | {across['seconds'] / local['seconds']:.2f}x | "
                     f"{across['bytes'] / 1024:.1f} |")
    lines.append('')
    lines.append(f'{processes} processes x {batch} synthetic {img_size[0]}x{img_size[1]} images, DDP training '
                 'iteration (median between barriers).')
    return lines


def run(args: argparse.Namespace) -> None:
    """Run the measurements of ``tools/benchmark_global_ranking.py`` and print Markdown tables."""
    from brs_detr.engine.dist import run_in_cpu_processes

    if args.size:
        job = functools.partial(loss_job, losses=args.losses, regimes=args.regimes, size=args.size,
                                ratio=args.ratio, seed=args.seed, repeats=args.repeats, warmup=args.warmup)
        rows = run_in_cpu_processes(job, args.processes, threads=args.threads)[0]
        print('\n'.join(format_loss_table(rows, args.size, args.ratio, args.processes)), flush=True)
    if args.configs:
        job = functools.partial(model_job, configs=args.configs, img_size=args.img_size, batch=args.batch,
                                num_gts=args.num_gts, iters=args.iters, warmup=args.warmup)
        rows = run_in_cpu_processes(job, args.processes, threads=args.threads)[0]
        print('\n' + '\n'.join(format_model_table(rows, args.processes, args.batch, args.img_size)), flush=True)


__all__ = ['DEFAULT_LOSSES', 'REGIMES', 'loss_job', 'model_job', 'format_loss_table', 'format_model_table', 'run']
