"""Train a detector with an mmdet 3.x / mmengine config (mmdet's ``tools/train.py`` interface).

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr] [--resume [CHECKPOINT]]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-process training goes through ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``.

Additions to mmdet's tool:

* ``import brs_detr`` registers the project's modules and installs its checkpoint loader, so any config of this
  project or of mmdet works without ``custom_imports``.
* The run's work_dir is registered as trusted for checkpoint loading (``brs_detr.utils.checkpoint``), so resuming
  from the Runner's own checkpoints works under torch >= 2.6 (``torch.load(weights_only=True)`` by default).
* On a machine without CUDA a distributed run uses the gloo backend instead of nccl (with a warning) and DDP without
  ``device_ids``; mmengine itself would call ``torch.cuda.set_device`` and fail.
* Bad input (missing config or checkpoint, ``--amp`` without an accelerator) fails early with a clear message.

The helpers below are shared with ``tools/test.py``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import os.path as osp
import subprocess
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log

#: Marker file written by mmengine's CheckpointHook into every work_dir.
LAST_CHECKPOINT_MARKER = 'last_checkpoint'
DEFAULT_MASTER_PORT = '29500'


def fail(message: str) -> NoReturn:
    """Exit with status 2 and ``<tool>: error: message``, as argparse does for bad arguments."""
    print(f'{osp.basename(sys.argv[0])}: error: {message}', file=sys.stderr)
    sys.exit(2)


def warn(message: str) -> None:
    """Log a warning once per job: before the Runner exists every process would print it, so only rank 0 does."""
    if os.environ.get('RANK', '0') == '0':
        print_log(message, logger='current', level=logging.WARNING)


def is_url(path: str) -> bool:
    return '://' in path


def check_config(config_path: str) -> None:
    """Fail clearly when the config file does not exist."""
    if not osp.isfile(config_path):
        fail(f'config file not found: {config_path}')


def load_config(config_path: str, cfg_options: Optional[dict], launcher: str) -> Config:
    """Read ``config_path``, apply ``--cfg-options`` and set the launcher; a missing file fails clearly."""
    check_config(config_path)
    cfg = Config.fromfile(config_path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """work_dir priority, as in mmdet: CLI > ``work_dir`` in the config > ./work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def trust_directory(path: str) -> None:
    """Register ``path`` as trusted for full (non weights-only) checkpoint unpickling."""
    from brs_detr.utils.checkpoint import trust_directory as _trust_directory
    _trust_directory(path)


def is_runner_work_dir(path: str) -> bool:
    """Whether ``path`` is a work_dir written by an mmengine Runner (its CheckpointHook's ``last_checkpoint``).

    A config dump alone is not enough: any folder with a ``.py`` file would pass. Checkpoints saved by a brs-detr
    Runner are trusted anyway through their signed manifest entries (``brs_detr.utils.trust``).
    """
    return osp.isfile(osp.join(path, LAST_CHECKPOINT_MARKER))


def trust_checkpoint_dir(checkpoint: str) -> None:
    """Trust the directory of a local ``checkpoint`` only if it is a Runner work_dir (a run of ours)."""
    if is_url(checkpoint):
        return
    ckpt_dir = osp.dirname(osp.abspath(checkpoint))
    if is_runner_work_dir(ckpt_dir):
        trust_directory(ckpt_dir)


def check_checkpoint(checkpoint: str, what: str = 'checkpoint') -> None:
    """Fail clearly when a local checkpoint file does not exist (URLs are checked by the loader)."""
    if not is_url(checkpoint) and not osp.isfile(checkpoint):
        fail(f'{what} file not found: {checkpoint}')


def _dist_kwargs(dist_cfg: dict) -> dict:
    """``dist_cfg`` without ``backend``/``port``, with a timeout in seconds turned into a timedelta."""
    kwargs = {k: v for k, v in dist_cfg.items() if k not in ('backend', 'port')}
    if isinstance(kwargs.get('timeout'), (int, float)):
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    return kwargs


def _set_slurm_env(dist_cfg: dict) -> None:
    """Derive torch.distributed's env:// variables from SLURM's, as mmengine's slurm launcher does."""
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    master_addr = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
    port = dist_cfg.get('port')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', DEFAULT_MASTER_PORT)
    os.environ.setdefault('MASTER_ADDR', master_addr)
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    os.environ['RANK'] = str(proc_id)


def setup_distributed_without_cuda(cfg: Config) -> None:
    """Make a distributed launch work on a machine without CUDA.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper passes ``device_ids=[LOCAL_RANK]``,
    both of which fail on CPU. Here the process group is created with gloo (replacing nccl, which needs CUDA) before
    the Runner is built, so the Runner skips its own initialisation, and DDP gets ``device_ids=None``.
    No-op for ``--launcher none`` or when CUDA is available.
    """
    import torch
    import torch.distributed as torch_dist

    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    backend = dist_cfg.get('backend', 'nccl')
    if backend == 'nccl':
        warn('CUDA is not available: using the gloo distributed backend instead of nccl')
        backend = 'gloo'
        dist_cfg.backend = backend
    if cfg.launcher == 'slurm':
        _set_slurm_env(dist_cfg)
    elif cfg.launcher != 'pytorch':
        fail(f'--launcher {cfg.launcher} needs CUDA; on CPU use --launcher pytorch (tools/dist_train.sh) or slurm')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        fail(f'--launcher {cfg.launcher} needs the environment variables {missing}; start the tool with '
             'tools/dist_train.sh / tools/dist_test.sh (torchrun) or srun')
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, **_dist_kwargs(dist_cfg))
    wrapper_cfg = cfg.get('model_wrapper_cfg') or ConfigDict(type='MMDistributedDataParallel')
    wrapper_cfg.setdefault('broadcast_buffers', False)
    wrapper_cfg.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper_cfg['device_ids'] = None  # CPU module: DDP must not get device ids
    cfg.model_wrapper_cfg = wrapper_cfg


def run_checked(step: Callable[[], Any]) -> Any:
    """Run ``step`` (``runner.train``/``runner.test``); a checkpoint refused as untrusted ends with its message only.

    brs_detr's loader raises ``UntrustedCheckpointError`` with instructions when a checkpoint would need full
    unpickling but is not trusted; a traceback adds nothing to that message.
    """
    from brs_detr.utils.checkpoint import UntrustedCheckpointError
    try:
        return step()
    except UntrustedCheckpointError as error:
        fail(str(error))


def run_tool_main(main: Callable[[], None]) -> NoReturn:
    """Run a tool's ``main`` and take the distributed process group down before the interpreter exits.

    Why: gloo runs collectives on its own worker threads, and a worker may release the last reference to a finished
    collective's tensors just after the Python side stopped waiting for it. When that happens while the interpreter is
    finalizing, the worker cannot take the GIL, is unwound, and the C++ runtime aborts the process ("terminate called
    without an active exception", exit code -6) although training or testing succeeded; torchrun then reports the
    whole job as failed. Here the Runner (whose DDP wrapper holds the process group) is released and the group is
    destroyed while Python is still fully alive, which joins gloo's worker threads.

    Exit status: 0 on success, ``SystemExit``'s code, or 1 after an uncaught exception (its traceback is printed
    first; the exception is dropped so that its frames do not keep the Runner alive).
    """
    exit_code: Any = 0
    try:
        main()
    except SystemExit as error:
        exit_code = error.code
    except BaseException:  # noqa: B902  (reported like the interpreter would, then the group is taken down)
        traceback.print_exc()
        exit_code = 1
    close_process_group()
    sys.exit(exit_code)


def close_process_group() -> None:
    """Destroy the default process group and free every object that still holds it (see ``run_tool_main``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # Runner <-> loop/hook reference cycles keep the DDP wrapper, and with it the group, alive


def build_runner(cfg: Config):
    """Build the Runner named by ``runner_type`` (default: mmengine's Runner)."""
    from mmengine.runner import Runner

    from mmdet.registry import RUNNERS

    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def check_amp_device() -> None:
    """Fail clearly when no device supports mmengine's AmpOptimWrapper (it asserts CUDA/NPU/MLU/MUSA)."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available

    if not (is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()):
        fail('--amp needs a CUDA (or NPU/MLU/MUSA) device: mmengine\'s AmpOptimWrapper refuses to run on CPU. '
             'Train without --amp on this machine.')


def enable_amp(cfg: Config) -> None:
    """Switch ``OptimWrapper`` to mmengine's ``AmpOptimWrapper`` (dynamic loss scale)."""
    check_amp_device()
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper_type == 'AmpOptimWrapper':
        warn('AMP training is already enabled in your config.')
        return
    if wrapper_type != 'OptimWrapper':
        fail(f'--amp is only supported when optim_wrapper.type is OptimWrapper, got {wrapper_type}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector (brs-detr, mmdet 3.x)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (needs a CUDA device)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by (total batch size) / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto', metavar='CHECKPOINT',
                        help='resume from CHECKPOINT; without a value, resume from the latest checkpoint in the '
                        'work_dir')
    return parse_with_launch_args(parser, argv)


def parse_with_launch_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Add the options train.py and test.py share (``--cfg-options``, ``--launcher``, ``--local-rank``), parse,
    and export ``LOCAL_RANK`` for launchers that pass it as an argument."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as xxx=yyy pairs merged into it; a list is '
                        'key="[a,b]" or key=a,b, nested lists/tuples key="[(a,b),(c,d)]" (quotes needed, no '
                        'white space)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    # cheap checks first: importing brs_detr (all of mmdet's models) takes seconds
    check_config(args.config)
    if args.resume not in (None, 'auto'):
        check_checkpoint(args.resume, 'resume checkpoint')
    if args.amp:
        check_amp_device()
    import brs_detr  # noqa: F401  (registers modules, installs the checkpoint loader)

    cfg = load_config(args.config, args.cfg_options, args.launcher)
    set_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        enable_amp(cfg)

    if args.auto_scale_lr:
        if 'enable' in cfg.get('auto_scale_lr', {}) and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            fail('--auto-scale-lr needs auto_scale_lr=dict(enable=..., base_batch_size=...) in the config '
                 f'{args.config}')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

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
    run_checked(runner.train)


if __name__ == '__main__':
    run_tool_main(main)
