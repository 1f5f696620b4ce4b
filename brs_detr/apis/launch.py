"""What ``tools/train.py`` and ``tools/test.py`` share: arguments, config loading, errors and exit status, shutdown.

The tools only parse their arguments and call :func:`brs_detr.apis.train.train` / :func:`brs_detr.apis.test.test`
through :func:`run_tool_main`. Bad input raises one of :data:`USER_ERRORS` anywhere below; :func:`run_tool_main`
prints ``<tool>: error: <message>`` (as argparse does) and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import logging
import os
import os.path as osp
import re
import sys
import traceback
from typing import Any, Callable, Iterator, List, NoReturn, Optional, Sequence, Tuple, Type

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from brs_detr.datasets import DataCheckError, ImageLoadError, check_datasets, name_images_in_load_errors
from brs_detr.engine import CheckpointFitError, NonFiniteError, ReliableRunner
from brs_detr.engine.dist import LauncherError, close_process_group
from brs_detr.fileio.checkpoint import CheckpointReadError, UntrustedCheckpointError, check_checkpoint_readable

#: Exit status of a tool stopped by bad input (argparse's status for bad arguments).
USAGE_ERROR_STATUS = 2


class ToolInputError(ValueError):
    """Bad input to a tool (a missing file, an invalid option): reported as one line, exit status 2."""


#: Errors caused by the user's input: reported by :func:`run_tool_main` with their message and exit status 2.
USER_ERRORS: Tuple[Type[BaseException], ...] = (ToolInputError, LauncherError, UntrustedCheckpointError,
                                                  CheckpointReadError, CheckpointFitError, DataCheckError,
                                                  ImageLoadError)
#: Errors that stop a run whose input was fine: reported with their message (no traceback) and exit status 1.
RUN_ERRORS: Tuple[Type[BaseException], ...] = (NonFiniteError, )
#: Environment variables that hold a process's rank, by launcher (torchrun, Slurm, Open MPI).
RANK_VARIABLES = ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')
#: Prefix of a ``--cfg-options`` key that is added to the config on purpose.
NEW_KEY_PREFIX = '+'
#: Top-level fields the Runner reads although configs often leave them out (``--cfg-options`` may add them).
RUNNER_FIELDS = frozenset(inspect.signature(Runner.__init__).parameters) - {'self'} | {
    'runner_type', 'model_wrapper_cfg', 'find_unused_parameters', 'compile', 'data_check'}


#: How torch re-raises an exception of a DataLoader worker in the main process (``torch._utils.ExceptionWrapper``).
WORKER_ERROR = re.compile(r'^Caught \w+ (in DataLoader worker process \d+)\.\nOriginal Traceback')


def error_message(error: BaseException) -> str:
    """The message of ``error``; for an error raised in a DataLoader worker, the worker's own message.

    torch re-raises a worker's exception in the main process with a message made of ``Caught X in DataLoader worker
    process N.``, the worker's whole traceback, and only then the original message. Here the original message is
    kept, followed by `` (in DataLoader worker process N)``.
    """
    text = str(error)
    worker = WORKER_ERROR.match(text)
    if worker is None:
        return text
    kind = type(error)
    for name in (f'{kind.__module__}.{kind.__qualname__}', kind.__qualname__):  # builtins are printed unqualified
        start = text.rfind(f'\n{name}: ')
        if start >= 0:
            return f'{text[start + len(name) + 3:].rstrip()} ({worker.group(1)})'
    return text


def tool_name() -> str:
    return osp.basename(sys.argv[0])


def fail(message: str) -> NoReturn:
    """Exit with status 2 and ``<tool>: error: message``, as argparse does for bad arguments."""
    print(f'{tool_name()}: error: {message}', file=sys.stderr)
    sys.exit(USAGE_ERROR_STATUS)


def warn(message: str) -> None:
    """Log a warning once per job: before the Runner exists every process would print it, so only rank 0 does."""
    if is_main_launch_process():
        print_log(message, logger='current', level=logging.WARNING)


def is_main_launch_process() -> bool:
    """Whether this is rank 0 of the job, before the process group exists: from the launcher's environment
    (torchrun's ``RANK``, Slurm's ``SLURM_PROCID``, Open MPI's ``OMPI_COMM_WORLD_RANK``)."""
    for variable in RANK_VARIABLES:
        if variable in os.environ:
            return os.environ[variable] == '0'
    return True


def is_url(path: str) -> bool:
    return '://' in path


def check_config_file(config_path: str) -> None:
    """Raise :class:`ToolInputError` when the config file does not exist, naming similar files of its folder."""
    if osp.isfile(config_path):
        return
    folder = osp.dirname(config_path) or '.'
    hint = ''
    if osp.isdir(folder):
        similar = difflib.get_close_matches(osp.basename(config_path), sorted(os.listdir(folder)), n=3, cutoff=0.5)
        hint = f'; similar files in {folder}: {", ".join(similar)}' if similar else ''
    else:
        hint = f' (the folder {folder} does not exist either)'
    raise ToolInputError(f'config file not found: {config_path}{hint}')


def check_checkpoint_file(checkpoint: str, what: str = 'checkpoint') -> None:
    """Raise :class:`ToolInputError` when a local checkpoint file does not exist, or
    :class:`~brs_detr.fileio.checkpoint.CheckpointReadError` when it is empty or truncated (URLs are checked by the
    loader)."""
    if is_url(checkpoint):
        return
    if not osp.isfile(checkpoint):
        raise ToolInputError(f'{what} file not found: {checkpoint}')
    check_checkpoint_readable(checkpoint)


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
    """Read ``config_path``, apply ``--cfg-options`` (checked by :func:`check_cfg_options`), set the launcher."""
    check_config_file(config_path)
    cfg = Config.fromfile(config_path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(check_cfg_options(cfg, cfg_options))
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

    if 'runner_type' not in cfg:
        return ReliableRunner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options train.py and test.py share: ``--cfg-options``, ``--launcher``, ``--local-rank``."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as xxx=yyy pairs merged into it; a list is '
                        'key="[a,b]" or key=a,b, nested lists/tuples key="[(a,b),(c,d)]" (quotes needed, no '
                        'white space). The key must exist in the config; write +xxx=yyy to add a new key')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_tool_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the arguments and export ``LOCAL_RANK`` for launchers that pass it as an argument."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def run_tool_main(main: Callable[[], Any]) -> NoReturn:
    """Run a tool's ``main``, report bad input in one line, and take the process group down before exiting.

    Exit status: 0 on success; 2 and ``<tool>: error: <message>`` for one of :data:`USER_ERRORS` (no traceback:
    the message says what is wrong; raised in a DataLoader worker, the worker's own message, see
    :func:`error_message`); 1 and the message for one of :data:`RUN_ERRORS` (a NaN loss);
    ``SystemExit``'s code; or 1 after any other exception (its traceback is printed
    first; the exception is dropped so that its frames do not keep the Runner alive). Before exiting, the Runner
    (whose DDP wrapper holds the process group) is released and the group destroyed (see
    :func:`brs_detr.engine.dist.close_process_group`).
    """
    exit_code: Any = 0
    try:
        main()
    except SystemExit as error:
        exit_code = error.code
    except USER_ERRORS as error:
        print(f'{tool_name()}: error: {error_message(error)}', file=sys.stderr)
        exit_code = USAGE_ERROR_STATUS
    except RUN_ERRORS as error:
        print(f'{tool_name()}: error: {error_message(error)}', file=sys.stderr)
        exit_code = 1
    except BaseException:  # noqa: B902  (reported like the interpreter would, then the group is taken down)
        traceback.print_exc()
        exit_code = 1
    close_process_group()
    sys.exit(exit_code)
