"""Bad configs, options, checkpoints and data given to tools/train.py and tools/test.py: a clear error, nothing lost.

Most cases call the tools' ``main`` in this process: the same code path as the command line up to the exit status,
which ``run_tool_main`` maps to 2 with a one-line message (test_tools_e2e.py::test_bad_input_fails_clearly,
test_tools_e2e.py::test_test_py_refuses_untrusted_checkpoint and the corrupt-image run below show it).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Dict

import pytest
import torch
from mmengine.config import Config

from brs_detr.apis.launch import ToolInputError, check_cfg_options, error_message
from brs_detr.datasets import ImageLoadError
from brs_detr.datasets import DataCheckError
from brs_detr.engine import CheckpointFitError, ReliableRunner, find_resumable_checkpoint
from brs_detr.engine.work_dir import LOCK_FILE
from brs_detr.fileio.checkpoint import CheckpointReadError, UntrustedCheckpointError
from conftest import load_tool_module
from reliability_utils import TOY_CONFIG, run, train_command

train_tool = load_tool_module('train')
test_tool = load_tool_module('test')


def file_digests(folder: Path) -> Dict[str, str]:
    """sha256 of every file under ``folder`` (to show that a failed run changed nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture
def trained_work_dir(tmp_path) -> Path:
    """A work_dir as a finished run leaves it (checkpoint contents do not matter for these tests)."""
    work_dir = tmp_path / 'wd'
    work_dir.mkdir()
    torch.save(dict(state_dict=dict(w=torch.ones(3))), work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    return work_dir


@pytest.fixture
def in_toy_root(toy_coco_root, monkeypatch) -> Path:
    """Run in the folder whose data/toy_coco the toy config reads."""
    monkeypatch.chdir(toy_coco_root.parents[1])
    return toy_coco_root.parents[1]


def toy_state_dict(num_classes: int) -> Dict[str, torch.Tensor]:
    """The toy ATSS model's weights, built with ``num_classes``."""
    from mmengine.registry import DefaultScope

    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(TOY_CONFIG))
    cfg.model.bbox_head.num_classes = num_classes
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg.model).state_dict()


# ----------------------------------------------------------------------------- config and --cfg-options
def test_config_not_found_names_similar_files(tmp_path):
    typo = TOY_CONFIG.parent / 'atss_r18_tiny_toy-coco.py'
    with pytest.raises(ToolInputError, match=rf'config file not found: {typo}; similar files in {typo.parent}: '
                       rf'{TOY_CONFIG.name}'):
        train_tool.main([str(typo), '--work-dir', str(tmp_path / 'wd')])


def test_unknown_cfg_options_key_names_the_closest_keys(trained_work_dir):
    before = file_digests(trained_work_dir)
    with pytest.raises(ToolInputError) as error:
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(trained_work_dir), '--cfg-options',
                         'train_cfg.max_epoch=2', 'optim_wrapper.optimizer.lr=0.1', 'model.neck.out_chanels=8'])
    message = str(error.value)
    assert f'--cfg-options train_cfg.max_epoch: no such key in {TOY_CONFIG}; closest existing keys: ' \
        'train_cfg.max_epochs' in message
    assert 'model.neck.out_chanels: no such key' in message and 'model.neck.out_channels' in message
    assert 'optim_wrapper.optimizer.lr' not in message  # an existing key
    assert 'To add a new key on purpose, write it as +KEY=VALUE, e.g. +train_cfg.max_epoch=...' in message
    assert file_digests(trained_work_dir) == before


def test_cfg_options_new_keys_need_the_plus_opt_in():
    cfg = Config.fromfile(str(TOY_CONFIG))
    options = {'+model.bbox_head.loss_cls.reduction': 'sum', 'randomness.seed': 3, 'data_check.invalid_boxes': 'error',
               'train_dataloader.dataset.pipeline.2.scale': (64, 64), 'load_from': None}
    checked = check_cfg_options(cfg, options)
    assert 'model.bbox_head.loss_cls.reduction' in checked and '+model.bbox_head.loss_cls.reduction' not in checked
    cfg.merge_from_dict(checked)
    assert cfg.model.bbox_head.loss_cls.reduction == 'sum' and cfg.randomness.seed == 3
    assert cfg.train_dataloader.dataset.pipeline[2].scale == (64, 64)
    with pytest.raises(ToolInputError, match='train_dataloader.dataset.pipeline.9.scale: no such key'):
        check_cfg_options(cfg, {'train_dataloader.dataset.pipeline.9.scale': 1})


# ----------------------------------------------------------------------------- checkpoints
def truncated_copy(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def test_truncated_checkpoint_is_refused_before_anything_runs(trained_work_dir, tmp_path):
    truncated = truncated_copy(Path(shutil.copy(trained_work_dir / 'epoch_1.pth', tmp_path / 'cut.pth')))
    before = file_digests(trained_work_dir)
    message = rf'Cannot read checkpoint {truncated} \(\d+ bytes\): its zip directory is missing. The file is ' \
              r'truncated or corrupt'
    with pytest.raises(CheckpointReadError, match=message):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(trained_work_dir), '--resume', str(truncated)])
    with pytest.raises(CheckpointReadError, match=message):
        test_tool.main([str(TOY_CONFIG), str(truncated), '--work-dir', str(trained_work_dir)])
    with pytest.raises(CheckpointReadError, match=message):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(trained_work_dir), '--cfg-options',
                         f'load_from={truncated}'])
    assert file_digests(trained_work_dir) == before


def test_auto_resume_skips_a_truncated_or_missing_last_checkpoint(tmp_path):
    work_dir = tmp_path / 'wd'
    work_dir.mkdir()
    for name in ('iter_3.pth', 'iter_6.pth'):
        torch.save(dict(w=torch.ones(3)), work_dir / name)
        os.utime(work_dir / name, (1, int(name[5])))  # iter_6 is the newer one
    truncated_copy(work_dir / 'iter_6.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_6.pth'))
    assert find_resumable_checkpoint(str(work_dir)) == str(work_dir / 'iter_3.pth')
    (work_dir / 'last_checkpoint').write_text('')  # what mmengine leaves when killed while writing it
    assert find_resumable_checkpoint(str(work_dir)) == str(work_dir / 'iter_3.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_3.pth'))
    assert find_resumable_checkpoint(str(work_dir)) == str(work_dir / 'iter_3.pth')
    assert find_resumable_checkpoint(str(tmp_path / 'empty')) is None


def test_checkpoint_of_another_model_is_refused_by_test_py(in_toy_root, tmp_path):
    other = tmp_path / 'five_classes.pth'
    torch.save(dict(state_dict=toy_state_dict(num_classes=5)), other)
    with pytest.raises(CheckpointFitError) as error:
        test_tool.main([str(TOY_CONFIG), str(other), '--work-dir', str(tmp_path / 'test_wd')])
    message = str(error.value)
    assert message.startswith(f'the weights {other} do not fit the model of {TOY_CONFIG}')
    assert '2 with another shape in the checkpoint: bbox_head.atss_cls.weight: checkpoint (5, 64, 3, 3) vs model ' \
        '(3, 64, 3, 3), bbox_head.atss_cls.bias: checkpoint (5,) vs model (3,)' in message


SWAPPED_CLASSES = ('ellipse', 'rectangle', 'triangle')  # the toy set's, with the first two swapped


def test_checkpoint_of_the_classes_in_another_order_is_refused_by_test_py(in_toy_root, tmp_path):
    """Its weights fit, so test.py evaluated every class under another's name without a word."""
    swapped = tmp_path / 'swapped.pth'
    torch.save(dict(state_dict=toy_state_dict(num_classes=3), meta=dict(dataset_meta=dict(classes=SWAPPED_CLASSES))),
               swapped)
    with pytest.raises(CheckpointFitError, match=rf"^{swapped} was trained with the classes in another order than "
                       r"train_dataloader.dataset.metainfo.classes lists them \('rectangle' is label 1 there, 0 here, "
                       r"'ellipse' is label 0 there, 1 here\): every class would be evaluated under another's name. "
                       r"List the classes in the checkpoint's order: \['ellipse', 'rectangle', 'triangle'\]"):
        test_tool.main([str(TOY_CONFIG), str(swapped), '--work-dir', str(tmp_path / 'test_wd')])


@pytest.mark.parametrize('classes, fit, resuming, expected', [
    (SWAPPED_CLASSES, 'fine-tune', True, 'every class would be trained under another\'s name'),
    (SWAPPED_CLASSES, 'fine-tune', False, 'its class layers start swapped and fine-tuning has to learn them again'),
    (('cat', 'dog', 'bird'), 'weights', False, 'was trained on the classes cat, dog, bird; '
     'train_dataloader.dataset.metainfo.classes names rectangle, ellipse, triangle: the results are reported under the '
     'config\'s names'),
    (('cat', 'dog', 'bird'), 'fine-tune', False, None),  # fine-tuning to another data set
    (('rectangle', 'ellipse', 'triangle'), 'weights', False, None),
    (('a', 'b'), 'weights', False, None),  # another count: the weights do not fit (checked before)
], ids=['resume-swapped', 'load-from-swapped', 'test-other-names', 'load-from-other-names', 'same', 'other-count'])
def test_checkpoint_class_names_are_compared_with_the_config(in_toy_root, classes, fit, resuming, expected):
    logged = []
    runner = SimpleNamespace(cfg=Config.fromfile(str(TOY_CONFIG)), checkpoint_fit=fit, _resuming=resuming,
                             logger=SimpleNamespace(warning=logged.append))
    checkpoint = dict(meta=dict(dataset_meta=dict(classes=classes)))
    if resuming:
        with pytest.raises(CheckpointFitError, match=expected):
            ReliableRunner._check_class_names(runner, 'c.pth', checkpoint)
        return
    ReliableRunner._check_class_names(runner, 'c.pth', checkpoint)
    assert (logged == []) if expected is None else (len(logged) == 1 and expected in logged[0]), logged


def test_resume_from_another_model_is_refused(in_toy_root, tmp_path):
    other = tmp_path / 'five_classes.pth'
    torch.save(dict(state_dict=toy_state_dict(num_classes=5)), other)
    work_dir = tmp_path / 'wd'
    with pytest.raises(CheckpointFitError, match=rf'cannot resume from {other}: it is not a checkpoint of the model '
                       rf'of {TOY_CONFIG} \(\d+ of the model\'s \d+ entries fit; 2 with another shape'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(work_dir), '--resume', str(other)])
    assert not list(work_dir.glob('*.pth'))
    nothing = tmp_path / 'unrelated.pth'
    torch.save(dict(state_dict=dict(fc=torch.zeros(2, 2))), nothing)
    with pytest.raises(CheckpointFitError, match=rf'nothing in {nothing} fits the model'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(work_dir), '--cfg-options', f'load_from={nothing}'])


class WritesAFile:
    """A pickle that creates a file when unpickled (harmless stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (str(self.path), ))


def malicious_checkpoint(folder: Path, marker: Path) -> Path:
    """A checkpoint whose unpickling runs code, in a folder dressed up as a Runner work_dir."""
    folder.mkdir()
    path = folder / 'epoch_12.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(2)), meta=WritesAFile(marker)), path, pickle_module=pickle)
    (folder / 'last_checkpoint').write_text(str(path))  # a forged marker does not make it trusted
    return path


def test_pickle_with_code_is_refused_by_train_and_test(in_toy_root, tmp_path, monkeypatch):
    monkeypatch.delenv('BRS_DETR_TRUSTED_DIRS', raising=False)
    marker = tmp_path / 'code_ran'
    evil = malicious_checkpoint(tmp_path / 'downloaded_run', marker)
    message = rf'Refusing to load checkpoint {evil}: torch.load\(weights_only=True\) rejects it \(.*GLOBAL ' \
              r'os.makedirs\), and loading it with weights_only=False would run arbitrary code'
    with pytest.raises(UntrustedCheckpointError, match=message):
        test_tool.main([str(TOY_CONFIG), str(evil), '--work-dir', str(tmp_path / 'test_wd')])
    with pytest.raises(UntrustedCheckpointError, match=message):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--resume', str(evil)])
    with pytest.raises(UntrustedCheckpointError, match=message):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--cfg-options', f'load_from={evil}'])
    assert not marker.exists()


# ----------------------------------------------------------------------------- as a user runs them
@pytest.mark.slow
@pytest.mark.parametrize('num_workers', [0, 2], ids=['in-process', '2-workers'])
def test_corrupt_image_stops_training_naming_it_and_keeps_the_work_dir(toy_coco_root, tmp_path, tool_env,
                                                                         python_exe, num_workers):
    """Loaded in the main process or in a DataLoader worker (whose error torch re-raises with the worker's whole
    traceback in front of the message): the same one-line error."""
    data = tmp_path / 'data' / 'toy_coco'
    shutil.copytree(toy_coco_root, data)
    image = data / 'train' / '000003.png'
    image.write_bytes(image.read_bytes()[:200])
    work_dir = tmp_path / 'wd'
    work_dir.mkdir()
    (work_dir / 'notes.txt').write_bytes(b'a file of the user\'s')  # (checkpoints would need --resume)
    before = file_digests(work_dir)
    options = ['train_cfg.max_epochs=1', f'train_dataloader.num_workers={num_workers}',
               f'train_dataloader.persistent_workers={num_workers > 0}']
    status, output = run(train_command(TOY_CONFIG, work_dir, python_exe, extra=['--cfg-options', *options]),
                         tmp_path, tool_env)
    ann_file = 'data/toy_coco/annotations/instances_train.json'
    assert status == 2, output[-3000:]
    error_line = next(line for line in output.splitlines() if line.startswith('train.py: error:'))
    assert error_line.startswith(f'train.py: error: cannot load image data/toy_coco/train/000003.png (image id 3, '
                                 f'listed in {ann_file}): the file is not a decodable image (200 bytes: truncated or '
                                 'corrupt?)')
    assert (error_line.endswith('(in DataLoader worker process 0)') or error_line.endswith('process 1)')
            if num_workers else error_line.endswith('corrupt?)'))
    assert 'Traceback' not in output
    after = file_digests(work_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # only new files (this run's logs, config)


def reraised_as_from_a_worker(error: BaseException, worker: int = 3) -> BaseException:
    """``error`` raised (with a cause) in a DataLoader worker, as torch re-raises it in the main process."""
    from torch._utils import ExceptionWrapper
    try:
        try:
            raise OSError('decoder failed')
        except OSError as cause:
            raise error from cause
    except BaseException:  # noqa: B902
        wrapper = ExceptionWrapper(where=f'in DataLoader worker process {worker}')
    try:
        wrapper.reraise()
    except BaseException as reraised:  # noqa: B902
        return reraised


@pytest.mark.parametrize('error', [ImageLoadError('cannot load image a.png: truncated\nsecond line'),
                                   ValueError('bad value: x'), ToolInputError('ToolInputError: y')],
                         ids=['project-error-multiline', 'builtin', 'name-in-message'])
def test_error_message_of_a_dataloader_worker_is_the_workers_own(error):
    reraised = reraised_as_from_a_worker(error)
    assert type(reraised) is type(error)
    assert str(reraised).startswith(f'Caught {type(error).__name__} in DataLoader worker process 3.')
    assert error_message(reraised) == f'{error} (in DataLoader worker process 3)'
    assert error_message(error) == str(error)  # not from a worker: unchanged


def test_data_check_runs_before_the_runner(tmp_path, monkeypatch):
    """Without data/toy_coco under the working directory: refused before any work_dir file is written (the work_dir
    holds only the run's lock, taken first)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataCheckError, match='annotation file not found: data/toy_coco/annotations/instances_train'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd')])
    assert [p.name for p in (tmp_path / 'wd').iterdir()] == [LOCK_FILE]


@pytest.mark.parametrize('policy, resuming', [('weights', False), ('fine-tune', False), ('fine-tune', True)])
def test_fit_policies(policy, resuming):
    """A missing BatchNorm counter is tolerated when testing and fine-tuning, not when resuming; any other missing
    weight is refused (fine-tuning lets only class layers differ: tests/test_custom_dataset.py)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    warnings = []
    runner = SimpleNamespace(checkpoint_fit=policy, _resuming=resuming, cfg=SimpleNamespace(filename='cfg.py'),
                             logger=SimpleNamespace(warning=warnings.append))
    runner._class_weights_to_skip = MethodType(ReliableRunner._class_weights_to_skip, runner)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    check = ReliableRunner._check_fit
    if resuming:
        with pytest.raises(CheckpointFitError, match=r'cannot resume from x.pth: .*1 missing from the checkpoint: '
                           r'1.num_batches_tracked'):
            check(runner, 'x.pth', dict(state_dict=state), model, [])
        return
    assert check(runner, 'x.pth', dict(state_dict=state), model, []) == [] and not warnings
    del state['0.weight']
    if policy == 'weights':
        with pytest.raises(CheckpointFitError, match=r'the weights x.pth do not fit .* 2 missing from the checkpoint: '
                           r'0.weight, 1.num_batches_tracked'):
            check(runner, 'x.pth', dict(state_dict=state), model, [])
    else:
        with pytest.raises(CheckpointFitError, match=r'load_from x.pth does not fit the model of cfg.py beyond its '
                           r'class-dependent weights \(1 missing from the checkpoint: 0.weight\): it is a checkpoint '
                           r'of another model. To initialise only a part'):
            check(runner, 'x.pth', dict(state_dict={'module.' + k: v for k, v in state.items()}), model,
                  [(r'^module\.', '')])
