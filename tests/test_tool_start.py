"""Fast tool start: ``import brs_detr`` and every tool's ``--help`` run without torch, mmcv or mmdet, and print no
warning; ``import brs_detr`` still makes every brs_detr module buildable from mmdet's registries and installs the safe
checkpoint loaders before mmengine can load a checkpoint (brs_detr/registration.py, docs/architecture.md).

The start-time check is deterministic: which modules a process imported (``python -X importtime``), not how long it
took (``tools/benchmark_tool_start.py`` measures that).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT, load_tool_module

from brs_detr.benchmarks.tool_start import HEAVY_PACKAGES, heavy_imports, split_importtime, tool_commands
from brs_detr.known_warnings import KNOWN_WARNINGS

COMMANDS = tool_commands(str(REPO_ROOT))


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, '-c', textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def test_every_tool_is_measured():
    tools = {command[0] for command in COMMANDS}
    assert {'tools/train.py', 'tools/test.py', 'tools/make_toy_coco.py', 'tools/analysis_tools/analyze_logs.py',
            'demo/image_demo.py', 'tools/benchmark_tool_start.py'} <= tools
    assert ['tools/download_checkpoint.py', '--list'] in COMMANDS


@pytest.mark.parametrize('command', COMMANDS, ids=' '.join)
def test_tool_answers_without_heavy_imports_or_warnings(command, tool_env):
    proc = subprocess.run([sys.executable, '-X', 'importtime', *command], cwd=REPO_ROOT, env=tool_env,
                          capture_output=True, text=True, timeout=120)
    modules, stderr = split_importtime(proc.stderr)
    assert proc.returncode == 0, stderr
    assert 'usage:' in proc.stdout or command[1] != '--help'
    assert heavy_imports(modules) == [], f'{" ".join(command)} imports {heavy_imports(modules)}'
    assert stderr == '', f'{" ".join(command)} wrote to stderr:\n{stderr}'


def test_the_tools_and_the_tests_ignore_the_same_known_warnings():
    tomllib = pytest.importorskip('tomllib')
    with open(REPO_ROOT / 'pyproject.toml', 'rb') as file:
        filters = tomllib.load(file)['tool']['pytest']['ini_options']['filterwarnings']
    assert filters[:2] == ['error::Warning:brs_detr', 'error::Warning:test_']
    assert tuple(filters[2:]) == KNOWN_WARNINGS


def test_import_brs_detr_is_light():
    proc = _python('''
        import sys
        import brs_detr
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mmcv', 'mmdet', 'mmengine')))
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def test_the_checker_sees_heavy_imports():
    proc = _python('import torch', '-X', 'importtime')
    assert proc.returncode == 0, proc.stderr
    modules, _ = split_importtime(proc.stderr)
    assert heavy_imports(modules) == ['torch']
    assert heavy_imports({'mmdet.models.losses', 'mmcv', 'numpy'}) == ['mmcv', 'mmdet']
    assert HEAVY_PACKAGES == ('torch', 'mmcv', 'mmdet')


#: After ``import brs_detr`` alone (ORDER: 'brs_detr first' or 'mmdet first'), builds a few brs_detr classes through
#: mmdet's registries, then records which brs_detr classes the registries hold before and after importing every module
#: of brs_detr explicitly: a module that registers something but is left out of register_all_modules shows up.
BUILD_EVERYTHING = '''
    import importlib, json, pkgutil, sys
    ORDER = {order!r}
    if ORDER == 'mmdet first':
        import mmdet.registry  # noqa: F401
    import brs_detr
    if ORDER == 'brs_detr first':
        assert 'torch' not in sys.modules and 'mmdet' not in sys.modules
    from mmdet.registry import HOOKS, LOOPS, MODELS, RUNNERS, TRANSFORMS
    built = [type(MODELS.build(dict(type=name))).__name__
             for name in ('RankSortLoss', 'BucketedRankSortLoss', 'APLoss', 'BucketedAPLoss')]
    built.append(type(TRANSFORMS.build(dict(type='CheckedLoadImageFromFile'))).__name__)
    built.append(type(HOOKS.build(dict(type='NonFiniteLossHook'))).__name__)
    built.append(type(HOOKS.build(dict(type='CrashSafeCheckpointHook', interval=1))).__name__)

    def registered():
        return {{registry.name: sorted(name for name, cls in registry.module_dict.items()
                                       if cls.__module__.startswith('brs_detr.'))
                 for registry in (MODELS, TRANSFORMS, HOOKS, LOOPS, RUNNERS)}}

    before = registered()
    for module in pkgutil.walk_packages(brs_detr.__path__, 'brs_detr.'):
        importlib.import_module(module.name)
    print(json.dumps(dict(built=built, before=before, after=registered())))
'''


@pytest.mark.parametrize('order', ['brs_detr first', 'mmdet first'])
def test_import_brs_detr_makes_every_module_buildable(order):
    proc = _python(textwrap.dedent(BUILD_EVERYTHING).format(order=order))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['built'] == ['RankSortLoss', 'BucketedRankSortLoss', 'APLoss', 'BucketedAPLoss',
                               'CheckedLoadImageFromFile', 'NonFiniteLossHook', 'CrashSafeCheckpointHook']
    assert result['before'] == result['after']
    assert {'CoDETR', 'TimmBackbone', 'RankBasedATSSHead', 'RankBasedCoDeformableDETRHead',
            'RankBasedStandardRoIHead'} <= set(result['before']['model'])
    assert result['before']['loop'] == ['ResumableEpochBasedTrainLoop']
    assert result['before']['runner'] == ['ReliableRunner']


def test_config_with_custom_imports_builds_the_model_after_a_light_import():
    proc = _python('''
        import sys
        from mmengine.config import Config
        cfg = Config.fromfile('configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py')  # custom_imports brs_detr
        assert 'brs_detr' in sys.modules and 'mmdet' not in sys.modules and 'torch' not in sys.modules
        from mmengine.registry import init_default_scope
        from mmdet.registry import MODELS
        init_default_scope(cfg.default_scope)  # as mmdet's tools and the Runner do
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        print(type(model).__name__, type(model.bbox_head.loss_cls).__name__)
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['CoDETR', 'BucketedRankSortLoss']


def test_safe_loaders_are_installed_before_mmengine_loads_a_checkpoint(tmp_path):
    """No registry look-up happens here: the loaders come with the import of ``mmengine.runner.checkpoint``."""
    proc = _python(f'''
        import argparse
        import brs_detr
        import torch
        from mmengine.fileio import get_file_backend
        from mmengine.runner import CheckpointLoader, load_checkpoint
        names = [CheckpointLoader._get_checkpoint_loader(path).__name__
                 for path in ('/x.pth', 'https://host/x.pth', 'torchvision://resnet50')]
        print(names, type(get_file_backend('/x.pth')).__name__)
        path = {str(tmp_path / 'pickled.pth')!r}
        torch.save(dict(state_dict=dict(), meta=dict(args=argparse.Namespace(lr=0.1))), path)  # not weights only
        try:
            load_checkpoint(torch.nn.Linear(1, 1), path)
        except Exception as error:
            print(type(error).__name__)
    ''')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == ("['load_from_local_safe', 'load_from_http_safe', 'load_from_torchvision_safe'] "
                        'AtomicLocalBackend')
    assert lines[-1] == 'UntrustedCheckpointError'


def test_register_all_modules_is_public_and_idempotent():
    proc = _python('''
        import brs_detr
        brs_detr.register_all_modules()
        brs_detr.register_all_modules(init_default_scope=True)
        from mmengine.registry import DefaultScope
        from mmdet.registry import MODELS
        print(DefaultScope.get_current_instance().scope_name, 'RankSortLoss' in MODELS.module_dict)
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['mmdet', 'True']


def test_benchmark_tool_start_prints_the_table(capsys):
    tool = load_tool_module('benchmark_tool_start')
    status = tool.main(['--runs', '1', '--commands', 'tools/convert_checkpoint.py --help'])
    out = capsys.readouterr().out
    assert status == 0
    assert '| `python tools/convert_checkpoint.py --help` |' in out
    assert out.strip().splitlines()[-1].endswith('| yes | - |')
