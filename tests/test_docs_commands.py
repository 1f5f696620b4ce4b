"""Every command in README.md and docs/*.md runs as written (tests/docs_commands.py extracts them).

* Every command is parsed by its tool's own parser (a renamed or removed option fails here); a usage line
  (``[--opt ...]``) only needs its options to exist.
* Every ``--cfg-options`` is applied, through the tools' code path (:func:`brs_detr.apis.config_loading.
  check_cfg_options`, then :func:`~brs_detr.apis.config_loading.check_config_components`), to the config of its
  command; an inline one to the configs of its section (else of its file, else every config): each of them it
  applies to (its keys exist there, or are new arguments of a component there) must accept it, and at least one must.
* The cheap commands run: ``--help``, ``--list``, the toy data generator, ``python -c`` snippets, and the train /
  test / demo / browse commands of the toy configs up to the point where the Runner, the model or the inference
  would start (in a folder holding the toy data set, with a stand-in file for the checkpoints they name).
* The options the docs show as refused (the typo guard's example) stay refused.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import os
import os.path as osp
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from mmengine.config import Config

from brs_detr.apis.cli import CfgOptionsAction, ToolInputError
from brs_detr.apis.config_loading import (NEW_KEY_PREFIX, RUNNER_FIELDS, _deepest_existing, check_cfg_options,
                                          check_config_components, read_config)
from conftest import CONFIGS_DIR, REPO_ROOT, load_tool_module
from docs_commands import DocCommand, cfg_options, doc_commands, is_placeholder, is_synopsis

DOC_FILES = [REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md'))]
COMMANDS = doc_commands(DOC_FILES)
ALL_CONFIGS = sorted(str(p.relative_to(REPO_ROOT)) for p in CONFIGS_DIR.rglob('*.py') if '_base_' not in p.parts)
#: Options the docs show as refused, next to their error message -> that message.
DOCUMENTED_REFUSALS = {'train_cfg.max_epoch=2': 'no such key', 'train_cfg.max_epochs=two': 'expects an integer'}
#: Commands the docs show that this test does not run: the installer, the test suite, downloads.
NOT_RUN = ('tools/install.sh', '-m pytest')
#: Shell scripts -> the Python tool they run, and how their arguments become the tool's (``dist_train.sh CONFIG
#: GPUS ...`` -> ``train.py CONFIG ...``; ``slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR ...`` -> ``train.py
#: CONFIG --work-dir WORK_DIR ...``).
SHELL_TOOLS = {
    'tools/dist_train.sh': ('tools/train.py', lambda a: a[:1] + a[2:]),
    'tools/dist_test.sh': ('tools/test.py', lambda a: a[:2] + a[3:]),
    'tools/slurm_train.sh': ('tools/train.py', lambda a: a[2:3] + ['--work-dir'] + a[3:]),
    'tools/slurm_test.sh': ('tools/test.py', lambda a: a[2:4] + a[4:]),
}
#: Tools that take a config as first positional argument (after their sub-command, if any).
CONFIG_TOOLS = ('tools/train.py', 'tools/test.py', 'tools/analysis_tools/browse_dataset.py')


@pytest.fixture(scope='module', autouse=True)
def config_files_read_once():
    """mmengine parses every ``_base_`` file again for each config that inherits it, and reads mmdet's 102 metafiles
    for every ``mmdet::`` config named (0.4 s each): here each file is read once (the files do not change during
    the test; each config still gets its own copy)."""
    from mmengine.config import utils
    original_load, original_file2dict = utils.load, Config._file2dict
    loaded = {}

    def load(path, *args, **kwargs):  # the metafiles
        if path not in loaded:
            loaded[path] = original_load(path, *args, **kwargs)
        return copy.deepcopy(loaded[path])

    utils.load = load
    original_cfg_path = Config._get_cfg_path
    Config._get_cfg_path = staticmethod(functools.lru_cache(maxsize=None)(original_cfg_path))
    parsed = {}

    def file2dict(filename, *args, **kwargs):
        key = (osp.abspath(filename), args, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = original_file2dict(filename, *args, **kwargs)
        return copy.deepcopy(parsed[key])

    Config._file2dict = staticmethod(file2dict)
    yield
    utils.load = original_load
    Config._file2dict = staticmethod(original_file2dict)
    Config._get_cfg_path = staticmethod(original_cfg_path)


@functools.lru_cache(maxsize=None)
def base_config(path: str) -> Config:
    return read_config(str(REPO_ROOT / path))


def with_options(path: str, options: dict) -> None:
    """Apply ``options`` to ``path``'s config the way the tools apply them (``ToolInputError``: refused)."""
    if not options:
        return checked_config(path)
    cfg = copy.deepcopy(base_config(path))
    cfg.merge_from_dict(check_cfg_options(cfg, options))
    check_config_components(cfg)


@functools.lru_cache(maxsize=None)
def checked_config(path: str) -> None:
    check_config_components(base_config(path))


def parse_options(words: List[str]) -> dict:
    """``KEY=VALUE`` words as ``--cfg-options`` parses them; a value ``N`` (a placeholder) becomes 1."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    words = [w[:-2] + '=1' if w.endswith('=N') else w for w in words if not is_placeholder(w)]
    return parser.parse_args(['--cfg-options', *words]).cfg_options if words else {}


def tool_of(argv: List[str]) -> Optional[str]:
    """The script of a command (``tools/x.py``, ``demo/image_demo.py``, ``tools/x.sh``) or ``None``."""
    script = next((w for w in argv[1:3] if w.endswith(('.py', '.sh'))), None)
    return script if script and (REPO_ROOT / script).is_file() else None


def load_script(script: str):
    if script.startswith('demo/'):
        import importlib.util
        spec = importlib.util.spec_from_file_location('brs_detr_docs_' + Path(script).stem, REPO_ROOT / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return load_tool_module(script[len('tools/'):-len('.py')])


def parse(script: str, args: List[str]) -> argparse.Namespace:
    """Parse ``args`` with ``script``'s own parser (``SystemExit`` on a bad option)."""
    module = load_script(script)
    if hasattr(module, 'build_parser'):
        return module.build_parser().parse_args(args)
    return module.parse_args(args)


def python_tool_args(command: DocCommand):
    """``(python tool, its arguments)`` of a documented command (``None``: not a tool command)."""
    argv = command.argv
    script = tool_of(argv)
    if script is None or any(skip in command.text for skip in NOT_RUN):
        return None
    args = argv[argv.index(script) + 1:]
    if script in SHELL_TOOLS:
        script, to_tool_args = SHELL_TOOLS[script]
        args = to_tool_args(args)
    return script, args


def config_of(script: str, args: List[str]) -> Optional[str]:
    if script not in CONFIG_TOOLS and script != 'demo/image_demo.py':
        return None
    positional = [a for a in args if not a.startswith('-')]
    if script == 'demo/image_demo.py':
        candidates = [a for a in positional if a.endswith('.py')]
        return candidates[-1] if candidates else None
    return positional[0] if positional and positional[0].endswith('.py') else None


def problems_of(command: DocCommand, capsys) -> List[str]:
    """What fails when ``command`` is parsed and its options applied (empty: nothing)."""
    where = f'{command.where}: {command.text}'
    if command.text.startswith('--cfg-options'):
        return inline_option_problems(command)
    tool = python_tool_args(command)
    if tool is None:
        return []
    script, args = tool
    if is_synopsis(command.argv):
        return [f'{where}: {script} has no option {word}' for word in synopsis_options(command.argv)
                if word not in option_strings(script)]
    if not torch.cuda.is_available():  # a GPU command is parsed as its CPU twin here
        args = ['cpu' if previous == '--device' and a.startswith('cuda') else a
                for previous, a in zip([''] + args, args)]
    try:
        parsed = parse(script, [a if not is_placeholder(a) else 'placeholder' for a in args])
    except SystemExit as exit_info:
        captured = capsys.readouterr()
        if exit_info.code == 0:  # --help
            return []
        return [f'{where}: {script} refuses it: {(captured.err.strip() or "?").splitlines()[-1]}']
    config = config_of(script, args)
    configs = getattr(parsed, 'configs', None) or ([config] if config else [])
    options = getattr(parsed, 'cfg_options', None) or {}
    problems = []
    for path in configs:
        if is_placeholder(path) or not (REPO_ROOT / path).is_file():
            continue
        try:
            with_options(path, options)
        except ToolInputError as error:
            problems.append(f'{where}: {error}')
    return problems


def synopsis_options(argv: List[str]) -> List[str]:
    return [word.strip('[]') for word in argv if word.strip('[]').startswith('--')]


@functools.lru_cache(maxsize=None)
def option_strings(script: str) -> frozenset:
    module = load_script(script)
    parser = module.build_parser() if hasattr(module, 'build_parser') else None
    if parser is None:
        captured = {}
        original = argparse.ArgumentParser.parse_args

        def capture(self, args=None, namespace=None):
            captured.setdefault('parser', self)
            raise SystemExit(0)

        argparse.ArgumentParser.parse_args = capture
        try:
            with contextlib.suppress(SystemExit):
                module.parse_args([])
        finally:
            argparse.ArgumentParser.parse_args = original
        parser = captured['parser']
    strings = set()
    for action in parser._actions:
        strings.update(action.option_strings)
        for sub in getattr(action, 'choices', None) or {}:
            if isinstance(action.choices, dict):
                strings.update(s for a in action.choices[sub]._actions for s in a.option_strings)
    return frozenset(strings)


def inline_option_problems(command: DocCommand) -> List[str]:
    """An inline ``--cfg-options`` span: each config of its section (else of its file, else every config) that the
    options apply to (:func:`applies_to`) must accept them, and at least one must."""
    words = cfg_options(command.argv) or []
    if any(word.split('=', 1)[-1] in DOCUMENTED_REFUSALS or word in DOCUMENTED_REFUSALS for word in words):
        return []
    alternatives = [words]
    for index, word in enumerate(words):  # ``key=a|b``: each alternative
        if '|' in word:
            key, values = word.split('=', 1)
            alternatives = [w[:index] + [f'{key}={value}'] + w[index + 1:] for w in alternatives
                            for value in values.split('|')]
    problems = []
    for option_words in alternatives:
        options = parse_options(option_words)
        if not options:
            continue
        accepted, refused = [], []
        for configs in (command.section_configs, command.file_configs, ALL_CONFIGS):
            configs = [path for path in configs if path in ALL_CONFIGS]  # not an error example's missing file
            for path in configs:
                cfg = base_config(path)
                if not all(applies_to(cfg, key) for key in options):
                    continue
                try:
                    with_options(path, options)
                    accepted.append(path)
                except ToolInputError as error:
                    refused.append(f'{path}: {error}')
            if accepted or refused:
                break
        if refused or not accepted:
            problems.append(f'{command.where}: {command.text}: ' + ('; '.join(refused) if refused else
                                                                      'no config has the keys it sets'))
    return problems


def applies_to(cfg: Config, key: str) -> bool:
    """Whether the option ``key`` is meant for ``cfg``: the key exists in it, or is a new argument of a component
    of it (a dict with a ``type``), or lies under a Runner field the config leaves out; ``+key``: always."""
    top = key.split('.')[0]
    if key.startswith(NEW_KEY_PREFIX) or top not in cfg and top in RUNNER_FIELDS:
        return True
    prefix, node, exists = _deepest_existing(cfg, key)
    return exists or prefix == key.rsplit('.', 1)[0] and isinstance(node, dict) and isinstance(node.get('type'), str)


def test_documented_commands_parse_and_their_config_options_apply(capsys):
    problems = [problem for command in COMMANDS for problem in problems_of(command, capsys)]
    assert not problems, '\n'.join(problems)


def test_documented_refusals_stay_refused():
    for option, message in DOCUMENTED_REFUSALS.items():
        assert any(option in command.text for command in COMMANDS), f'the docs no longer show {option}'
        with pytest.raises(ToolInputError, match=message):
            with_options('configs/toy/atss_r18-tiny_2xb2-12e_toy-coco.py', parse_options([option]))


def test_every_config_passes_the_type_check():
    """No false alarm of the unknown-type check on any config of the project."""
    for path in ALL_CONFIGS:
        checked_config(path)


# ----------------------------------------------------------------------------- running the cheap ones
class StopBeforeTheWork(Exception):
    """Raised where a tool would start its Runner, model or inference."""


def stop(*args, **kwargs):
    raise StopBeforeTheWork


@pytest.fixture
def docs_folder(tmp_path, toy_coco_root, monkeypatch):
    """A working directory holding data/toy_coco, with the Runner, the inferencer and the browser stopped."""
    from brs_detr.apis import dataset_browser, det_inferencer, launch
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'toy_coco').symlink_to(toy_coco_root)
    (tmp_path / 'configs').symlink_to(CONFIGS_DIR)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, 'build_runner', stop)
    monkeypatch.setattr(det_inferencer, 'BRSDetInferencer', stop)
    monkeypatch.setattr(dataset_browser, 'browse_dataset', stop)
    return tmp_path


def runnable(command: DocCommand) -> bool:
    argv = command.argv
    if is_synopsis(argv) or any(is_placeholder(word) for word in argv) or command.text.startswith('--cfg-options'):
        return False
    if '--help' in argv or argv[:2] == ['python', '-c'] or 'tools/make_toy_coco.py' in argv:
        return True
    if 'tools/download_checkpoint.py' in argv:
        return '--list' in argv
    tool = python_tool_args(command)
    config = config_of(*tool) if tool and tool[0] in (*CONFIG_TOOLS, 'demo/image_demo.py') else None
    return bool(config) and '/toy' in config or 'toy-coco' in (config or '')


def run_in_process(command: DocCommand, folder: Path) -> Optional[str]:
    """Run ``command`` (see :func:`runnable`); ``None`` when it ran (or stopped before the work) as it should."""
    argv = command.argv
    if argv[:2] == ['python', '-c']:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(argv[2], command.where, 'exec'), {})  # noqa: S102  (the documented snippet)
        return None
    if argv[:2] == ['bash', 'tools/install.sh']:
        done = subprocess.run(['bash', str(REPO_ROOT / 'tools' / 'install.sh'), *argv[2:]], capture_output=True,
                              text=True)
        return None if done.returncode == 0 else done.stderr
    script, args = python_tool_args(command)
    cwd = contextlib.nullcontext()
    if script == 'tools/make_toy_coco.py':  # each runs as on a fresh checkout
        if Path(args[0]).is_symlink():  # the session's data set: make another one elsewhere
            (folder / 'scratch').mkdir(exist_ok=True)
            cwd = contextlib.chdir(folder / 'scratch')
        elif Path(args[0]).exists():
            shutil.rmtree(args[0])
    for arg in args:  # checkpoints the command names (a stand-in: read only as far as its header)
        if arg.endswith('.pth') and not Path(arg).exists():
            Path(arg).parent.mkdir(parents=True, exist_ok=True)
            torch.save({}, arg)
    module = load_script(script)
    try:
        with cwd, contextlib.redirect_stdout(io.StringIO()):
            status = module.main(args)
    except StopBeforeTheWork:
        return None
    except SystemExit as exit_info:
        status = exit_info.code
    return None if status in (0, None) else f'exit status {status}'


def test_cheap_documented_commands_run(docs_folder, capsys):
    done, problems = set(), []
    for command in COMMANDS:
        if command.text in done or not runnable(command):
            continue
        done.add(command.text)
        try:
            problem = run_in_process(command, docs_folder)
        except Exception as error:  # noqa: B902  (reported with the command)
            problem = f'{type(error).__name__}: {error}'
        if problem is not None:
            problems.append(f'{command.where}: {command.text}: {problem}')
        for leftover in ('work_dirs', 'outputs', 'browse', 'scratch'):
            shutil.rmtree(docs_folder / leftover, ignore_errors=True)
    assert len(done) >= 20, sorted(done)
    assert not problems, '\n'.join(problems)
