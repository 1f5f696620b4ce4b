"""Shared pytest fixtures: repository paths, the interpreter to run tools with, a toy COCO dataset, free ports."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Iterator, Optional

import pytest

if os.environ.get('PYTEST_XDIST_WORKER'):
    # Under pytest-xdist (the README runs `-n 2`) every worker is one process of its own: one intra-op thread each,
    # so that two workers on two cores do not oversubscribe them. Set before any test module imports torch.
    os.environ.setdefault('OMP_NUM_THREADS', '1')

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = REPO_ROOT / 'tools'
CONFIGS_DIR = REPO_ROOT / 'configs'

#: Size of the session toy dataset: 8 training images give 2 iterations per epoch with 2 processes x 2 images.
TOY_NUM_TRAIN = 8
TOY_NUM_VAL = 4
TOY_IMG_SIZE = (128, 128)


@contextlib.contextmanager
def brs_detr_warns(*patterns: str) -> Iterator[None]:
    """Expect exactly one warning raised from brs_detr code per regex in ``patterns`` in the block.

    Unlike ``pytest.warns``, the block's other warnings are passed on with the name of the module that raised them
    (pytest.warns passes them on with a file path instead, which the module-specific filters of pyproject.toml
    cannot match), so a known third-party warning stays ignored and any other warning still counts.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield
    package_dir = str(REPO_ROOT / 'brs_detr') + os.sep
    ours = [str(w.message) for w in caught if w.filename.startswith(package_dir)]
    unmatched = list(ours)
    for pattern in patterns:
        found = next((message for message in unmatched if re.search(pattern, message)), None)
        assert found is not None, f'no brs_detr warning matches {pattern!r}; brs_detr warned: {ours}'
        unmatched.remove(found)
    assert not unmatched, f'unexpected brs_detr warnings: {unmatched}'
    for w in caught:
        if not w.filename.startswith(package_dir):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, module=_module_of(w.filename))


def _module_of(filename: str) -> Optional[str]:
    """The name of the imported module whose file is ``filename`` (what ``warnings`` attributes a warning to)."""
    return next((name for name, module in list(sys.modules.items()) if getattr(module, '__file__', None) == filename),
                None)


#: A warning as Python prints it: ``path.py:LINE: CategoryWarning: message``.
PYTHON_WARNING = re.compile(r'^\S+:\d+: \w*Warning: .*$', re.MULTILINE)


def python_warnings(output: str) -> list:
    """The warnings Python printed in a tool's output (the tools print none: brs_detr/known_warnings.py)."""
    return PYTHON_WARNING.findall(output)


def load_tool_module(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f'brs_detr_tools_{name}', TOOLS_DIR / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def mmdet_default_scope() -> Iterator[None]:
    """Run every test in mmdet's default registry scope (and with a current MMLogger that can write: see
    :func:`use_a_logger_that_can_write`) and drop the scopes it creates afterwards.

    mmengine keeps the most recently created ``DefaultScope`` as the current one for the whole process: a Runner built
    by one test (``default_scope='mmengine'`` when its config names none) would otherwise make the registries of the
    next test in the same pytest-xdist worker look up ``HungarianAssigner`` in mmengine's root registry, so tests
    passed or failed by the order the workers happened to run the files in. Tests that never imported mmengine keep
    it unimported (the tool-start tests measure imports).
    """
    if 'mmengine.registry' not in sys.modules:
        yield
        return
    from mmengine.registry import DefaultScope
    use_a_logger_that_can_write()
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


def use_a_logger_that_can_write() -> None:
    """Make a new current MMLogger when the current one writes to a closed stream.

    The current MMLogger of the process prints to the ``sys.stdout`` of the moment it was created: created under an
    earlier test's ``capsys``, it writes to that test's closed capture, and every later log line in the worker ends
    in ``--- Logging error ---`` on stderr (which a test of a tool's one-line error then reads).
    """
    import logging
    import uuid

    from mmengine.logging import MMLogger

    streams = [getattr(handler, 'stream', None) for handler in MMLogger.get_current_instance().handlers
               if isinstance(handler, logging.StreamHandler)]
    if any(getattr(stream, 'closed', False) for stream in streams):
        MMLogger.get_instance(f'test_{uuid.uuid4().hex}')


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def python_exe() -> str:
    """The interpreter running the tests (the project's virtual environment in CI): tools run with it too."""
    return sys.executable


@pytest.fixture(scope='session')
def make_toy_coco_module() -> ModuleType:
    """The toy COCO generator behind ``tools/make_toy_coco.py``."""
    from brs_detr.datasets import toy_coco
    return toy_coco


@pytest.fixture(scope='session')
def toy_coco_root(tmp_path_factory, make_toy_coco_module) -> Path:
    """A toy COCO dataset at ``<tmp>/data/toy_coco`` (the configs' default data_root relative to ``<tmp>``).

    Run tools with ``cwd=toy_coco_root.parents[1]`` to use it without overriding any path.
    """
    base = tmp_path_factory.mktemp('toy_coco_session')
    out = base / 'data' / 'toy_coco'
    make_toy_coco_module.make_toy_coco(str(out), num_train=TOY_NUM_TRAIN, num_val=TOY_NUM_VAL, img_size=TOY_IMG_SIZE,
                                       seed=0)
    return out


@pytest.fixture(scope='session')
def free_port() -> Callable[[], int]:
    """Return a function giving a currently free TCP port on 127.0.0.1 (for torchrun's rendezvous)."""

    def _free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(('127.0.0.1', 0))
            return sock.getsockname()[1]

    return _free_port


@pytest.fixture(scope='session')
def tool_env(python_exe) -> Dict[str, str]:
    """Environment for running the tools in a subprocess: the test interpreter as PYTHON and no display
    (as on a headless server: the tools must not need one). Copy it before changing it."""
    env = dict(os.environ)
    env['PYTHON'] = python_exe
    env.pop('DISPLAY', None)
    env.pop('WAYLAND_DISPLAY', None)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


#: Set to 1 to run the tests marked ``long`` too (left out of the default suite, which must stay under 12 minutes).
LONG_TESTS_ENV = 'BRS_DETR_LONG_TESTS'


def pytest_collection_modifyitems(config, items) -> None:
    """Skip the ``long`` tests unless ``BRS_DETR_LONG_TESTS=1``: each repeats, at a larger size, what a test of the
    default suite covers (the Swin-L builds of the Swin-T ones, the Co-DETR R50 export of the BRS-DETR one, RS-DETR's
    convergence of BRS-DETR's)."""
    if os.environ.get(LONG_TESTS_ENV) == '1':
        return
    skip = pytest.mark.skip(reason=f'long: {LONG_TESTS_ENV}=1 runs it')
    for item in items:
        if 'long' in item.keywords:
            item.add_marker(skip)

