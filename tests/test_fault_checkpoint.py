"""No checkpoint is ever half-written and the work_dir always keeps a usable one (``CrashSafeCheckpointHook``,
``ReliableRunner``).

The kill during a checkpoint's own write is in test_fault_resume.py (two processes); here: the kill while
``last_checkpoint`` is written (mmengine truncates and rewrites it in place), a save that fails (full disk) with
``max_keep_ckpts=1`` (mmengine deletes the old checkpoint before writing the new one), and a failed config dump.
"""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import brs_detr  # noqa: F401  (registers CrashSafeCheckpointHook, installs the atomic backend)
from brs_detr.engine import ReliableRunner
from brs_detr.fileio import atomic_io
from fault_injection import KILL_MARKER
from reliability_utils import (BATCH_SIZE, Pairs, Regressor, all_checkpoints_load, fault_env, run, train_command,
                               write_fault_config)


@pytest.mark.slow
def test_kill_while_writing_last_checkpoint_then_resume(toy_coco_root, tmp_path, tool_env, python_exe):
    """Killed while last_checkpoint is rewritten after iter_6.pth: it still names iter_3.pth (whole), every *.pth
    loads, and --resume continues from iter_3 (mid-epoch: 4 iterations per epoch)."""
    cwd, env = toy_coco_root.parents[1], fault_env(tool_env)
    config = write_fault_config(tmp_path / 'cfg.py', epochs=2, interval=3,
                                faults="kill_in_write_of='last_checkpoint', kill_on_write=2")
    work_dir = tmp_path / 'wd'
    status, output = run(train_command(config, work_dir, python_exe), cwd, env)
    assert status == -9 and KILL_MARKER in output, output[-3000:]
    assert 'Saving checkpoint at 6 iterations' in output
    assert all_checkpoints_load(work_dir) == ['iter_3.pth', 'iter_6.pth']
    assert (work_dir / 'last_checkpoint').read_text() == 'iter_3.pth'  # relative: the work_dir may move
    assert [p.name.split('.tmp-')[0] for p in work_dir.glob('*.tmp-*')] == ['last_checkpoint']

    clean = write_fault_config(tmp_path / 'clean.py', epochs=2, interval=3)
    status, resumed = run(train_command(clean, work_dir, python_exe, extra=['--resume']), cwd, env)
    assert status == 0, resumed[-3000:]
    assert f'Auto resumed from the latest checkpoint {work_dir / "iter_3.pth"}' in resumed
    assert 'Resuming in the middle of epoch 1: skipping its first 3 batches' in resumed
    assert all_checkpoints_load(work_dir) == ['iter_3.pth', 'iter_6.pth', 'iter_8.pth']
    assert (work_dir / 'last_checkpoint').read_text() == 'iter_8.pth'
    assert not list(work_dir.glob('*.tmp-*'))


def runner_keeping_one_checkpoint(work_dir, hook_type: str) -> Runner:
    return Runner(
        model=Regressor(),
        work_dir=str(work_dir),
        experiment_name=f'ckpt_{uuid.uuid4().hex}',
        train_dataloader=dict(dataset=Pairs(), sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=BATCH_SIZE, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=2),
        default_hooks=dict(checkpoint=dict(type=hook_type, interval=1, max_keep_ckpts=1)),
        default_scope='mmdet')


@pytest.mark.parametrize('hook_type', ['CrashSafeCheckpointHook', 'CheckpointHook'])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, hook_type):
    """max_keep_ckpts=1 and the disk fills up while epoch_2.pth is written: epoch_1.pth must survive.

    mmengine's own CheckpointHook (second case) deletes epoch_1.pth before it writes epoch_2.pth and loses both.
    """
    write_bytes = atomic_io.atomic_write_bytes

    def disk_full_for_epoch_2(data, path):
        if str(path).endswith('epoch_2.pth'):
            raise OSError(28, 'No space left on device')
        return write_bytes(data, path)

    monkeypatch.setattr(atomic_io, 'atomic_write_bytes', disk_full_for_epoch_2)
    work_dir = tmp_path / hook_type
    with pytest.raises(OSError, match='No space left'):
        runner_keeping_one_checkpoint(work_dir, hook_type).train()
    kept = sorted(p.name for p in work_dir.glob('*.pth'))
    if hook_type == 'CheckpointHook':
        assert kept == []  # what brs-detr's hook prevents
        return
    assert kept == ['epoch_1.pth']
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'epoch_1.pth')
    assert torch.load(work_dir / 'epoch_1.pth', weights_only=False)['meta']['epoch'] == 1


def test_config_dump_is_atomic(tmp_path, monkeypatch):
    """A failure in the middle of dumping the config (here: a disk that fills up) leaves the previous dump whole."""
    dump = tmp_path / 'toy.py'
    dump.write_text('previous = "dump"\n')
    write_bytes = atomic_io.atomic_write_bytes

    def half_then_full(data, path):
        with atomic_io.atomic_open(path, 'wb') as file:
            file.write(data[:len(data) // 2])
            raise OSError(28, 'No space left on device')

    monkeypatch.setattr(atomic_io, 'atomic_write_bytes', half_then_full)
    fake_runner = SimpleNamespace(cfg=Config(dict(answer=42), filename=str(dump)), work_dir=str(tmp_path),
                                  timestamp='0')
    with pytest.raises(OSError, match='No space left'):
        ReliableRunner.dump_config(fake_runner)
    assert dump.read_text() == 'previous = "dump"\n' and not list(tmp_path.glob('*.tmp-*'))
    monkeypatch.setattr(atomic_io, 'atomic_write_bytes', write_bytes)
    ReliableRunner.dump_config(fake_runner)
    assert Config.fromfile(str(dump)).answer == 42
