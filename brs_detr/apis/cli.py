"""The tools' command line: shared arguments, early input checks, error reports and exit status, shutdown.

Light on purpose (no torch, mmcv or mmdet): every tool builds its parser and parses its arguments with this module
alone, so ``--help`` and bad arguments are answered at once; the heavy imports happen in the tool's ``main`` after
parsing (as in mmdet's tools). The tools' logic is in :mod:`brs_detr.apis.launch`, ``train``, ``test``.

Bad input raises one of :func:`user_errors` anywhere below a tool's ``main``; :func:`run_tool_main` prints
``<tool>: error: <message>`` (as argparse does) and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import errno
import os
import os.path as osp
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence, Tuple, Type

#: Exit status of a tool stopped by bad input (argparse's status for bad arguments), or by an environment it cannot
#: work in (an unwritable or full disk).
USAGE_ERROR_STATUS = 2
#: Exit status of a tool stopped by Ctrl-C (SIGINT), as a shell reports it (128 + 2).
INTERRUPTED_STATUS = 130
#: Environment variable that makes the tools print the full traceback of an error (as ``--debug`` does).
DEBUG_ENV = 'BRS_DETR_DEBUG'
#: ``OSError`` numbers that mean "the file system refuses": reported in one line naming the path, exit status 2.
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, name) for name in ('ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM')
                               if hasattr(errno, name))


class ToolInputError(ValueError):
    """Bad input to a tool (a missing file, an invalid option): reported as one line, exit status 2."""


#: Errors caused by the user's input, as ``(module, class)``: reported by :func:`run_tool_main` with their message
#: and exit status 2. Named, not imported: an error of a class can only be raised once its module has been imported.
USER_ERRORS = (('brs_detr.apis.cli', 'ToolInputError'), ('brs_detr.engine.dist', 'LauncherError'),
               ('brs_detr.fileio.checkpoint', 'UntrustedCheckpointError'),
               ('brs_detr.fileio.checkpoint', 'CheckpointReadError'),
               ('brs_detr.engine.runner.runner', 'CheckpointFitError'),
               ('brs_detr.engine.runner.model_build', 'ComponentBuildError'),
               ('brs_detr.datasets.coco_check', 'DataCheckError'),
               ('brs_detr.datasets.transforms.loading', 'ImageLoadError'),
               ('brs_detr.analysis.detections', 'AnalysisError'),
               ('brs_detr.fileio.output_paths', 'OutputPathError'), ('brs_detr.engine.work_dir', 'WorkDirError'),
               # a checkpoint or backbone of the model zoo that cannot be had (no network, wrong checksum, ...)
               ('brs_detr.zoo.download', 'DownloadError'), ('brs_detr.zoo.index', 'ModelZooError'),
               ('brs_detr.zoo.install', 'ZooInstallError'), ('brs_detr.zoo.convert', 'ConversionError'),
               ('brs_detr.zoo.checkpoint_reader', 'CheckpointReadError'),
               ('brs_detr.models.backbones.timm_backbone', 'TimmUnavailableError'),
               ('brs_detr.analysis.logs', 'LogError'))
#: Errors that stop a run whose input was fine: reported with their message (no traceback) and exit status 1.
RUN_ERRORS = (('brs_detr.engine.hooks.non_finite_loss_hook', 'NonFiniteError'), ('torch', 'OutOfMemoryError'),
              ('builtins', 'MemoryError'),
              # a transform failed on a sample: a wrong argument (named) or a transform's bug (--debug)
              ('brs_detr.datasets.checked_datasets', 'PipelineError'))
#: What a tool adds to its one-line report of an interruption or a full disk (set by the tool once it knows, e.g.
#: the work_dir whose checkpoints are kept).
EXIT_NOTES = {}


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

    if osp.isdir(checkpoint):
        raise ToolInputError(f'{what} {checkpoint} is a folder, not a checkpoint file' +
                             (' (to continue the run in a work_dir: --work-dir DIR --resume)' if what.startswith(
                                 'resume') else ''))
    if not osp.isfile(checkpoint):
        raise ToolInputError(f'{what} file not found: {checkpoint}')
    if checkpoint.endswith(('.py', '.json', '.yaml', '.yml')):
        raise ToolInputError(f'{what} {checkpoint} is a config file, not a checkpoint (the config comes first: '
                             'CONFIG CHECKPOINT)')
    check_checkpoint_readable(checkpoint)


def has_display() -> bool:
    """Whether a window can be opened (always assumed on non-POSIX systems)."""
    if os.name != 'posix' or sys.platform == 'darwin':
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


class CfgOptionsAction(argparse.Action):
    """mmengine's ``--cfg-options`` action (``DictAction``: its value parsing), with bad items refused by argparse
    (``<tool>: error: ...``, exit 2).

    What changed: an item without ``=`` or with unbalanced brackets is an argparse error (mmengine raises a
    ``ValueError`` / ``AssertionError`` from inside argparse: a traceback); a plain value with spaces is kept as
    written (mmengine removes the spaces: ``'a b'`` became ``'ab'``). mmengine is imported only when the option is
    given, so that the tools' ``--help`` stays light.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        from mmengine.config import DictAction

        options = copy.copy(getattr(namespace, self.dest, None) or {})
        for item in values or []:
            key, equals, value = item.partition('=')
            if not equals or not key.strip():
                parser.error(f'{option_string} {item}: expected KEY=VALUE, e.g. train_cfg.max_epochs=2')
            stripped = value.strip()
            if any(c.isspace() for c in stripped) and not stripped.startswith(('[', '(')) and ',' not in stripped:
                options[key] = stripped
                continue
            try:
                options[key] = DictAction._parse_iterable(value)
            except AssertionError:  # mmengine's check of the brackets
                parser.error(f'{option_string} {item}: the brackets of the value are unbalanced')
        setattr(namespace, self.dest, options)


class _DebugAction(argparse.Action):
    """``--debug``: set :data:`DEBUG_ENV` (so that DataLoader workers and child processes see it too)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        os.environ[DEBUG_ENV] = '1'
        setattr(namespace, self.dest, True)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug``: errors are reported with their full traceback (as ``BRS_DETR_DEBUG=1`` does)."""
    parser.add_argument('--debug', action=_DebugAction, nargs=0, default=False,
                        help=f'on an error, print the full traceback before the one-line message (also: {DEBUG_ENV}=1)')


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, '') not in ('', '0')


def add_cfg_options_argument(parser: argparse.ArgumentParser, help_text: Optional[str] = None) -> None:
    """Add ``--cfg-options`` (:class:`CfgOptionsAction`)."""
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='[+]KEY=VALUE',
                        help=help_text or 'override settings of the config, as xxx=yyy pairs merged into it; a list '
                        'is key="[a,b]" or key=a,b, nested lists/tuples key="[(a,b),(c,d)]" (quotes needed). The key '
                        'must exist in the config and the value keep its type; write +xxx=yyy to add a new key')


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options train.py and test.py share: ``--cfg-options``, ``--launcher``, ``--local-rank``, ``--debug``."""
    add_cfg_options_argument(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_argument(parser)


def parse_tool_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the arguments and export ``LOCAL_RANK`` for launchers that pass it as an argument."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def environment_error_message(error: OSError) -> str:
    """One line for an ``OSError`` of :data:`ENVIRONMENT_ERRNOS`: what the file system said and the path."""
    text = error.strerror or str(error)
    if error.filename is not None:
        text += f': {error.filename}'
    return text


def is_environment_error(error: BaseException) -> bool:
    """A refusal of the file system (full disk, read-only, no permission), not a bug."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def _report(error: BaseException) -> int:
    """Print the one-line report of ``error`` (after its traceback with ``--debug``); return the exit status."""
    if debug_requested():
        traceback.print_exception(type(error), error, error.__traceback__)
    tool = tool_name()
    if isinstance(error, KeyboardInterrupt):  # Ctrl-C reaches every process of a job: rank 0 says it
        note = EXIT_NOTES.get('interrupted')
        if is_main_launch_process():
            print(f'{tool}: interrupted (Ctrl-C)' + (f'; {note}' if note else ''), file=sys.stderr)
        return INTERRUPTED_STATUS
    if isinstance(error, user_errors()):
        print(f'{tool}: error: {error_message(error)}', file=sys.stderr)
        return USAGE_ERROR_STATUS
    if is_environment_error(error):
        note = EXIT_NOTES.get('environment')
        print(f'{tool}: error: {environment_error_message(error)}' + (f'; {note}' if note else ''), file=sys.stderr)
        return USAGE_ERROR_STATUS
    if isinstance(error, run_errors()):
        message = error_message(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, MemoryError) or type(error).__name__ == 'OutOfMemoryError':
            message = f'out of memory: {message} (a smaller batch or image size, or fewer DataLoader workers, needs ' \
                      'less)'
        print(f'{tool}: error: {message}', file=sys.stderr)
        return 1
    if not debug_requested():  # a bug: reported like the interpreter would
        traceback.print_exception(type(error), error, error.__traceback__)
    return 1


def run_tool_main(main: Callable[[], Any]) -> NoReturn:
    """Run a tool's ``main``, report errors in one line, and take the process group down before exiting.

    Exit status: ``main``'s return value if it is an integer, else 0 on success; 2 and ``<tool>: error:
    <message>`` for one of :data:`USER_ERRORS` (no traceback: the message says what is wrong; raised in a
    DataLoader worker, the worker's own message, see :func:`error_message`) and for a file system that refuses a
    write (full disk, read-only, no permission: :data:`ENVIRONMENT_ERRNOS`, the message names the path); 130 and
    ``<tool>: interrupted (Ctrl-C)`` on Ctrl-C; 1 and the message for one of :data:`RUN_ERRORS` (a NaN loss, out of
    memory); ``SystemExit``'s code; or 1 after any other exception (a bug: its traceback is printed). With
    ``--debug`` or ``BRS_DETR_DEBUG=1`` every error's traceback is printed before its one line. The exception is
    dropped so that its frames do not keep the Runner alive. The known third-party warnings
    (:mod:`brs_detr.known_warnings`) are not printed. Before exiting, the Runner (whose DDP wrapper holds the
    process group) is released and the group destroyed (see :func:`brs_detr.engine.dist.close_process_group`).
    """
    from brs_detr.known_warnings import ignore_known_warnings
    ignore_known_warnings()  # the third-party stack's known noise
    exit_code: Any = 0
    try:
        returned = main()
        if isinstance(returned, int) and not isinstance(returned, bool):
            exit_code = returned
    except SystemExit as error:
        exit_code = error.code
    except BaseException as error:  # noqa: B902  (reported, then the group is taken down)
        exit_code = _report(error)
    if 'torch.distributed' in sys.modules:  # only then can a process group exist
        from brs_detr.engine.dist import close_process_group
        close_process_group()
    sys.exit(exit_code)
