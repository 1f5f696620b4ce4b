"""torchrun (``torch.distributed.run``) for ``tools/dist_train.sh`` and ``tools/dist_test.sh``, with one-line failures.

torchrun answers any failing worker with its own report: a ``ChildFailedError`` traceback, a table of every rank's
exit code and log lines about the other ranks it terminated, printed after the worker's own one-line message
(``train.py: error: ...``), and exit status 1 whatever the worker's status was. This launcher runs the same
``torch.distributed.run`` and, when a worker fails, exits with that worker's status (2 for bad input, 1 for a failed
run, 130 for Ctrl-C, 128 + N for a signal N) and adds one line only when the worker could not say why itself (killed
by a signal, or another status). ``--debug`` / ``BRS_DETR_DEBUG=1`` keep torchrun's own report.

Usage: ``python -m brs_detr.apis.dist_launch [torchrun options] SCRIPT [script arguments]``.
"""
from __future__ import annotations

import logging
import os.path as osp
import signal
import sys
from typing import Optional, Sequence

from .cli import INTERRUPTED_STATUS, USAGE_ERROR_STATUS, debug_requested

#: Worker exit statuses whose cause the worker printed itself (run_tool_main's statuses).
SELF_REPORTED_STATUSES = (1, USAGE_ERROR_STATUS, INTERRUPTED_STATUS)
#: torchrun's loggers that report the failure again (terminating the other ranks, the failed rank's status).
ELASTIC_LOGGER = 'torch.distributed.elastic'


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f'signal {number}'


def failure_status(rank: int, exitcode: int, pid: Optional[int], script: str) -> int:
    """The exit status for a worker that ended with ``exitcode`` (negative: killed by that signal); prints one line
    unless the worker reported the failure itself."""
    name = osp.basename(script)
    if exitcode < 0:
        print(f'{name}: rank {rank} (pid {pid}) was killed by {_signal_name(-exitcode)}', file=sys.stderr)
        return 128 - exitcode
    if exitcode not in SELF_REPORTED_STATUSES:
        print(f'{name}: rank {rank} (pid {pid}) ended with exit status {exitcode}; its output is above',
              file=sys.stderr)
    return exitcode


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if not debug_requested():
        logging.getLogger(ELASTIC_LOGGER).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as error:
        if debug_requested():
            raise
        rank, failure = error.get_first_failure()
        return failure_status(rank, failure.exitcode, failure.pid, args.training_script)
    except SignalException as error:  # Ctrl-C or a kill of the launcher: the workers were sent the same signal
        if debug_requested():
            raise
        print(f'{osp.basename(args.training_script)}: interrupted ({_signal_name(int(error.sigval))})',
              file=sys.stderr)
        return 128 + int(error.sigval)
    return 0


if __name__ == '__main__':
    sys.exit(main())
