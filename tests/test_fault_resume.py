"""``kill -9`` in the middle of an epoch, then ``--resume``: the run ends exactly as an uninterrupted one.

Real tools on the toy COCO set (8 training images). What is compared with an uninterrupted run of the same config:

* the final checkpoint's state dict (weights and BN buffers): maximum absolute difference 0 (asserted <= 1e-6);
* every logged training value of every iteration (``loss``, each loss term, ``grad_norm``, ``lr``; window size 1, so
  unsmoothed), the killed run's records up to its last checkpoint followed by the resumed run's: equal.

That holds because the resumed run skips the batches of the epoch already trained (``ResumableEpochBasedTrainLoop``),
re-seeds the random generators at every iteration from (seed, iteration), and restores the sampler's seed; a plain
mmengine resume repeats the epoch's first batches and draws other random numbers. The two-process run is compared
the same way: gloo sums two ranks' gradients, and a + b is exact whatever the order.
"""
from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from brs_detr.engine import ReliableRunner
from brs_detr.engine.reliability import guard_non_finite_loss, use_resumable_training
from fault_injection import KILL_MARKER
from reliability_utils import (BATCH_SIZE, COMPARED_KEYS, Pairs, Regressor, all_checkpoints_load, fault_env,
                               load_state_dict, max_abs_difference, run, train_command, train_records,
                               write_fault_config)

#: Weights of the resumed run may differ from the uninterrupted one by at most this (measured: 0).
WEIGHT_TOLERANCE = 1e-6
SEED_LINE = re.compile(r'^\s+seed: (\d+)$', re.MULTILINE)


def assert_same_training(reference_dir, resumed_dir, final_checkpoint: str, num_iters: int) -> None:
    """Same final weights and same per-iteration log values as the uninterrupted run."""
    difference = max_abs_difference(load_state_dict(reference_dir / final_checkpoint),
                                    load_state_dict(resumed_dir / final_checkpoint))
    print(f'largest difference of the final weights: {difference}')
    assert difference <= WEIGHT_TOLERANCE, f'final weights differ by {difference}'
    reference, resumed = train_records(reference_dir), train_records(resumed_dir)
    assert sorted(reference) == sorted(resumed) == list(range(1, num_iters + 1))
    for iteration in reference:
        for key in COMPARED_KEYS:
            assert resumed[iteration][key] == pytest.approx(reference[iteration][key], rel=1e-6, abs=1e-9), (
                f'{key} differs at iteration {iteration}')


@pytest.mark.slow
def test_kill_single_process_with_workers_mid_epoch_then_resume(toy_coco_root, tmp_path, tool_env, python_exe):
    """Killed (SIGKILL from outside, with its 2 persistent DataLoader workers) after the log of iteration 7, in
    epoch 2; checkpoints every 3 iterations. The random flips are drawn in the workers.

    The seed is not fixed in the config: mmengine draws one, the resume restores it (and the sampler's) from the
    checkpoint; the uninterrupted run gets the same seed explicitly.
    """
    cwd, env = toy_coco_root.parents[1], fault_env(tool_env)
    config = write_fault_config(tmp_path / 'cfg.py', epochs=3, interval=3, seed=None, num_workers=2)
    killed_dir, reference_dir = tmp_path / 'killed', tmp_path / 'reference'

    status, output = run(train_command(config, killed_dir, python_exe), cwd, env,
                         kill_when=lambda line: 'Epoch(train) [2][3/4]' in line)
    assert status == -9, output[-3000:]
    assert 'Epoch(train) [3][4/4]' not in output
    seed = SEED_LINE.search(output).group(1)
    last = (killed_dir / 'last_checkpoint').read_text().strip()
    assert last.endswith(('iter_6.pth', 'iter_9.pth')), last  # a mid-epoch checkpoint (4 iterations per epoch)
    assert all_checkpoints_load(killed_dir)

    status, resumed = run(train_command(config, killed_dir, python_exe, extra=['--resume']), cwd, env)
    assert status == 0, resumed[-3000:]
    assert f'Auto resumed from the latest checkpoint {killed_dir / last}' in resumed  # last: relative to the work_dir
    assert re.search(r'Resuming in the middle of epoch [23]: skipping its first [12] batches', resumed)
    assert 'Epoch(train) [1]' not in resumed

    status, output = run(train_command(config, reference_dir, python_exe,
                                       extra=['--cfg-options', f'randomness.seed={seed}']), cwd, env)
    assert status == 0, output[-3000:]
    assert_same_training(reference_dir, killed_dir, 'iter_12.pth', num_iters=12)


@pytest.mark.slow
def test_kill_two_processes_during_checkpoint_save_then_resume(toy_coco_root, tmp_path, tool_env, python_exe,
                                                                free_port):
    """dist_train.sh with 2 processes x 1 image (4 iterations per epoch), checkpoints every 3 iterations; the whole
    process group (launcher and both ranks) is killed by SIGKILL while rank 0 writes iter_6.pth (half of its bytes
    on disk), in the middle of epoch 2.

    Afterwards: no iter_6.pth (only its temporary file), every *.pth loads, last_checkpoint names iter_3.pth; the
    resumed run removes the temporary file and ends as an uninterrupted run does.
    """
    cwd = toy_coco_root.parents[1]
    faulty = write_fault_config(tmp_path / 'faulty.py', epochs=2, interval=3, batch_size=1,
                                faults="kill_in_write_of='iter_6.pth', kill_group=True")
    clean = write_fault_config(tmp_path / 'clean.py', epochs=2, interval=3, batch_size=1)
    killed_dir, reference_dir = tmp_path / 'killed', tmp_path / 'reference'

    status, output = run(train_command(faulty, killed_dir, python_exe, procs=2), cwd,
                         fault_env(tool_env, free_port()))
    assert KILL_MARKER in output and status == -9, output[-3000:]
    assert not (killed_dir / 'iter_6.pth').exists()
    assert [p.name.split('.tmp-')[0] for p in killed_dir.glob('*.tmp-*')] == ['iter_6.pth']
    assert all_checkpoints_load(killed_dir) == ['iter_3.pth']
    assert (killed_dir / 'last_checkpoint').read_text().strip() == 'iter_3.pth'

    status, resumed = run(train_command(clean, killed_dir, python_exe, procs=2, extra=['--resume']), cwd,
                          fault_env(tool_env, free_port()))
    assert status == 0, resumed[-3000:]
    assert 'Removing' in resumed and not list(killed_dir.glob('*.tmp-*'))
    assert 'Resuming in the middle of epoch 1: skipping its first 3 batches' in resumed
    assert all_checkpoints_load(killed_dir) == ['iter_3.pth', 'iter_6.pth', 'iter_8.pth']

    status, output = run(train_command(clean, reference_dir, python_exe, procs=2), cwd,
                         fault_env(tool_env, free_port()))
    assert status == 0, output[-3000:]
    assert_same_training(reference_dir, killed_dir, 'iter_8.pth', num_iters=8)


# ----------------------------------------------------------------------------- in-process, on a tiny Runner
class NoisyPairs(Pairs):
    """Pairs with random "augmentation" drawn from NumPy's global generator, as mmcv's transforms do."""

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item['inputs'] = item['inputs'] + float(np.random.uniform(-0.1, 0.1))
        return item


class NoisyRegressor(Regressor):
    """Regressor with random choices in the model, drawn from torch's global generator (dropout, sampling)."""

    def forward(self, inputs, targets=None, mode='tensor'):
        if mode == 'loss':
            inputs = torch.stack(list(inputs)) * (1 + 0.1 * torch.rand(1))
        return super().forward(inputs, targets, mode)


class Crash(Hook):
    """Stops the run with an exception before the given iteration (1-based), like a kill would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 == self.at:
            raise KeyboardInterrupt


class LossLog(Hook):
    """Records every iteration's loss."""

    def __init__(self) -> None:
        self.losses = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses[runner.iter + 1] = float(outputs['loss'])


def reliable_runner(work_dir, seed, hooks, resume=False, num_workers=0) -> Runner:
    """A Runner configured as tools/train.py configures one (crash-safe hook, resumable loop, NaN guard).

    With ``num_workers > 0`` the workers are persistent (as in mmdet's configs) and forked.
    """
    torch.manual_seed(0)  # the same initial weights in every run (a config's model would be built by the Runner)
    cfg = Config(dict(
        model=NoisyRegressor(),
        work_dir=str(work_dir),
        experiment_name=f'resume_{uuid.uuid4().hex}',
        train_dataloader=dict(dataset=NoisyPairs(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=BATCH_SIZE, num_workers=num_workers, persistent_workers=num_workers > 0,
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3)),
        custom_hooks=hooks,
        randomness=dict(seed=seed),
        env_cfg=dict(mp_cfg=dict(mp_start_method='fork')),
        resume=resume,
        default_scope='mmdet'))
    use_resumable_training(cfg)
    guard_non_finite_loss(cfg)
    return ReliableRunner(**cfg.to_dict())  # not from_cfg: the config holds objects, which cannot be dumped


@pytest.mark.parametrize('num_workers', [0, 2], ids=['no-workers', '2-workers'])
@pytest.mark.parametrize('crash_at', [7, 9], ids=['mid-epoch', 'epoch-start'])
def test_resume_in_process_matches_uninterrupted(tmp_path, crash_at, num_workers):
    """Crash before iteration 7 or 9; the last checkpoint is iter_6.pth (iteration 2 of epoch 2) both times.

    With 2 (persistent) workers the samples' random "augmentation" is drawn inside the workers, whose generators
    mmengine seeds once per worker: only the per-sample seeds make the resumed run draw what the uninterrupted one did.
    """
    crashed_log = LossLog()
    crashed = reliable_runner(tmp_path / 'run', None, [Crash(crash_at), crashed_log], num_workers=num_workers)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    resumed_log = LossLog()
    resumed = reliable_runner(tmp_path / 'run', None, [resumed_log], resume=True, num_workers=num_workers)
    resumed.train()
    assert min(resumed_log.losses) == 7  # continued after iter_6.pth, the last checkpoint
    reference_log = LossLog()
    reference = reliable_runner(tmp_path / 'reference', crashed.seed, [reference_log], num_workers=num_workers)
    reference.train()
    assert resumed_log.losses == {i: reference_log.losses[i] for i in range(7, 13)}
    assert {i: crashed_log.losses[i] for i in range(1, 7)} == {i: reference_log.losses[i] for i in range(1, 7)}
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.filterwarnings('ignore:This DataLoader will create 3 worker processes:UserWarning')  # on purpose
def test_augmentation_does_not_depend_on_the_number_of_workers(tmp_path):
    """The same seed trains to the same losses and weights with 0, 1 and 3 workers (3 workers share 4 batches an
    epoch unevenly), so each sample's random augmentation is the same wherever it is drawn."""
    logs, runners = {}, {}
    for num_workers in (0, 1, 3):
        logs[num_workers] = LossLog()
        runners[num_workers] = reliable_runner(tmp_path / str(num_workers), 1234, [logs[num_workers]],
                                               num_workers=num_workers)
        runners[num_workers].train()
    assert logs[0].losses == logs[1].losses == logs[3].losses
    for key, value in runners[0].model.state_dict().items():
        assert torch.equal(value, runners[3].model.state_dict()[key]), key
