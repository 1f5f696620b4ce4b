"""Command-line plumbing of the demo tools: user errors end with one line naming the problem, not a traceback."""
from __future__ import annotations

import os.path as osp
import sys
from typing import Callable, NoReturn, Tuple, Type

from brs_detr.utils.checkpoint import UntrustedCheckpointError
from brs_detr.utils.download import DownloadError
from .image_inputs import ImageInputError
from .runtime import DeviceError
from .weights import WeightsMismatchError

#: Errors caused by the user's input; the tools report their message and exit with status 2.
USER_ERRORS: Tuple[Type[BaseException], ...] = (ImageInputError, WeightsMismatchError, DeviceError,
                                                  UntrustedCheckpointError, DownloadError)


def fail(message: str) -> NoReturn:
    """Exit with status 2 and ``<tool>: error: message``, as argparse does for bad arguments."""
    print(f'{osp.basename(sys.argv[0])}: error: {message}', file=sys.stderr)
    sys.exit(2)


def check_file(path: str, what: str) -> None:
    """Fail clearly when a local file does not exist (URLs are checked when they are downloaded)."""
    if '://' not in path and not osp.isfile(path):
        fail(f'{what} not found: {path}')


def run_cli(main: Callable[[], None]) -> None:
    """Run a tool's ``main``; a user error (:data:`USER_ERRORS`) ends with its message and exit status 2."""
    try:
        main()
    except USER_ERRORS as error:
        fail(str(error))
