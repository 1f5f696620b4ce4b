"""The tools' command line: shared arguments, early input checks, error reports and exit status, shutdown.

Light on purpose (no torch, mmcv or mmdet): every tool builds its parser and parses its arguments with this module
alone, so ``--help`` and bad arguments are answered at once; the heavy imports happen in the tool's ``main`` after
parsing (as in mmdet's tools). The tools' logic is in :mod:`brs_detr.apis.launch`, ``train``, ``test``.

Bad input raises one of :func:`user_errors` anywhere below a tool's ``main``; :func:`run_tool_main` prints
``<tool>: error: <message>`` (as argparse does) and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import os
import os.path as osp
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence, Tuple, Type

from mmengine.config import DictAction

#: Exit status of a tool stopped by bad input (argparse's status for bad arguments).
USAGE_ERROR_STATUS = 2


class ToolInputError(ValueError):
    """Bad input to a tool (a missing file, an invalid option): reported as one line, exit status 2."""


#: Errors caused by the user's input, as ``(module, class)``: reported by :func:`run_tool_main` with their message
#: and exit status 2. Named, not imported: an error of a class can only be raised once its module has been imported.
USER_ERRORS = (('brs_detr.apis.cli', 'ToolInputError'), ('brs_detr.engine.dist', 'LauncherError'),
               ('brs_detr.fileio.checkpoint', 'UntrustedCheckpointError'),
               ('brs_detr.fileio.checkpoint', 'CheckpointReadError'),
               ('brs_detr.engine.runner.runner', 'CheckpointFitError'),
               ('brs_detr.datasets.coco_check', 'DataCheckError'),
               ('brs_detr.datasets.transforms.loading', 'ImageLoadError'),
               ('brs_detr.analysis.detections', 'AnalysisError'))
#: Errors that stop a run whose input was fine: reported with their message (no traceback) and exit status 1.
RUN_ERRORS = (('brs_detr.engine.hooks.non_finite_loss_hook', 'NonFiniteError'), )


def _loaded_classes(names: Sequence[Tuple[str, str]]) -> Tuple[Type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)


def user_errors() -> Tuple[Type[BaseException], ...]:
    """The classes of :data:`USER_ERRORS` whose modules are imported (only those can have been raised)."""
    return _loaded_classes(USER_ERRORS)


def run_errors() -> Tuple[Type[BaseException], ...]:
    """The classes of :data:`RUN_ERRORS` whose modules are imported."""
    return _loaded_classes(RUN_ERRORS)

#: Environment variables that hold a process's rank, by launcher (torchrun, Slurm, Open MPI).
RANK_VARIABLES = ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')

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
    from brs_detr.fileio.checkpoint import check_checkpoint_readable

    if not osp.isfile(checkpoint):
        raise ToolInputError(f'{what} file not found: {checkpoint}')
    check_checkpoint_readable(checkpoint)


def has_display() -> bool:
    """Whether a window can be opened (always assumed on non-POSIX systems)."""
    if os.name != 'posix' or sys.platform == 'darwin':
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


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
    first; the exception is dropped so that its frames do not keep the Runner alive). The known third-party warnings
    (:mod:`brs_detr.known_warnings`) are not printed. Before exiting, the Runner
    (whose DDP wrapper holds the process group) is released and the group destroyed (see
    :func:`brs_detr.engine.dist.close_process_group`).
    """
    from brs_detr.known_warnings import ignore_known_warnings
    ignore_known_warnings()  # the third-party stack's known noise
    exit_code: Any = 0
    try:
        main()
    except SystemExit as error:
        exit_code = error.code
    except BaseException as error:  # noqa: B902  (reported, then the group is taken down)
        if isinstance(error, user_errors()):
            print(f'{tool_name()}: error: {error_message(error)}', file=sys.stderr)
            exit_code = USAGE_ERROR_STATUS
        elif isinstance(error, run_errors()):
            print(f'{tool_name()}: error: {error_message(error)}', file=sys.stderr)
            exit_code = 1
        else:  # reported like the interpreter would
            traceback.print_exc()
            exit_code = 1
    if 'torch.distributed' in sys.modules:  # only then can a process group exist
        from brs_detr.engine.dist import close_process_group
        close_process_group()
    sys.exit(exit_code)
