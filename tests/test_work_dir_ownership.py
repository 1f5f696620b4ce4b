"""Runs never overwrite or mix other runs: one training run per work_dir, no fresh start over an earlier run's
checkpoints, a copied or moved work_dir resumes from (and cleans up) its own files, a test run leaves the training
run's config dump alone (docs/reliability.md, "Work dirs")."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger

from brs_detr.datasets import DataCheckError
from brs_detr.engine import WorkDirError, find_resumable_checkpoint
from brs_detr.engine.hooks import CrashSafeCheckpointHook
from brs_detr.engine.work_dir import LOCK_FILE
from conftest import REPO_ROOT, load_tool_module
from reliability_utils import TOY_CONFIG

train_tool = load_tool_module('train')
test_tool = load_tool_module('test')


def file_digests(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def earlier_run(work_dir: Path) -> Path:
    """A work_dir as a finished run leaves it (the checkpoint's content does not matter here)."""
    work_dir.mkdir(parents=True)
    torch.save(dict(state_dict=dict(w=torch.ones(3))), work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text('epoch_1.pth')
    (work_dir / 'atss_r18-tiny_2xb2-12e_toy-coco.py').write_text('# the earlier run\'s config\n')
    return work_dir


HOLD_LOCK = textwrap.dedent('''
    import sys, time
    from brs_detr.engine.work_dir import WorkDirOwnership
    owner = WorkDirOwnership(sys.argv[1])
    owner.acquire()
    print('locked', flush=True)
    time.sleep(300)
''')


def test_second_run_in_a_work_dir_is_refused_naming_the_first(tmp_path, monkeypatch):
    """Another run holds the work_dir: refused at once, naming its pid, host, command and start time; after that
    run is killed with -9, the kernel has released the lock and a new run gets past it (to the data check, which
    fails here: no data under the working directory)."""
    monkeypatch.chdir(tmp_path)
    work_dir = tmp_path / 'wd'
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(work_dir), '--lr', '0.1'], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(WorkDirError) as error:
            train_tool.main([str(TOY_CONFIG), '--work-dir', str(work_dir)])
        message = str(error.value)
        assert message.startswith(f'--work-dir {work_dir} is in use by another training run (pid {holder.pid} on ')
        assert f' -c {work_dir} --lr 0.1). Wait until it ends, or choose another --work-dir.' in message
        assert ', started 20' in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with pytest.raises(DataCheckError, match='annotation file not found'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(work_dir)])


def test_fresh_start_over_checkpoints_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work_dir = earlier_run(tmp_path / 'wd')
    before = file_digests(work_dir)
    with pytest.raises(WorkDirError) as error:
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(work_dir)])
    assert str(error.value) == (
        f'--work-dir {work_dir} holds the checkpoints of an earlier run (epoch_1.pth, last_checkpoint); a new run '
        f'would overwrite them and mix its files with that run\'s. Continue that run with --resume; or start over '
        f'with --overwrite-work-dir, which first moves the earlier run to {work_dir}.previous-<time> (nothing is '
        f'deleted); or choose another --work-dir.')
    assert {k: v for k, v in file_digests(work_dir).items() if k != LOCK_FILE} == before


def test_overwrite_work_dir_moves_the_earlier_run_aside(toy_coco_root, tmp_path, monkeypatch):
    """--overwrite-work-dir: after the checks, the earlier run moves to WORK_DIR.previous-<time>, whole."""
    monkeypatch.chdir(toy_coco_root.parents[1])
    work_dir = earlier_run(tmp_path / 'wd')
    before = file_digests(work_dir)
    from brs_detr.apis import launch

    def stop_before_the_runner(cfg, for_testing=False):
        raise RuntimeError('stopped before the Runner')

    monkeypatch.setattr(launch, 'build_runner', stop_before_the_runner)
    with pytest.raises(RuntimeError, match='stopped before the Runner'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(work_dir), '--overwrite-work-dir'])
    moved, = tmp_path.glob('wd.previous-*')
    assert file_digests(moved) == before
    assert [p.name for p in work_dir.iterdir()] == [LOCK_FILE]


def test_copied_work_dir_resumes_from_its_own_files(tmp_path):
    """last_checkpoint of a copy still names the original's file (an absolute path, as mmengine writes it): the copy
    resumes from its own file of that name; a relative name (what brs-detr writes) resolves in the work_dir."""
    original = tmp_path / 'original'
    original.mkdir()
    for name in ('epoch_1.pth', 'epoch_2.pth'):
        torch.save(dict(w=torch.ones(1)), original / name)
    (original / 'last_checkpoint').write_text(str(original / 'epoch_2.pth'))
    copy = tmp_path / 'copy'
    subprocess.run(['cp', '-a', str(original), str(copy)], check=True)
    assert find_resumable_checkpoint(str(copy)) == str(copy / 'epoch_2.pth')
    (copy / 'last_checkpoint').write_text('epoch_1.pth')
    assert find_resumable_checkpoint(str(copy)) == str(copy / 'epoch_1.pth')
    moved = tmp_path / 'moved'
    original.rename(moved)
    assert find_resumable_checkpoint(str(moved)) == str(moved / 'epoch_2.pth')


def test_copied_work_dir_never_deletes_the_originals_best_checkpoint(tmp_path):
    """A resumed run remembers its best checkpoint by absolute path, and mmengine deletes it when a better one comes:
    in a copy, that path must mean the copy's file, not the original's."""
    original, copy = tmp_path / 'original', tmp_path / 'copy'
    hub = MessageHub.get_instance('copied_best')
    hub.update_info('best_ckpt', str(original / 'best_acc_epoch_1.pth'))
    runner = SimpleNamespace(work_dir=str(copy), message_hub=hub, logger=MMLogger.get_instance('copied_best'))
    copy.mkdir()
    hook = CrashSafeCheckpointHook(interval=1, save_best='acc', rule='greater')
    hook.before_train(runner)
    assert hook.best_ckpt_path == str(copy / 'best_acc_epoch_1.pth')


def test_test_run_leaves_the_training_runs_config_dump(in_toy_root, tmp_path):
    """tools/test.py's default work_dir is the training run's: its config dump goes into its own timestamped folder,
    not over the training run's dump."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdet.registry import MODELS
    work_dir = earlier_run(tmp_path / 'wd')
    cfg = Config.fromfile(str(TOY_CONFIG))
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict()), tmp_path / 'weights.pth')
    test_tool.main([str(TOY_CONFIG), str(tmp_path / 'weights.pth'), '--work-dir', str(work_dir)])
    assert (work_dir / TOY_CONFIG.name).read_text() == '# the earlier run\'s config\n'
    dump, = work_dir.glob(f'*/{TOY_CONFIG.name}')
    assert f"load_from = '{tmp_path / 'weights.pth'}'" in dump.read_text()


@pytest.fixture
def in_toy_root(toy_coco_root, monkeypatch) -> Path:
    monkeypatch.chdir(toy_coco_root.parents[1])
    return toy_coco_root.parents[1]


def test_resuming_with_another_config_names_the_changed_settings():
    """A checkpoint of another experiment in the same work_dir (or a schedule changed on purpose) resumes with a
    warning listing what changed; the same config (tuples read back from the saved text as lists) lists nothing."""
    from mmengine.config import Config

    from brs_detr.engine.runner.config_changes import config_changes, describe_config_changes
    for path in (TOY_CONFIG, REPO_ROOT / 'configs' / 'brs_detr' / 'brs-detr_r50_4xb4-12e_coco.py'):
        cfg = Config.fromfile(str(path))
        assert config_changes(cfg.pretty_text, cfg) == [], path
    cfg = Config.fromfile(str(TOY_CONFIG))
    saved = cfg.pretty_text
    cfg.merge_from_dict({'train_cfg.max_epochs': 24, 'optim_wrapper.optimizer.lr': 0.5, 'work_dir': 'elsewhere',
                         'resume': True})
    del cfg.model.bbox_head.loss_cls['gamma']
    changes = config_changes(saved, cfg)
    assert sorted(changes) == ['model.bbox_head.loss_cls.gamma (2.0 -> unset)',
                               'optim_wrapper.optimizer.lr (0.002 -> 0.5)', 'train_cfg.max_epochs (12 -> 24)'], changes
    assert describe_config_changes('wd/epoch_3.pth', changes).startswith(
        'resuming from wd/epoch_3.pth, saved by a run whose config differs from this one in 3 setting(s): ')
    assert config_changes('this is not a config (', cfg) == []
