"""A loss that becomes NaN: training stops before the update (or skips the iteration), naming the key and where.

The real tools train the toy ATSS config with a loss term turned into NaN at chosen iterations by
``fault_injection.FaultInjectionHook``. The guard itself (``NonFiniteLossHook``) is added by tools/train.py to every
config. In-process tests on a tiny Runner check what the tool tests cannot see: the weights and the optimizer state
after the stop are those of the last good iteration.
"""
from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

import pytest
import torch

from mmengine.hooks import Hook
from mmengine.runner import Runner

import brs_detr  # noqa: F401  (registers NonFiniteLossHook)
from brs_detr.engine import NonFiniteError, NonFiniteLossHook
from reliability_utils import (BATCH_SIZE, NUM_SAMPLES, Pairs, Regressor, fault_env, run, train_command,
                               write_fault_config)



def assert_finite_checkpoint(path: Path) -> None:
    state = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


@pytest.mark.slow
def test_nan_loss_stops_before_the_update(toy_coco_root, tmp_path, tool_env, python_exe):
    """loss_bbox is NaN at iteration 6 (epoch 2, batch 2 of 4); a checkpoint was saved after epoch 1."""
    config = write_fault_config(tmp_path / 'cfg.py', epochs=2, interval=1, by_epoch=True,
                                faults="nan_at={6: 'loss_bbox'}")
    work_dir = tmp_path / 'wd'
    status, output = run(train_command(config, work_dir, python_exe), toy_coco_root.parents[1], fault_env(tool_env))
    assert status == 1, output[-3000:]
    message = ('train.py: error: Non-finite loss at iteration 6 (epoch 2, batch 2/4): loss_bbox=nan. Training stopped '
               f'before this iteration updated the weights. The last checkpoint is {work_dir / "epoch_1.pth"}.')
    assert message in output and 'Traceback' not in output
    assert 'Epoch(train) [2][2/4]' not in output  # the bad iteration is not logged as trained
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['epoch_1.pth']
    assert (work_dir / 'last_checkpoint').read_text().strip() == 'epoch_1.pth'
    assert_finite_checkpoint(work_dir / 'epoch_1.pth')
    log_file = next(work_dir.glob('*/*.log'))
    assert re.search(r'ERROR - .*Non-finite loss at iteration 6', log_file.read_text())  # in the run's log file too


@pytest.mark.slow
def test_nan_loss_skipped_until_too_many_in_a_row(toy_coco_root, tmp_path, tool_env, python_exe):
    """--non-finite-loss skip --max-consecutive-skips 1: iterations 3 and 6 are skipped, 7 (2nd in a row) stops."""
    config = write_fault_config(tmp_path / 'cfg.py', epochs=2, interval=1, by_epoch=True,
                                faults="nan_at={3: 'loss_cls', 6: 'loss_bbox', 7: 'loss_bbox'}")
    work_dir = tmp_path / 'wd'
    status, output = run(train_command(config, work_dir, python_exe,
                                       extra=['--non-finite-loss', 'skip', '--max-consecutive-skips', '1']),
                         toy_coco_root.parents[1], fault_env(tool_env))
    assert status == 1, output[-3000:]
    assert ('WARNING - Non-finite loss at iteration 3 (epoch 1, batch 3/4): loss_cls=nan. Skipping this iteration '
            '(no optimizer step; 1 in a row, at most 1).') in output
    assert 'WARNING - Non-finite loss at iteration 6 (epoch 2, batch 2/4): loss_bbox=nan. Skipping' in output
    assert ('train.py: error: 2 iterations in a row had a non-finite loss (more than max_consecutive_skips=1); the '
            'last one at iteration 7 (epoch 2, batch 3/4): loss_bbox=nan.') in output
    assert 'Epoch(train) [1][4/4]' in output  # training went on after the first skip
    assert_finite_checkpoint(work_dir / 'epoch_1.pth')


@pytest.mark.slow
def test_nan_loss_on_one_rank_is_skipped_by_all(toy_coco_root, tmp_path, tool_env, python_exe, free_port):
    """2 processes: NaN on rank 1 only at iteration 2. Both ranks skip it (they decide on the gathered values, so
    neither waits for the other in backward) and finish."""
    config = write_fault_config(tmp_path / 'cfg.py', epochs=1, interval=1, by_epoch=True, batch_size=1,
                                faults="nan_at={2: 'loss_cls'}, nan_ranks=[1]")
    work_dir = tmp_path / 'wd'
    status, output = run(train_command(config, work_dir, python_exe, procs=2, extra=['--non-finite-loss', 'skip']),
                         toy_coco_root.parents[1], fault_env(tool_env, free_port()))
    assert status == 0, output[-3000:]
    assert 'Non-finite loss at iteration 2 (epoch 1, batch 2/4): loss_cls=nan on rank 1. Skipping' in output
    assert '1 iterations were skipped because of a non-finite loss: 2' in output
    assert 'Epoch(train) [1][4/4]' in output
    assert_finite_checkpoint(work_dir / 'epoch_1.pth')


# ----------------------------------------------------------------------------- in-process, on a tiny Runner
class Snapshot(Hook):
    """Records the weights and optimizer state before every iteration."""

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self.before = []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        weights = {k: v.clone() for k, v in runner.model.state_dict().items()}
        momentum = [s['momentum_buffer'].clone() for s in runner.optim_wrapper.optimizer.state.values()]
        self.before.append((weights, momentum))


def tiny_runner(tmp_path, nan_steps, guard: NonFiniteLossHook, snapshot: Snapshot, epochs: int = 1) -> Runner:
    return Runner(
        model=Regressor(nan_steps),
        work_dir=str(tmp_path / 'wd'),
        experiment_name=f'nan_{uuid.uuid4().hex}',
        train_dataloader=dict(dataset=Pairs(), sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=BATCH_SIZE, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        custom_hooks=[guard, snapshot],
        randomness=dict(seed=0))


def current_state(runner):
    weights = {k: v.clone() for k, v in runner.model.state_dict().items()}
    momentum = [s['momentum_buffer'].clone() for s in runner.optim_wrapper.optimizer.state.values()]
    return weights, momentum


def assert_same_state(a, b) -> None:
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_stop_leaves_weights_and_optimizer_of_the_last_good_iteration(tmp_path):
    snapshot = Snapshot()
    runner = tiny_runner(tmp_path, nan_steps={2}, guard=NonFiniteLossHook(), snapshot=snapshot)
    with pytest.raises(NonFiniteError, match=r'iteration 3 \(epoch 1, batch 3/4\): loss_mse=nan'):
        runner.train()
    assert len(snapshot.before) == 3
    assert_same_state(current_state(runner), snapshot.before[2])  # iteration 3 changed nothing
    assert not any(torch.equal(snapshot.before[1][0][k], snapshot.before[2][0][k]) for k in ('linear.weight', ))


def test_skip_leaves_the_iteration_out_and_training_goes_on(tmp_path):
    snapshot, guard = Snapshot(), NonFiniteLossHook(action='skip', max_consecutive_skips=1)
    runner = tiny_runner(tmp_path, nan_steps={1}, guard=guard, snapshot=snapshot)
    runner.train()
    assert guard.skipped_iters == [2]
    assert_same_state(snapshot.before[1], snapshot.before[2])  # the skipped iteration 2 changed nothing
    final = current_state(runner)
    assert not torch.equal(final[0]['linear.weight'], snapshot.before[2][0]['linear.weight'])  # 3 and 4 trained
    assert torch.isfinite(final[0]['linear.weight']).all()
    assert vars(runner.model).get('parse_losses') is None  # the wrappers are removed after training


def test_skip_limit_counts_consecutive_iterations_only(tmp_path):
    guard = NonFiniteLossHook(action='skip', max_consecutive_skips=1)
    runner = tiny_runner(tmp_path, nan_steps={0, 2, 3}, guard=guard, snapshot=Snapshot())
    with pytest.raises(NonFiniteError, match=r'2 iterations in a row .* the last one at iteration 4'):
        runner.train()
    assert guard.skipped_iters == [1, 3]


def test_non_finite_weights_are_not_saved(tmp_path):
    """A NaN weight (here planted by hand, in practice from a NaN gradient of a finite loss) stops the save."""

    class PlantNan(Snapshot):

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if runner.iter == NUM_SAMPLES // BATCH_SIZE - 1:
                with torch.no_grad():
                    runner.model.linear.bias.fill_(math.nan)

    runner = tiny_runner(tmp_path, nan_steps=(), guard=NonFiniteLossHook(), snapshot=PlantNan())
    with pytest.raises(NonFiniteError, match='Refusing to save a checkpoint after iteration 4: weight linear.bias has '
                       'NaN/Inf values'):
        runner.train()
    assert not list((tmp_path / 'wd').glob('*.pth'))


def test_rejects_unknown_action():
    with pytest.raises(ValueError, match="action must be one of"):
        NonFiniteLossHook(action='ignore')
