"""Training as ``tools/train.py`` runs it (mmdet's ``tools/train.py`` interface, plus brs-detr's safety).

* ``import brs_detr`` registers the project's modules and installs its checkpoint loader, so any config of this
  project or of mmdet works without ``custom_imports``.
* The run's work_dir is registered as trusted for checkpoint loading (``brs_detr.utils.checkpoint``), so resuming
  from the Runner's own checkpoints works under torch >= 2.6 (``torch.load(weights_only=True)`` by default).
* On a machine without CUDA a distributed run uses the gloo backend instead of nccl (with a warning) and DDP without
  ``device_ids``; mmengine itself would call ``torch.cuda.set_device`` and fail.
* Bad input (missing config or checkpoint, ``--amp`` without an accelerator) fails early with a clear message.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

from mmengine.config import Config

from .launch import (ToolInputError, build_runner, check_checkpoint_file, check_config_file, load_config,
                     set_work_dir, trust_checkpoint_dir, warn)


def check_amp_device() -> None:
    """Raise :class:`ToolInputError` when no device supports mmengine's AmpOptimWrapper (it asserts CUDA/NPU/...)."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available

    if not (is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()):
        raise ToolInputError('--amp needs a CUDA (or NPU/MLU/MUSA) device: mmengine\'s AmpOptimWrapper refuses to '
                             'run on CPU. Train without --amp on this machine.')


def enable_amp(cfg: Config) -> None:
    """Switch ``OptimWrapper`` to mmengine's ``AmpOptimWrapper`` (dynamic loss scale)."""
    check_amp_device()
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper_type == 'AmpOptimWrapper':
        warn('AMP training is already enabled in your config.')
        return
    if wrapper_type != 'OptimWrapper':
        raise ToolInputError(f'--amp is only supported when optim_wrapper.type is OptimWrapper, got {wrapper_type}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def enable_auto_scale_lr(cfg: Config, config_path: str) -> None:
    """Turn on ``auto_scale_lr``; the config must define its ``base_batch_size``."""
    if 'enable' in cfg.get('auto_scale_lr', {}) and 'base_batch_size' in cfg.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    else:
        raise ToolInputError('--auto-scale-lr needs auto_scale_lr=dict(enable=..., base_batch_size=...) in the '
                             f'config {config_path}')


def set_resume(cfg: Config, resume: str) -> None:
    """``--resume`` (``'auto'``: the latest checkpoint of the work_dir) or ``--resume CHECKPOINT``."""
    cfg.resume = True
    cfg.load_from = None if resume == 'auto' else resume


def train(args: argparse.Namespace) -> None:
    """Train as ``tools/train.py`` does with the parsed ``args`` (see ``tools/train.py --help``)."""
    # cheap checks first: building the Runner takes seconds
    check_config_file(args.config)
    if args.resume not in (None, 'auto'):
        check_checkpoint_file(args.resume, 'resume checkpoint')
    if args.amp:
        check_amp_device()
    from brs_detr.engine.dist import setup_distributed_without_cuda
    from brs_detr.utils.trust import trust_directory

    cfg = load_config(args.config, args.cfg_options, args.launcher)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg, args.config)
    if args.resume is not None:
        set_resume(cfg, args.resume)

    setup_distributed_without_cuda(cfg)

    # This run writes its own checkpoints into work_dir and may resume from them.
    os.makedirs(cfg.work_dir, exist_ok=True)
    trust_directory(osp.abspath(cfg.work_dir))
    if args.resume not in (None, 'auto'):
        trust_checkpoint_dir(args.resume)
    elif args.resume == 'auto':
        from mmengine.runner import find_latest_checkpoint
        if find_latest_checkpoint(cfg.work_dir) is None:
            warn(f'--resume: no checkpoint found in {cfg.work_dir}; training starts from scratch')

    runner = build_runner(cfg)
    runner.train()
