"""Every user error ends in one line naming it, before the long work starts; Ctrl-C and a full disk too
(docs/reliability.md, "One-line errors").

Most cases call a tool's ``main`` in this process (``run_tool_main`` turns the raised error into the one line and the
exit status; ``test_run_tool_main_*`` check that step); a subprocess only where the process's exit matters (a
read-only file system, torchrun).
"""
from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from brs_detr.apis.cli import ToolInputError, run_tool_main
from brs_detr.apis.config_loading import RUNNER_ARGUMENTS, read_config
from brs_detr.apis.run_settings import batch_size_mismatch, check_run_settings, late_schedule_steps
from brs_detr.fileio import atomic_io
from brs_detr.fileio.output_paths import OutputPathError
from conftest import REPO_ROOT, TOOLS_DIR, load_tool_module
from reliability_utils import TOY_CONFIG, write_fault_config

MASK_CONFIG = REPO_ROOT / 'configs' / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py'

train_tool = load_tool_module('train')
test_tool = load_tool_module('test')


def tool_exit(main, argv, capsys, name='train.py'):
    """Run ``main(argv)`` as the tool's ``__main__`` does: ``(exit status, stderr)``.

    A new current MMLogger first: the current one of an earlier test writes to that test's (closed) captured stream.
    """
    MMLogger.get_instance(f'tool_exit_{uuid.uuid4().hex}')
    sys_argv = sys.argv
    sys.argv = [name]
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_tool_main(lambda: main(argv))
    finally:
        sys.argv = sys_argv
    return exit_info.value.code, capsys.readouterr().err


def config_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# ----------------------------------------------------------------------------- the config file
def test_config_mistakes_name_the_file_and_line(tmp_path):
    base = config_file(tmp_path, 'base.py', f'''\
        _base_ = [{str(TOY_CONFIG)!r}]
        train_cfg = dict(max_epochs=1
        ''')
    derived = config_file(tmp_path, 'derived.py', "_base_ = ['./base.py']\n")
    cases = {
        derived: rf'cannot read config {derived}: {base}, line 2: syntax error: \'\(\' was never closed: '
                 r'train_cfg = dict\(max_epochs=1$',
        config_file(tmp_path, 'no_base.py', "_base_ = ['./atss_toy.py']\n"):
            rf'no_base.py: its _base_ file {tmp_path}/atss_toy.py does not exist; similar files in {tmp_path}: ',
        config_file(tmp_path, 'name.py', 'a = 1\nb = undefined_name + 1\n'):
            r'name.py, line 2: NameError: name \'undefined_name\' is not defined',
        config_file(tmp_path, 'imports.py', f'''\
            _base_ = [{str(TOY_CONFIG)!r}]
            custom_imports = dict(imports=['brs_detr', 'no_such_module'], allow_failed_imports=False)
            '''): r'imports.py: custom_imports: there is no module \'no_such_module\' on the Python path',
        tmp_path / 'weights.pth': r'weights.pth is not a config file: expected .py/.json/.yaml/.yml \(a checkpoint\? ',
        config_file(tmp_path, 'cycle_a.py', "_base_ = ['./cycle_b.py']\n"):
            rf'cycle_a.py: its _base_ files include each other: {tmp_path}/cycle_a.py -> {tmp_path}/cycle_b.py -> '
            rf'{tmp_path}/cycle_a.py$',  # mmengine: RecursionError
    }
    config_file(tmp_path, 'cycle_b.py', "_base_ = ['./cycle_a.py']\n")
    (tmp_path / 'weights.pth').write_bytes(b'x')
    for path, message in cases.items():
        with pytest.raises(ToolInputError, match=message):
            train_tool.main([str(path), '--work-dir', str(tmp_path / 'wd')])


def test_unknown_type_names_the_registry_and_the_closest_names(tmp_path, in_toy_root):
    config = config_file(tmp_path, 'typo.py', f'''\
        _base_ = [{str(TOY_CONFIG)!r}]
        model = dict(bbox_head=dict(loss_cls=dict(type='FocalLos')))
        ''')
    with pytest.raises(ToolInputError, match=rf"{config}: unknown type 'FocalLos' at model.bbox_head.loss_cls.type: "
                       r"not in mmdet's model registry nor in any other \(closest registered names: FocalLoss"):
        train_tool.main([str(config), '--work-dir', str(tmp_path / 'wd')])
    assert not list((tmp_path / 'wd').glob('*/*.log'))  # refused before the Runner


def test_runner_arguments_are_mmengines():
    assert RUNNER_ARGUMENTS == set(inspect.signature(Runner.__init__).parameters) - {'self'}


# ----------------------------------------------------------------------------- --cfg-options
def test_cfg_options_of_the_wrong_type_or_form(capsys, tmp_path):
    for option, message in (('train_cfg.max_epochs=two', r'train_cfg.max_epochs: expects an integer \(the config has '
                             r'12\), got a string \'two\''),
                            ('param_scheduler.1.milestones=9', r'param_scheduler.1.milestones: expects a list')):
        with pytest.raises(ToolInputError, match=f'--cfg-options {message}'):
            train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path), '--cfg-options', option])
    mask_cfg = read_config(str(MASK_CONFIG), {'test_evaluator.metric': 'bbox'})  # mmdet takes a name or a list
    assert mask_cfg.test_evaluator.metric == 'bbox'
    with pytest.raises(ToolInputError, match=r'val_evaluator.metric: expects a list .* got an integer'):
        read_config(str(MASK_CONFIG), {'val_evaluator.metric': 1})
    cfg = read_config(str(TOY_CONFIG), {'+train_cfg.max_epochs': 'two'})
    assert cfg.train_cfg.max_epochs == 'two'  # on purpose
    for item, message in (('train_cfg.max_epochs', 'expected KEY=VALUE'),
                          ('train_cfg.max_epochs=[(1,2)', 'the brackets of the value are unbalanced')):
        status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--cfg-options', item], capsys)
        assert status == 2 and err.splitlines()[-1] == f'train.py: error: --cfg-options {item}: {message}' + (
            ', e.g. train_cfg.max_epochs=2' if message.startswith('expected') else '')


def test_cfg_options_on_a_variable_that_was_copied_when_the_config_was_read(tmp_path):
    """``data_root`` and ``max_epochs`` are plain variables of the config: mmengine accepts an override and the
    datasets keep reading the old folder. The error lists every key that copied the value, with the new values."""
    with pytest.raises(ToolInputError, match=r'--cfg-options data_root=elsewhere/: data_root is a variable of .* '
                       r'copied into train_dataloader.dataset.data_root, val_dataloader.dataset.data_root, '
                       r'test_dataloader.dataset.data_root, val_evaluator.ann_file, test_evaluator.ann_file .*'
                       r'--cfg-options train_dataloader.dataset.data_root=elsewhere/ .* '
                       r'val_evaluator.ann_file=elsewhere/annotations/instances_val.json'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path), '--cfg-options', 'data_root=elsewhere/'])
    with pytest.raises(ToolInputError, match=r'max_epochs=2: .* copied into train_cfg.max_epochs .* '
                       r'--cfg-options train_cfg.max_epochs=2'):
        read_config(str(TOY_CONFIG), {'max_epochs': 2})
    assert read_config(str(TOY_CONFIG), {'+data_root': 'elsewhere/'}).data_root == 'elsewhere/'  # on purpose
    assert read_config(str(TOY_CONFIG), {'train_cfg.max_epochs': 2}).train_cfg.max_epochs == 2


@pytest.mark.parametrize('option, message', [
    ('train_dataloader.batch_size=0', r'train_dataloader.batch_size=0: the images per process and batch must be a '
                                      r'positive integer'),
    ('val_dataloader.num_workers=-1', r'val_dataloader.num_workers=-1: the DataLoader worker processes must be'),
    ('train_cfg.max_epochs=0', r'train_cfg.max_epochs=0: training must last at least one epoch \(mmengine trains '
                               r'nothing and reports success\)'),
    ('train_cfg.val_interval=0', r'train_cfg.val_interval=0: must be a positive integer'),
    ('optim_wrapper.optimizer.lr=-0.01', r'optim_wrapper.optimizer.lr=-0.01: the learning rate must be a positive '
                                         r'finite number'),
    ('optim_wrapper.optimizer.lr=0', r'optim_wrapper.optimizer.lr=0: .*\(0 would train without changing a weight'),
    ('optim_wrapper.optimizer.weight_decay=-1', r'optim_wrapper.optimizer.weight_decay=-1: must be a finite number '
                                                r'>= 0'),
    ('model.test_cfg.score_thr=1.1', r'model.test_cfg.score_thr=1.1: detection scores and IoUs lie in \[0, 1\]; a '
                                     r'threshold outside keeps no detection or suppresses none'),
    ('model.test_cfg.nms.iou_threshold=1.5', r'model.test_cfg.nms.iou_threshold=1.5: detection scores and IoUs lie'),
    ('model.test_cfg.max_per_img=0', r'model.test_cfg.max_per_img=0: the detections kept per image must be a '
                                     r'positive integer \(0 keeps none'),
])
def test_run_settings_no_run_can_use_are_refused_before_the_work(option, message, tmp_path, in_toy_root, no_runner,
                                                                 capsys):
    """mmengine/torch fail on these only after the model is built (a raw ValueError), or train nothing and exit 0;
    mmdet evaluates with post-processing thresholds that keep no detection (an empty result after the whole set)."""
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                                              option], capsys)
    assert status == 2 and re.search(f'^train.py: error: {message}', err, re.MULTILINE), err
    assert not (tmp_path / 'wd').exists()
    if option.startswith('train_dataloader'):  # test.py checks its own split
        with pytest.raises(ToolInputError, match=message.replace('train', 'test')):
            check_run_settings(read_config(str(TOY_CONFIG), {'test_dataloader.batch_size': 0}), ['test'])
    if option.startswith('val_dataloader'):  # test.py reads only the test split
        check_run_settings(read_config(str(TOY_CONFIG), {'val_dataloader.num_workers': -1}), ['test'])
    if option.startswith('model.test_cfg'):  # test.py too
        key, value = option.split('=')
        with pytest.raises(ToolInputError, match=message):
            check_run_settings(read_config(str(TOY_CONFIG), {key: float(value) if '.' in value else int(value)}),
                               ['test'])


@pytest.mark.parametrize('launcher, message', [
    ('pytorch', r"--launcher pytorch needs the environment variables \['RANK', 'WORLD_SIZE', 'MASTER_ADDR', "
                r"'MASTER_PORT'\]; start the tool with tools/dist_train.sh"),
    ('slurm', r"--launcher slurm needs the environment variables \['SLURM_PROCID', 'SLURM_NTASKS', "
              r"'SLURM_NODELIST'\], which srun sets for each task"),
])
def test_launcher_without_its_environment(launcher, message, tmp_path, in_toy_root, capsys, monkeypatch):
    """A distributed launcher started by hand (not by torchrun/srun): one line naming the missing variables
    (mmengine: ``KeyError: 'SLURM_PROCID'``), before the work_dir is written."""
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'):
        monkeypatch.delenv(name, raising=False)
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--launcher',
                                              launcher, '--skip-data-check'], capsys)
    assert status == 2 and re.search(f'^train.py: error: {message}', err, re.MULTILINE), err
    assert not list((tmp_path / 'wd').glob('*.pth'))


def test_a_pipeline_that_does_not_pack_the_samples_is_refused():
    """Without PackDetInputs mmdet's data preprocessor fails on the first batch (``KeyError: 'inputs'``); a wrapper
    that packs for its dataset (MultiImageMixDataset) counts (every shipped config passes:
    tests/test_all_configs.py)."""
    cfg = read_config(str(TOY_CONFIG))
    cfg.train_dataloader.dataset.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    with pytest.raises(ToolInputError, match=r'train_dataloader.dataset.pipeline \(LoadImageFromFile, '
                       r'LoadAnnotations\) does not end in PackDetInputs'):
        check_run_settings(cfg, ['train'])
    cfg.train_dataloader.dataset = dict(type='MultiImageMixDataset', dataset=cfg.train_dataloader.dataset,
                                        pipeline=[dict(type='PackDetInputs')])
    check_run_settings(cfg, ['train'])


def test_a_component_that_refuses_its_arguments_is_named(tmp_path, in_toy_root, capsys):
    """mmdet's ResNet(depth=19) raises KeyError through mmengine's registry frames; the line names the config key."""
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--skip-data-check',
                                              '--cfg-options', 'model.backbone.depth=19'], capsys)
    assert status == 2 and err.splitlines()[-1] == (
        "train.py: error: cannot build the model: model.backbone (ResNet) refused its arguments: KeyError: 'invalid "
        "depth 19 for resnet' (check those config keys; --debug shows the traceback)"), err
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd2'),
                                              '--skip-data-check', '--cfg-options', 'model.neck.num_outs=1'], capsys)
    assert status == 2 and 'model.neck (FPN) refused its arguments: AssertionError (assert num_outs >= ' in err, err
    from brs_detr.engine.runner.model_build import ModelBuildError
    image = next((in_toy_root / 'data' / 'toy_coco' / 'val').iterdir())
    with pytest.raises(ModelBuildError, match=r'model.backbone \(ResNet\) refused its arguments'):  # the demo too
        load_demo().main([str(image), str(TOY_CONFIG), '--out-dir', str(tmp_path / 'demo'), '--cfg-options',
                          'model.backbone.depth=19'])


@pytest.mark.parametrize('options, line', [
    (['train_dataloader.dataset.pipeline.3.prob=1.5'], 'cannot build train_dataloader: '
     'train_dataloader.dataset.pipeline.3 (RandomFlip) refused its arguments: AssertionError (assert 0 <= prob <= 1)'),
    (['+train_dataloader.dataset.pipeline.2.keep_ratios=True'], 'cannot build train_dataloader: '
     'train_dataloader.dataset.pipeline.2 (Resize) refused its arguments: TypeError: Resize.__init__() got an '
     'unexpected keyword argument \'keep_ratios\''),
    (['+model.neck.out_channel=8'], 'cannot build the model: model.neck (FPN) refused its arguments: TypeError: '
     'FPN.__init__() got an unexpected keyword argument \'out_channel\''),
    (['val_evaluator.metric=bboxx'], 'cannot build val_evaluator: val_evaluator (CocoMetric) refused its arguments: '
     'KeyError: "metric should be one of \'bbox\', \'segm\', \'proposal\', \'proposal_fast\', but got bboxx."'),
], ids=['transform-assert', 'transform-argument', 'model-argument', 'metric'])
def test_a_dataloader_or_evaluator_component_that_refuses_its_arguments_is_named(tmp_path, in_toy_root, capsys,
                                                                                options, line):
    """They ended in the component's own exception through mmengine's registry frames (a bare AssertionError for
    RandomFlip), after the model was built; an argument the class does not take was blamed on the model."""
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--skip-data-check',
                                              '--cfg-options', 'train_cfg.max_epochs=1', *options], capsys)
    assert status == 2 and err.splitlines()[-1] == f'train.py: error: {line} (check those config keys; --debug shows ' \
        'the traceback)', err


def test_a_transform_that_fails_on_a_sample_is_named(tmp_path, in_toy_root, capsys):
    """Resize(scale=[0, 0]) accepts its arguments and fails on the first sample, deep in mmcv, inside the DataLoader
    (a worker's traceback): the line names the transform's config key and the image, exit status 1."""
    options = ['train_cfg.max_epochs=1', 'train_dataloader.num_workers=1',
               'train_dataloader.dataset.pipeline.2.scale=[0,0]']
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--skip-data-check',
                                              '--cfg-options', *options], capsys)
    assert status == 1 and re.fullmatch(
        r"train.py: error: train_dataloader.dataset.pipeline.2 \(Resize\) failed on data/toy_coco/train/\d+.png: "
        r"TypeError: Scale must be a number or tuple of int, but got <class 'list'> \(check the arguments of that "
        r"transform; --debug shows the traceback\) \(in DataLoader worker process 0\)", err.splitlines()[-1]), err


def test_drawings_are_not_written_among_the_images(tmp_path, toy_coco_root, monkeypatch, capsys):
    """browse_dataset.py --output-dir data/toy_coco/train replaced the training images by their drawings (same
    names); test.py --show-dir and the demo's OUT_DIR/vis could do the same to the val images and the inputs."""
    import torch
    monkeypatch.chdir(tmp_path)
    data = Path(shutil.copytree(toy_coco_root, tmp_path / 'data' / 'toy_coco'))
    before = {path: path.read_bytes() for path in data.rglob('*.png')}
    browse = load_tool_module('analysis_tools/browse_dataset')
    for folder, where, effect in (('data/toy_coco/train', 'is', 'would replace the images of the same name'),
                                  ('data/toy_coco/train/drawn', 'is inside', 'would be written into the data set')):
        status, err = tool_exit(browse.main, [str(TOY_CONFIG), '--output-dir', folder, '--not-show',
                                              '--skip-data-check'], capsys, 'browse_dataset.py')
        assert status == 2 and err.splitlines()[-1] == (
            f'browse_dataset.py: error: --output-dir {folder} {where} the image folder of train_dataloader.dataset '
            f'(data/toy_coco/train/): the drawings {effect}; choose a folder outside the images'), err
    checkpoint = tmp_path / 'weights.pth'
    torch.save(dict(state_dict={}), checkpoint)
    status, err = tool_exit(test_tool.main, [str(TOY_CONFIG), str(checkpoint), '--show-dir', str(data / 'val')],
                            capsys, 'test.py')
    assert status == 2 and err.splitlines()[-1].startswith(f'test.py: error: --show-dir {data / "val"} is the image '
                                                           'folder of val_dataloader.dataset'), err
    photos = tmp_path / 'photos' / 'vis'  # the demo writes OUT_DIR/vis/<name>.png
    photos.mkdir(parents=True)
    shutil.copy(next((data / 'val').iterdir()), photos)
    before.update({path: path.read_bytes() for path in photos.iterdir()})
    status, err = tool_exit(load_demo().main, [str(photos), str(TOY_CONFIG), '--out-dir', str(tmp_path / 'photos')],
                            capsys, 'image_demo.py')
    assert status == 2 and err.splitlines()[-1] == (
        f'image_demo.py: error: --out-dir (its vis folder) {photos} is the image folder of the input images ({photos}):'
        f' the drawings would replace the images of the same name; choose a folder outside the images'), err
    assert {path: path.read_bytes() for path in before} == before


def test_a_load_from_url_that_cannot_be_reached_is_one_line(tmp_path, in_toy_root, capsys, free_port):
    """No network (nothing listens on the port): the download error is the line, exit status 2 (was a traceback)."""
    url = f'http://127.0.0.1:{free_port()}/weights.pth'
    status, err = tool_exit(train_tool.main, [str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--skip-data-check',
                                              '--cfg-options', f'load_from={url}'], capsys)
    assert status == 2 and re.search(rf'^train.py: error: cannot reach {url}: .*Connection refused',
                                     err.splitlines()[-1]), err


def test_errors_that_are_not_a_components_arguments_keep_their_traceback():
    from brs_detr.engine.runner.model_build import describe_build_error

    class Refuses:
        def __init__(self):
            raise ValueError('bad value')

    class Broken:
        def __init__(self):
            raise RuntimeError('a bug')

    model_cfg = dict(type='Detector', head=dict(type='Refuses'), other=dict(type='Broken'))
    for cls, expected in ((Refuses, "model.head (Refuses) refused its arguments: ValueError: bad value"),
                          (Broken, None)):
        try:
            cls()
        except Exception as error:  # noqa: B902
            described = describe_build_error(model_cfg, error)
        assert (described is None) if expected is None else expected in described
    assert describe_build_error(dict(type='Detector'), KeyError('not raised by an __init__')) is None


def test_learning_rate_steps_after_the_end_of_training_are_named():
    cfg = read_config(str(TOY_CONFIG), {'train_cfg.max_epochs': 9})
    assert late_schedule_steps(cfg) == [
        'param_scheduler[1] (MultiStepLR) milestones [9, 11]: the steps at [9, 11] come at or after the end of '
        'training (9 epochs), so the learning rate never drops there']
    assert late_schedule_steps(read_config(str(TOY_CONFIG), {'train_cfg.max_epochs': 12})) == []


def test_a_total_batch_other_than_the_learning_rates_is_named():
    """The 2-process toy config (2 x 2 images, base_batch_size 4) on one process trained with half the batch at the
    full learning rate without a word (mmdet); with --auto-scale-lr, or the config's total batch, nothing is said."""
    brs = read_config(str(REPO_ROOT / 'configs' / 'brs_detr' / 'brs-detr_r50_4xb4-12e_coco.py'), None)
    assert batch_size_mismatch(brs, 1) == (
        'this run updates with a batch of 4 images (1 process x 4 images), but the config\'s learning rate is for a '
        'batch of 16 (auto_scale_lr.base_batch_size): pass --auto-scale-lr to scale it by 4/16 (linear scaling), or '
        'train with a total batch of 16 to reproduce the config')
    assert batch_size_mismatch(brs, 4) is None
    accumulated = read_config(str(TOY_CONFIG), {'optim_wrapper.accumulative_counts': 2})
    assert batch_size_mismatch(accumulated, 1) is None  # 1 x 2 x 2 = 4
    assert 'a batch of 8 images (2 processes x 2 images x 2 accumulated)' in batch_size_mismatch(accumulated, 2)
    enabled = read_config(str(TOY_CONFIG), {'auto_scale_lr.enable': True})
    assert batch_size_mismatch(enabled, 1) is None



def test_train_py_logs_the_batch_mismatch_before_the_run(tmp_path, in_toy_root, capsys):
    """The warning reaches the user: train.py logs it before the Runner starts (stopped here by a metric that
    refuses its arguments, right after the model is built)."""
    MMLogger.get_instance(f'batch_warning_{uuid.uuid4().hex}')
    with pytest.raises(Exception):  # noqa: B017  (the metric's refusal; the log is what is checked)
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--skip-data-check', '--cfg-options',
                         'val_evaluator.metric=bboxx'])
    captured = capsys.readouterr()
    assert ('this run updates with a batch of 2 images (1 process x 2 images), but the config\'s learning rate is '
            'for a batch of 4' in captured.out + captured.err)


def test_mask_metric_for_a_model_without_masks_is_refused_before_inference(in_toy_root):
    """mmdet's CocoMetric fails with ``KeyError: 'segm is not in results'`` only after the whole inference."""
    from types import SimpleNamespace

    from brs_detr.apis.launch import check_mask_metrics
    from mmdet.registry import MODELS

    cfg = read_config(str(TOY_CONFIG), {'test_evaluator.metric': ['bbox', 'segm']})
    runner = SimpleNamespace(model=MODELS.build(cfg.model))
    with pytest.raises(ToolInputError, match=r"test_evaluator asks CocoMetric for the 'segm' metric, but the model "
                       r"\(ATSS\) predicts no masks: .*--cfg-options test_evaluator.metric=bbox"):
        check_mask_metrics(runner, cfg, 'test_evaluator')
    check_mask_metrics(runner, cfg, 'val_evaluator')  # only the evaluator the run uses counts
    mask_cfg = read_config(str(MASK_CONFIG), {'test_evaluator.metric': ['bbox', 'segm']})
    check_mask_metrics(SimpleNamespace(model=MODELS.build(mask_cfg.model)), mask_cfg, 'test_evaluator')


def test_new_argument_of_a_component_is_checked_against_its_signature(tmp_path, in_toy_root, no_runner):
    """The documented recipe (``by_epoch`` is an argument of CheckpointHook that the config leaves out) runs up to
    the Runner; a misspelt argument is refused naming the component's closest argument."""
    with pytest.raises(AssertionError, match='the Runner was built'):  # got that far
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                         'default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.save_begin=2'])
    with pytest.raises(ToolInputError, match=r"default_hooks.checkpoint.sve_best: no such key in .*, and "
                       r"CheckpointHook \(at default_hooks.checkpoint\) takes no argument 'sve_best'; closest: "
                       r"save_best"):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(tmp_path / 'wd2'), '--cfg-options',
                         'default_hooks.checkpoint.sve_best=auto'])


# ----------------------------------------------------------------------------- outputs, checked first
@pytest.fixture
def no_runner(monkeypatch):
    """Fail the test if a tool gets as far as building its Runner (the model, the evaluation)."""
    from brs_detr.apis import launch

    def runner_built(cfg, for_testing=False):
        raise AssertionError('the Runner was built before the output was checked')

    monkeypatch.setattr(launch, 'build_runner', runner_built)


def test_unwritable_outputs_are_refused_before_the_work(tmp_path, in_toy_root, no_runner):
    (tmp_path / 'file').write_text('not a folder')
    checkpoint = tmp_path / 'weights.pth'
    checkpoint.write_bytes(b'x')  # never read: the outputs are checked first
    cases = [
        (train_tool.main, ['--work-dir', str(tmp_path / 'file')], rf'--work-dir {tmp_path}/file is a regular file, '
         r'not a directory'),
        (train_tool.main, ['--work-dir', str(tmp_path / 'file' / 'wd')], rf'--work-dir {tmp_path}/file/wd: '
         rf'{tmp_path}/file is a regular file, so no folder can be created under it'),
        (test_tool.main, [str(checkpoint), '--work-dir', str(tmp_path / 'wd'), '--out',
                          str(tmp_path / 'file' / 'r.pkl')],
         rf'--out {tmp_path}/file/r.pkl: its folder {tmp_path}/file is a regular file'),
        (test_tool.main, [str(checkpoint), '--work-dir', str(tmp_path / 'wd'), '--show-dir', str(tmp_path / 'file')],
         rf'--show-dir {tmp_path}/file is a regular file, not a directory'),
        (test_tool.main, [str(checkpoint), '--work-dir', str(tmp_path / 'file')], r'--work-dir .*file is a regular'),
    ]
    for main, argv, message in cases:
        with pytest.raises(OutputPathError, match=message):
            main([str(TOY_CONFIG), *argv])


def test_swapped_or_wrong_files(tmp_path, in_toy_root):
    (tmp_path / 'weights.pth').write_bytes(b'x')
    with pytest.raises(ToolInputError, match=rf'checkpoint {TOY_CONFIG} is a config file, not a checkpoint \(the '
                       r'config comes first: CONFIG CHECKPOINT\)'):
        test_tool.main([str(tmp_path / 'weights.pth'), str(TOY_CONFIG)])
    with pytest.raises(ToolInputError, match=rf'resume checkpoint {tmp_path} is a folder, not a checkpoint file \(to '
                       r'continue the run in a work_dir: --work-dir DIR --resume\)'):
        train_tool.main([str(TOY_CONFIG), '--resume', str(tmp_path)])


def test_other_tools_read_their_configs_first(tmp_path):
    """benchmark_train.py reads every config and applies --cfg-options before the first benchmark (mmengine adds a
    misspelt key silently: the model build fails after the earlier configs ran); convert_checkpoint.py --config."""
    benchmark = load_tool_module('benchmark_train')
    with pytest.raises(ToolInputError, match=r"--cfg-options model.bbox_head.num_clases: no such key in .*; closest "
                       r"existing keys: model.bbox_head.num_classes"):
        benchmark.main([str(TOY_CONFIG), '--cfg-options', 'model.bbox_head.num_clases=3'])
    bad = config_file(tmp_path, 'bad.py', 'x = (\n')
    (tmp_path / 'src.pth').write_bytes(b'x')
    with pytest.raises(ToolInputError, match=rf'cannot read config {bad}: {bad}, line 1: syntax error'):
        load_tool_module('convert_checkpoint').main([str(tmp_path / 'src.pth'), str(tmp_path / 'dst.pth'),
                                                     '--config', str(bad)])


def test_demo_out_dir_and_other_tools_outputs(tmp_path, capsys):
    (tmp_path / 'file').write_text('not a folder')
    demo = load_demo()
    with pytest.raises(OutputPathError, match=rf'--out-dir {tmp_path}/file is a regular file'):
        demo.main([str(tmp_path), str(TOY_CONFIG), '--out-dir', str(tmp_path / 'file')])
    convert = load_tool_module('convert_checkpoint')
    (tmp_path / 'src.pth').write_bytes(b'x')
    with pytest.raises(ToolInputError, match='is SRC: converting in place would replace the published checkpoint'):
        convert.main([str(tmp_path / 'src.pth'), str(tmp_path / '.' / 'src.pth')])
    logs = load_tool_module('analysis_tools/analyze_logs')
    with pytest.raises(OutputPathError, match=rf'--out {tmp_path}/file/curve.png: its folder'):
        logs.main(['plot_curve', str(tmp_path / 'missing.json'), '--out', str(tmp_path / 'file' / 'curve.png')])
    make_toy_coco = load_tool_module('make_toy_coco')
    assert make_toy_coco.main([str(tmp_path / 'file' / 'toy')]) == 2
    assert capsys.readouterr().err == (f'make_toy_coco.py: error: OUT_DIR {tmp_path}/file/toy: its folder '
                                       f'{tmp_path}/file is a regular file, not a directory\n')
    thresholds = load_tool_module('analysis_tools/choose_score_threshold')
    (tmp_path / 'weights.pth').write_bytes(b'PK')  # never read: the output is checked first (was: after evaluating)
    with pytest.raises(OutputPathError, match=rf'--out {tmp_path}/file/thr.json: its folder'):
        thresholds.main([str(TOY_CONFIG), str(tmp_path / 'weights.pth'), '--out', str(tmp_path / 'file' / 'thr.json')])
    benchmark = load_tool_module('benchmark_loss')
    status, err = tool_exit(benchmark.main, ['--out-md', str(tmp_path / 'file' / 'b.md')], capsys,
                            'benchmark_loss.py')
    assert status == 2 and err.splitlines()[-1].startswith(f'benchmark_loss.py: error: --out-md {tmp_path}/file/b.md')


@pytest.mark.skipif(shutil.which('unshare') is None or subprocess.run(
    ['unshare', '-rm', 'true'], capture_output=True).returncode != 0, reason='needs unshare -rm (user namespaces)')
def test_work_dir_on_a_read_only_file_system(tmp_path, tool_env):
    """A real read-only mount (a bind mount in a user namespace): one line, exit 2, before the heavy imports."""
    read_only = tmp_path / 'ro'
    read_only.mkdir()
    command = (f'mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} && '
               f'{sys.executable} {TOOLS_DIR / "train.py"} {TOY_CONFIG} --work-dir {read_only}/wd')
    done = subprocess.run(['unshare', '-rm', 'sh', '-c', command], capture_output=True, text=True, env=tool_env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f'train.py: error: --work-dir {read_only}/wd: cannot write there (the nearest '
                                   f'existing folder {read_only}, where it would be created): the file system is '
                                   'read-only')


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write anywhere')
def test_work_dir_without_write_permission(tmp_path):
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputPathError, match=rf'--work-dir {locked}: cannot write there: permission denied'):
        train_tool.main([str(TOY_CONFIG), '--work-dir', str(locked)])


# ----------------------------------------------------------------------------- during the run
def test_ctrl_c_ends_in_one_line_and_keeps_the_checkpoints(in_toy_root, tmp_path, capsys):
    config = write_fault_config(tmp_path / 'cfg.py', epochs=1, interval=2, faults='sigint_after=3')
    work_dir = tmp_path / 'wd'
    status, err = tool_exit(train_tool.main, [str(config), '--work-dir', str(work_dir)], capsys)
    assert status == 130
    assert err.strip().splitlines()[-1] == (f'train.py: interrupted (Ctrl-C); the checkpoints saved in {work_dir} '
                                            'are kept; continue with --resume')
    assert 'Traceback' not in err
    assert (work_dir / 'last_checkpoint').read_text() == 'iter_2.pth' and (work_dir / 'iter_2.pth').is_file()


def test_full_disk_ends_in_one_line_naming_the_file_and_keeps_the_previous_checkpoint(in_toy_root, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setattr(atomic_io, 'atomic_write_bytes', atomic_io.atomic_write_bytes)  # restored afterwards
    config = write_fault_config(tmp_path / 'cfg.py', epochs=1, interval=2, faults="disk_full_in_write_of='iter_4'")
    work_dir = tmp_path / 'wd'
    status, err = tool_exit(train_tool.main, [str(config), '--work-dir', str(work_dir)], capsys)
    assert status == 2 and 'Traceback' not in err
    assert err.strip().splitlines()[-1] == (
        f'train.py: error: No space left on device while saving the checkpoint {work_dir}/iter_4.pth; nothing was '
        f'replaced: the previous checkpoint {work_dir}/iter_2.pth is kept (last_checkpoint names it): free some '
        f'space, then continue with --resume')
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['iter_2.pth'] and not list(work_dir.glob('*.tmp-*'))


def test_run_tool_main_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    bad = config_file(tmp_path, 'bad.py', 'x = (\n')
    monkeypatch.setenv('BRS_DETR_DEBUG', '0')
    status, err = tool_exit(train_tool.main, [str(bad), '--debug'], capsys)
    assert status == 2 and 'Traceback (most recent call last)' in err
    assert err.strip().splitlines()[-1].startswith(f'train.py: error: cannot read config {bad}: {bad}, line 1:')
    monkeypatch.setenv('BRS_DETR_DEBUG', '0')
    status, err = tool_exit(train_tool.main, [str(bad)], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_run_tool_main_out_of_memory_is_one_line(capsys):
    def out_of_memory():
        raise MemoryError('cannot allocate 17179869184 bytes')

    status, err = tool_exit(lambda argv: out_of_memory(), [], capsys)
    assert status == 1 and err == ('train.py: error: out of memory: cannot allocate 17179869184 bytes (a smaller batch '
                                   'or image size, or fewer DataLoader workers, needs less)\n')


FAILING_SCRIPT = textwrap.dedent('''
    import os, signal, sys, time
    if os.environ['RANK'] == '0':
        if sys.argv[1] == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        print('script.py: error: the one line', file=sys.stderr)
        sys.exit(2)
    time.sleep(60)
''')


@pytest.mark.parametrize('how, status, last_line', [('error', 2, 'script.py: error: the one line'),
                                                     ('kill', 137, 'script.py: rank 0 (pid N) was killed by SIGKILL')])
def test_dist_launcher_reports_a_failed_rank_in_one_line(tmp_path, tool_env, free_port, how, status, last_line):
    """tools/dist_train.sh's launcher: the rank's own status and line, not torchrun's traceback and status 1."""
    script = tmp_path / 'script.py'
    script.write_text(FAILING_SCRIPT)
    done = subprocess.run([sys.executable, '-m', 'brs_detr.apis.dist_launch', '--nproc_per_node=2',
                           f'--master_port={free_port()}', str(script), how], capture_output=True, text=True,
                          env={**tool_env, 'PYTHONPATH': str(REPO_ROOT)}, cwd=tmp_path, timeout=120)
    assert done.returncode == status, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].split(' (pid')[0] == last_line.split(' (pid')[0] and len(lines) == 1, done.stderr
    assert 'Traceback' not in done.stderr and 'ChildFailedError' not in done.stderr


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def in_toy_root(toy_coco_root, monkeypatch) -> Path:
    monkeypatch.chdir(toy_coco_root.parents[1])
    return toy_coco_root.parents[1]


def load_demo():
    import importlib.util
    spec = importlib.util.spec_from_file_location('brs_detr_demo_image_demo', REPO_ROOT / 'demo' / 'image_demo.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
