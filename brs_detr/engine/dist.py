"""Process groups for the tools: distributed runs on machines without CUDA, and a clean shutdown.

mmengine's launcher assumes CUDA: ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper passes
``device_ids=[LOCAL_RANK]``. :func:`setup_distributed_without_cuda` makes ``--launcher pytorch|slurm`` work on CPU
(gloo); :func:`close_process_group` takes the group down while Python is still fully alive;
:func:`run_in_cpu_processes` runs a function in several gloo processes on this machine (measurements, tests).
"""
from __future__ import annotations

import datetime
import gc
import logging
import os
import socket
import subprocess
import tempfile
from typing import Any, Callable, List, Optional

from mmengine.config import Config, ConfigDict

#: torch.distributed's default rendezvous port (also tools/dist_train.sh's default).
DEFAULT_MASTER_PORT = '29500'
#: Environment variables torch.distributed's ``env://`` initialisation reads.
ENV_RENDEZVOUS_VARIABLES = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
#: The SLURM variables the slurm launcher derives them from (set by ``srun`` for each task).
SLURM_VARIABLES = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')


class LauncherError(RuntimeError):
    """The launcher cannot work on this machine or its environment is incomplete."""


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


def launch_world_size(launcher: str) -> int:
    """The number of processes of the job ``launcher`` started (from the environment, before any process group;
    :func:`check_launch_environment` has checked the variables): 1 without a launcher."""
    if launcher == 'pytorch':
        return int(os.environ['WORLD_SIZE'])
    if launcher == 'slurm':
        return int(os.environ['SLURM_NTASKS'])
    return 1


def check_launch_environment(launcher: str) -> None:
    """Refuse a distributed ``launcher`` whose process was not started by its launcher (torchrun, srun).

    Light (no torch), so the tools call it before any heavy work; mmengine would fail with ``KeyError: 'RANK'`` /
    ``'SLURM_PROCID'`` once it initialises the process group.

    Raises:
        LauncherError: Names the missing environment variables and how to start the tool.
    """
    if launcher == 'pytorch':
        missing = [name for name in ENV_RENDEZVOUS_VARIABLES if name not in os.environ]
        if missing:
            raise LauncherError(f'--launcher pytorch needs the environment variables {missing}; start the tool '
                                'with tools/dist_train.sh / tools/dist_test.sh (torchrun)')
    elif launcher == 'slurm':
        missing = [name for name in SLURM_VARIABLES if name not in os.environ]
        if missing:
            raise LauncherError(f'--launcher slurm needs the environment variables {missing}, which srun sets for '
                                'each task: start the tool with srun (tools/slurm_train.sh, tools/slurm_test.sh), '
                                'or use --launcher pytorch (tools/dist_train.sh)')


def setup_distributed_without_cuda(cfg: Config) -> None:
    """Make a distributed launch work on a machine without CUDA.

    The process group is created with gloo (replacing nccl, which needs CUDA) before the Runner is built, so the
    Runner skips its own initialisation, and DDP gets ``device_ids=None``. No-op for ``launcher='none'`` or when
    CUDA is available.

    Raises:
        LauncherError: The launcher needs CUDA (mpi), or the rendezvous environment variables are missing.
    """
    import torch
    import torch.distributed as torch_dist
    from mmengine.logging import print_log

    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    backend = dist_cfg.get('backend', 'nccl')
    if backend == 'nccl':
        if os.environ.get('RANK', '0') == '0':
            print_log('CUDA is not available: using the gloo distributed backend instead of nccl', logger='current',
                      level=logging.WARNING)
        backend = 'gloo'
        dist_cfg.backend = backend
    check_launch_environment(cfg.launcher)
    if cfg.launcher == 'slurm':
        _set_slurm_env(dist_cfg)
    elif cfg.launcher != 'pytorch':
        raise LauncherError(f'--launcher {cfg.launcher} needs CUDA; on CPU use --launcher pytorch '
                            '(tools/dist_train.sh) or slurm')
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, **_dist_kwargs(dist_cfg))
    wrapper_cfg = cfg.get('model_wrapper_cfg') or ConfigDict(type='MMDistributedDataParallel')
    wrapper_cfg.setdefault('broadcast_buffers', False)
    wrapper_cfg.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper_cfg['device_ids'] = None  # CPU module: DDP must not get device ids
    cfg.model_wrapper_cfg = wrapper_cfg


def close_process_group() -> None:
    """Destroy the default process group and free every object that still holds it.

    Why: gloo runs collectives on its own worker threads, and a worker may release the last reference to a finished
    collective's tensors just after the Python side stopped waiting for it. When that happens while the interpreter is
    finalizing, the worker cannot take the GIL, is unwound, and the C++ runtime aborts the process ("terminate called
    without an active exception", exit code -6) although the run succeeded; torchrun then reports the whole job as
    failed. Destroying the group while Python is still fully alive joins gloo's worker threads.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # Runner <-> loop/hook reference cycles keep the DDP wrapper, and with it the group, alive


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _cpu_process_entry(rank: int, world_size: int, port: int, out_dir: str, job: Callable[[int, int], Any],
                       threads: int) -> None:
    import torch
    import torch.distributed as torch_dist

    from brs_detr.known_warnings import ignore_known_warnings

    ignore_known_warnings()  # a spawned process: the parent's warning filters do not reach it
    torch.set_num_threads(threads)
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world_size)
    try:
        result = job(rank, world_size)
        torch.save(result, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        close_process_group()


def run_in_cpu_processes(job: Callable[[int, int], Any], world_size: int, port: Optional[int] = None,
                         threads: int = 1) -> List[Any]:
    """Run ``job(rank, world_size)`` in ``world_size`` spawned processes joined by a gloo process group.

    Args:
        job (callable): A module-level (picklable) function; what it returns must be ``torch.save``-able.
        world_size (int): Number of processes.
        port (int, optional): Rendezvous port on 127.0.0.1; a free one when None.
        threads (int): torch intra-op threads per process.

    Returns:
        list: Each rank's return value, in rank order.
    """
    import torch
    import torch.multiprocessing as mp

    port = _free_port() if port is None else port
    with tempfile.TemporaryDirectory(prefix='brs_detr_processes_') as out_dir:
        mp.spawn(_cpu_process_entry, args=(world_size, port, out_dir, job, threads), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f'rank{rank}.pt'), weights_only=False) for rank in range(world_size)]
