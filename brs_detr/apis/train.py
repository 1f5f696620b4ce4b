"""Training as ``tools/train.py`` runs it (mmdet's ``tools/train.py`` interface, plus brs-detr's safety).

* ``import brs_detr`` registers the project's modules and installs its checkpoint loader, so any config of this
  project or of mmdet works without ``custom_imports``.
* Every run is crash-safe and exactly resumable (:func:`brs_detr.engine.reliability.use_resumable_training`), stops
  on a NaN/Inf loss before the update (or skips it; :class:`~brs_detr.engine.hooks.NonFiniteLossHook`), and checks
  its datasets before the Runner starts (:func:`brs_detr.datasets.check_datasets`). docs/reliability.md lists what
  happens in each case.
* The run's work_dir is registered as trusted for checkpoint loading (``brs_detr.fileio.checkpoint``), so resuming
  from the Runner's own checkpoints works under torch >= 2.6 (``torch.load(weights_only=True)`` by default). Any
  other checkpoint needs a signed manifest entry (written when a brs-detr Runner of this user saved it, or by
  ``tools/download_checkpoint.py``) or explicit trust to be unpickled beyond weights.
* On a machine without CUDA a distributed run uses the gloo backend instead of nccl (with a warning) and DDP without
  ``device_ids``; mmengine itself would call ``torch.cuda.set_device`` and fail.
* Bad input (missing config or checkpoint, unknown ``--cfg-options`` key, ``--amp`` without an accelerator, broken
  data) fails before the Runner starts, with a message naming the file and the problem.
* The work_dir belongs to this run while it lasts (:class:`brs_detr.engine.work_dir.WorkDirOwnership`, rank 0): a
  second run in it is refused naming the first, and a fresh start over an earlier run's checkpoints is refused
  unless ``--overwrite-work-dir`` (which moves the earlier run aside first). These checks, and those of the config,
  run before the heavy imports (torch, mmdet): a bad command fails within a second.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Optional

from mmengine.config import Config

from brs_detr.engine.dist import check_launch_environment, launch_world_size
from brs_detr.engine.work_dir import WorkDirOwnership
from .cli import EXIT_NOTES, ToolInputError, check_checkpoint_file, is_main_launch_process
from .config_loading import read_config, set_work_dir
from .run_settings import batch_size_mismatch, check_run_settings, late_schedule_steps


def warn(message: str) -> None:
    from .launch import warn as warn_once
    warn_once(message)


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
    """Turn on ``auto_scale_lr``; the config must define its ``base_batch_size``.

    mmengine scales the lr by (processes x ``train_dataloader.batch_size``) / ``base_batch_size`` and ignores
    gradient accumulation; with ``optim_wrapper.accumulative_counts = k`` one update sees k times that batch, so
    ``base_batch_size`` is divided by k here and the lr follows the batch of an update.
    """
    if 'enable' in cfg.get('auto_scale_lr', {}) and 'base_batch_size' in cfg.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    else:
        raise ToolInputError('--auto-scale-lr needs auto_scale_lr=dict(enable=..., base_batch_size=...) in the '
                             f'config {config_path}')
    accumulation = cfg.get('optim_wrapper', {}).get('accumulative_counts', 1)
    if accumulation != 1:
        cfg.auto_scale_lr.base_batch_size = cfg.auto_scale_lr.base_batch_size / accumulation


def set_resume(cfg: Config, resume: str) -> None:
    """``--resume`` (``'auto'``: the latest checkpoint of the work_dir) or ``--resume CHECKPOINT``."""
    cfg.resume = True
    cfg.load_from = None if resume == 'auto' else resume


def validated_splits(cfg: Config) -> list:
    """The splits a training run reads: train, and val when the config validates."""
    validates = all(cfg.get(key) for key in ('val_cfg', 'val_dataloader', 'val_evaluator'))
    return ['train', 'val'] if validates else ['train']


def train(args: argparse.Namespace) -> None:
    """Train as ``tools/train.py`` does with the parsed ``args`` (see ``tools/train.py --help``)."""
    EXIT_NOTES.pop('interrupted', None)
    if args.resume not in (None, 'auto'):
        check_checkpoint_file(args.resume, 'resume checkpoint')
    cfg = read_config(args.config, args.cfg_options)  # light: syntax, _base_, custom_imports, --cfg-options
    cfg.launcher = args.launcher
    check_run_settings(cfg, validated_splits(cfg))
    check_launch_environment(cfg.launcher)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.resume is None and cfg.get('load_from'):
        check_checkpoint_file(cfg.load_from, 'load_from checkpoint')
    owner = WorkDirOwnership(cfg.work_dir) if is_main_launch_process() else None  # rank 0 owns the work_dir
    if owner is not None:
        owner.acquire()
    try:
        if owner is not None:
            owner.check_fresh_start(resume=args.resume is not None,
                                    overwrite=getattr(args, 'overwrite_work_dir', False))
        _train(cfg, args, owner)
    finally:
        if owner is not None:
            owner.release()


def _train(cfg: Config, args: argparse.Namespace, owner: Optional[WorkDirOwnership]) -> None:
    """The heavy part of :func:`train`, in the work_dir ``owner`` holds (``None`` on ranks other than 0)."""
    from brs_detr.engine.dist import setup_distributed_without_cuda
    from brs_detr.engine.reliability import guard_non_finite_loss, use_resumable_training
    from brs_detr.fileio.trust import trust_directory
    from .launch import build_runner, check_config_components, prepare_datasets

    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg, args.config)
    if args.resume is not None:
        set_resume(cfg, args.resume)
    for late in late_schedule_steps(cfg):
        warn(late)
    mismatch = batch_size_mismatch(cfg, launch_world_size(cfg.launcher))
    if mismatch is not None:
        warn(mismatch)
    use_resumable_training(cfg)
    guard_non_finite_loss(cfg, args.non_finite_loss, args.max_consecutive_skips)
    check_config_components(cfg)
    prepare_datasets(cfg, validated_splits(cfg), args.skip_data_check)

    if owner is not None and getattr(args, 'overwrite_work_dir', False):
        moved = owner.move_previous_run_aside()
        if moved is not None:
            warn(f'--overwrite-work-dir: the earlier run in {cfg.work_dir} was moved to {moved}')
    setup_distributed_without_cuda(cfg)

    # This run writes its own checkpoints into work_dir and may resume from them. Checkpoints elsewhere are
    # trusted only through their signed manifest entries (brs_detr.fileio.trust) or the user's explicit trust.
    trust_directory(osp.abspath(cfg.work_dir))
    EXIT_NOTES['interrupted'] = f'the checkpoints saved in {cfg.work_dir} are kept; continue with --resume'
    runner = build_runner(cfg)
    runner.train()
