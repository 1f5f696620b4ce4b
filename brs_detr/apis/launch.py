"""What ``tools/train.py`` and ``tools/test.py`` share: arguments, config loading, errors and exit status, shutdown.

The tools only parse their arguments and call :func:`brs_detr.apis.train.train` / :func:`brs_detr.apis.test.test`
through :func:`run_tool_main`. Bad input raises one of :data:`USER_ERRORS` anywhere below; :func:`run_tool_main`
prints ``<tool>: error: <message>`` (as argparse does) and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence, Tuple, Type

from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from brs_detr.engine.dist import LauncherError, close_process_group
from brs_detr.utils.checkpoint import UntrustedCheckpointError

#: Marker file written by mmengine's CheckpointHook into every work_dir.
LAST_CHECKPOINT_MARKER = 'last_checkpoint'
#: Exit status of a tool stopped by bad input (argparse's status for bad arguments).
USAGE_ERROR_STATUS = 2


class ToolInputError(ValueError):
    """Bad input to a tool (a missing file, an invalid option): reported as one line, exit status 2."""


#: Errors caused by the user's input: reported by :func:`run_tool_main` with their message and exit status 2.
USER_ERRORS: Tuple[Type[BaseException], ...] = (ToolInputError, LauncherError, UntrustedCheckpointError)


def tool_name() -> str:
    return osp.basename(sys.argv[0])


def fail(message: str) -> NoReturn:
    """Exit with status 2 and ``<tool>: error: message``, as argparse does for bad arguments."""
    print(f'{tool_name()}: error: {message}', file=sys.stderr)
    sys.exit(USAGE_ERROR_STATUS)


def warn(message: str) -> None:
    """Log a warning once per job: before the Runner exists every process would print it, so only rank 0 does."""
    if os.environ.get('RANK', '0') == '0':
        print_log(message, logger='current', level=logging.WARNING)


def is_url(path: str) -> bool:
    return '://' in path


def check_config_file(config_path: str) -> None:
    """Raise :class:`ToolInputError` when the config file does not exist."""
    if not osp.isfile(config_path):
        raise ToolInputError(f'config file not found: {config_path}')


def check_checkpoint_file(checkpoint: str, what: str = 'checkpoint') -> None:
    """Raise :class:`ToolInputError` when a local checkpoint file does not exist (URLs are checked by the loader)."""
    if not is_url(checkpoint) and not osp.isfile(checkpoint):
        raise ToolInputError(f'{what} file not found: {checkpoint}')


def load_config(config_path: str, cfg_options: Optional[dict], launcher: str) -> Config:
    """Read ``config_path``, apply ``--cfg-options`` and set the launcher; a missing file fails clearly."""
    check_config_file(config_path)
    cfg = Config.fromfile(config_path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """work_dir priority, as in mmdet: CLI > ``work_dir`` in the config > ./work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def is_runner_work_dir(path: str) -> bool:
    """Whether ``path`` is a work_dir written by an mmengine Runner (its CheckpointHook's ``last_checkpoint``)."""
    return osp.isfile(osp.join(path, LAST_CHECKPOINT_MARKER))


def trust_checkpoint_dir(checkpoint: str) -> None:
    """Trust the directory of a local ``checkpoint`` only if it is a Runner work_dir (a run of ours)."""
    from brs_detr.utils.trust import trust_directory
    if is_url(checkpoint):
        return
    ckpt_dir = osp.dirname(osp.abspath(checkpoint))
    if is_runner_work_dir(ckpt_dir):
        trust_directory(ckpt_dir)


def build_runner(cfg: Config):
    """Build the Runner named by ``runner_type`` (default: mmengine's Runner)."""
    from mmengine.runner import Runner

    from mmdet.registry import RUNNERS

    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options train.py and test.py share: ``--cfg-options``, ``--launcher``, ``--local-rank``."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as xxx=yyy pairs merged into it; a list is '
                        'key="[a,b]" or key=a,b, nested lists/tuples key="[(a,b),(c,d)]" (quotes needed, no '
                        'white space)')
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
    the message says what is wrong); ``SystemExit``'s code; or 1 after any other exception (its traceback is printed
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
        print(f'{tool_name()}: error: {error}', file=sys.stderr)
        exit_code = USAGE_ERROR_STATUS
    except BaseException:  # noqa: B902  (reported like the interpreter would, then the group is taken down)
        traceback.print_exc()
        exit_code = 1
    close_process_group()
    sys.exit(exit_code)
