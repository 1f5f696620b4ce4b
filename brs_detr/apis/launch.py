"""What ``tools/train.py`` and ``tools/test.py`` share after parsing: config loading and checks, data checks, the Runner.

The tools parse their arguments with :mod:`brs_detr.apis.cli` (light), then call :func:`brs_detr.apis.train.train` /
:func:`brs_detr.apis.test.test` through :func:`~brs_detr.apis.cli.run_tool_main`. Bad input raises
:class:`~brs_detr.apis.cli.ToolInputError` (or another of :data:`~brs_detr.apis.cli.USER_ERRORS`) anywhere below.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os.path as osp
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from brs_detr.datasets.data_check import check_datasets, name_images_in_load_errors
from brs_detr.datasets.num_classes import check_model_num_classes, dataset_classes, read_config, resolve_num_classes
from brs_detr.engine.runner import ReliableRunner
from .cli import (ToolInputError, add_launch_arguments, check_checkpoint_file, check_config_file,  # noqa: F401
                  error_message, fail, is_main_launch_process, parse_tool_args, run_tool_main, tool_name)

#: Prefix of a ``--cfg-options`` key that is added to the config on purpose.
NEW_KEY_PREFIX = '+'
#: Top-level fields the Runner reads although configs often leave them out (``--cfg-options`` may add them).
RUNNER_FIELDS = frozenset(inspect.signature(Runner.__init__).parameters) - {'self'} | {
    'runner_type', 'model_wrapper_cfg', 'find_unused_parameters', 'compile', 'data_check'}


def warn(message: str) -> None:
    """Log a warning once per job: before the Runner exists every process would print it, so only rank 0 does."""
    if is_main_launch_process():
        print_log(message, logger='current', level=logging.WARNING)


def _config_paths(node: Any, prefix: str = '') -> Iterator[str]:
    """Every dotted key path of a config (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, (list, tuple)) else ()
    for key, value in items:
        path = f'{prefix}{key}'
        yield path
        yield from _config_paths(value, path + '.')


def _deepest_existing(cfg: Config, key: str) -> Tuple[str, Any, bool]:
    """``(longest existing prefix of key, its node, whether the whole key exists)``."""
    node: Any = cfg._cfg_dict
    walked: List[str] = []
    for part in key.split('.'):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return '.'.join(walked), node, False
        walked.append(part)
    return key, node, True


def check_cfg_options(cfg: Config, cfg_options: dict) -> dict:
    """The ``--cfg-options`` with keys that must exist in ``cfg``, or carry the ``+`` opt-in for new ones.

    mmengine's ``merge_from_dict`` silently adds any key: ``train_cfg.max_epoch=2`` (for ``max_epochs``) trains
    with the config's value and no warning. Here every key must exist in the config, except keys under a top-level
    Runner field the config does not set (``randomness.seed=0``) and under ``data_check``; a key written
    ``+key=value`` is added deliberately.

    Returns:
        The options with the ``+`` removed, for ``merge_from_dict``.

    Raises:
        ToolInputError: Names each unknown key with the closest existing keys.
    """
    checked, unknown = {}, []
    for key, value in cfg_options.items():
        if key.startswith(NEW_KEY_PREFIX):
            checked[key[len(NEW_KEY_PREFIX):]] = value
            continue
        checked[key] = value
        top = key.split('.')[0]
        if top not in cfg and top in RUNNER_FIELDS:
            continue
        if not _deepest_existing(cfg, key)[2]:
            unknown.append(key)
    if not unknown:
        return checked
    paths = list(_config_paths(cfg._cfg_dict))
    lines = []
    for key in unknown:
        prefix, node, _ = _deepest_existing(cfg, key)
        siblings = [f'{prefix}.{k}' if prefix else str(k) for k in node] if isinstance(node, dict) else []
        close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.5) or difflib.get_close_matches(
            key, paths, n=3, cutoff=0.6)
        lines.append(f'--cfg-options {key}: no such key in {cfg.filename}' +
                     (f'; closest existing keys: {", ".join(close)}' if close else '') +
                     (f' (under {prefix}: {", ".join(map(str, node))})' if not close and siblings else ''))
    raise ToolInputError('\n'.join(lines) + f'\n(mmengine would add the key silently. To add a new key on purpose, '
                         f'write it as {NEW_KEY_PREFIX}KEY=VALUE, e.g. {NEW_KEY_PREFIX}{unknown[0]}=...)')


def load_config(config_path: str, cfg_options: Optional[dict], launcher: str) -> Config:
    """Read ``config_path``, apply ``--cfg-options`` (checked by :func:`check_cfg_options`), set the launcher, and
    give every head the datasets' class count (:func:`brs_detr.datasets.num_classes.resolve_num_classes`, which
    refuses a head with another number)."""
    check_config_file(config_path)
    cfg = read_config(config_path)  # num_classes='from_dataset' resolved after --cfg-options
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(check_cfg_options(cfg, cfg_options))
    resolve_num_classes(cfg)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """work_dir priority, as in mmdet: CLI > ``work_dir`` in the config > ./work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def prepare_datasets(cfg: Config, splits: Sequence[str], skip_check: bool) -> None:
    """Make image-loading errors name their image and annotation file, and check the datasets of ``splits``
    (on rank 0, before the Runner exists) unless ``skip_check`` (``--skip-data-check``)."""
    name_images_in_load_errors(cfg, splits)
    if skip_check:
        warn(f'--skip-data-check: the {"/".join(splits)} data are not checked')
    elif is_main_launch_process():
        check_datasets(cfg, splits)


def build_runner(cfg: Config):
    """Build the Runner named by ``runner_type`` (default: :class:`~brs_detr.engine.ReliableRunner`)."""
    from mmdet.registry import RUNNERS

    runner = ReliableRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    check_runner_num_classes(runner, cfg)
    return runner


def check_runner_num_classes(runner, cfg: Config) -> None:
    """Every head of the built model predicts the datasets' classes (a head that leaves ``num_classes`` at its
    class's default escapes the config check; :func:`~brs_detr.datasets.num_classes.check_model_num_classes`)."""
    from mmengine.model import BaseTTAModel, is_model_wrapper

    found = dataset_classes(cfg)
    if found is not None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_model_num_classes(model.module if isinstance(model, BaseTTAModel) else model,  # --tta: its detector
                                len(found.classes))


