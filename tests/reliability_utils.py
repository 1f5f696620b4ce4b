"""Helpers of the fault tests: configs with injected faults, tool runs that can be killed, reading their results,
and a tiny model and dataset for in-process Runners."""
from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModel
from torch import nn

from conftest import CONFIGS_DIR, REPO_ROOT, TOOLS_DIR

TOY_CONFIG = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'
TESTS_DIR = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 300
#: Size of the in-process toy runs (:class:`Pairs`): 4 iterations per epoch.
NUM_SAMPLES = 8
BATCH_SIZE = 2
#: Per-iteration values compared between a resumed and an uninterrupted run.
COMPARED_KEYS = ('loss', 'loss_cls', 'loss_bbox', 'loss_centerness', 'grad_norm', 'lr')

FAULT_CONFIG = '''\
_base_ = [{base!r}]
custom_imports = dict(imports=['brs_detr', 'fault_injection'], allow_failed_imports=False)
train_cfg = dict(max_epochs={epochs}, val_interval={epochs} + 1)
val_cfg = None
val_dataloader = None
val_evaluator = None
train_dataloader = dict(batch_size={batch_size}, num_workers={num_workers}, persistent_workers={persistent})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch={by_epoch}, interval={interval}, max_keep_ckpts=-1))
log_processor = dict(window_size=1)
randomness = dict(seed={seed})
custom_hooks = [dict(type='FaultInjectionHook', {faults})]
'''


def write_fault_config(path: Path, epochs: int, interval: int, by_epoch: bool = False, batch_size: int = 2,
                       seed: Optional[int] = 0, faults: str = '', num_workers: int = 0) -> Path:
    """A config derived from the toy ATSS one: no validation, every iteration logged unsmoothed, checkpoints
    every ``interval`` iterations (or epochs), :class:`fault_injection.FaultInjectionHook` with ``faults``, and
    ``num_workers`` DataLoader workers (persistent when there are any)."""
    path.write_text(FAULT_CONFIG.format(base=str(TOY_CONFIG), epochs=epochs, interval=interval, by_epoch=by_epoch,
                                        batch_size=batch_size, seed=seed, faults=faults, num_workers=num_workers,
                                        persistent=num_workers > 0))
    return path


def fault_env(tool_env: Dict[str, str], port: Optional[int] = None) -> Dict[str, str]:
    """The tools' environment with ``tests/`` importable (for ``fault_injection``) and a rendezvous port."""
    env = dict(tool_env)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(TESTS_DIR), str(REPO_ROOT), env.get('PYTHONPATH')) if p)
    if port is not None:
        env['PORT'] = str(port)
    return env


def train_command(config: Path, work_dir: Path, python: str, procs: int = 1, extra: Sequence[str] = ()) -> List[str]:
    if procs == 1:
        return [python, str(TOOLS_DIR / 'train.py'), str(config), '--work-dir', str(work_dir), *extra]
    return ['bash', str(TOOLS_DIR / 'dist_train.sh'), str(config), str(procs), '--work-dir', str(work_dir), *extra]


def run(cmd: Sequence[str], cwd: Path, env: Dict[str, str],
        kill_when: Optional[Callable[[str], bool]] = None) -> Tuple[int, str]:
    """Run ``cmd`` in its own process group; SIGKILL the group once ``kill_when(line)`` holds for an output line.

    Returns:
        ``(exit status, combined output)``; a negative status is the signal that ended the process.
    """
    process = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    watchdog = threading.Timer(RUN_TIMEOUT_S, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if kill_when is not None and kill_when(line):
                os.killpg(process.pid, signal.SIGKILL)
                kill_when = None
        return process.wait(), ''.join(lines)
    finally:
        watchdog.cancel()


def train_records(work_dir: Path) -> Dict[int, dict]:
    """Training records of every run in ``work_dir`` by iteration; a later run's record replaces an earlier one."""
    records: Dict[int, dict] = {}
    for log in sorted(glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))):
        for line in Path(log).read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record:
                records[record['iter']] = record
    return records


def load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def max_abs_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def all_checkpoints_load(work_dir: Path) -> List[str]:
    """Load every ``*.pth`` of ``work_dir`` (they must all be complete); return their names."""
    names = []
    for path in sorted(work_dir.glob('*.pth')):
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
        assert 'state_dict' in checkpoint and 'optimizer' in checkpoint, path
        names.append(path.name)
    return names


class Regressor(BaseModel):
    """A linear regressor whose loss is NaN at the training steps in ``nan_steps`` (0-based)."""

    def __init__(self, nan_steps=()) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.nan_steps = set(nan_steps)
        self.steps = 0

    def forward(self, inputs, targets=None, mode='tensor'):
        outputs = self.linear(torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs)
        if mode != 'loss':
            return outputs
        loss = ((outputs.squeeze(-1) - targets)**2).mean()
        if self.steps in self.nan_steps:
            loss = loss * math.nan
        self.steps += 1
        return dict(loss_mse=loss)


class Pairs(torch.utils.data.Dataset):

    def __init__(self) -> None:
        self.inputs = torch.randn(NUM_SAMPLES, 2, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=self.inputs[index], targets=self.inputs[index].sum())
