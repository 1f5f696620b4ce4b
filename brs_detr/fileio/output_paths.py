"""Checks that an output location can be written, made before the work that fills it.

``tools/test.py --out`` used to fail only after the whole evaluation, ``demo/image_demo.py --out-dir`` after the model
was built, a work_dir that is a regular file or on a read-only file system with a traceback. These checks try what
the write will need (a file created in the directory that will hold the output, or in its nearest existing parent
when it is still to be created) and name the path and the reason.
"""
import errno
import os
import os.path as osp
import tempfile
from typing import Dict, Optional

#: Prefix of the probe file created (and removed at once) to test that a directory can be written.
PROBE_PREFIX = '.brs_detr-write-test-'
_REASONS = {errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
            errno.EPERM: 'permission denied', errno.ENOSPC: 'no space left on the device'}
if hasattr(errno, 'EDQUOT'):
    _REASONS[errno.EDQUOT] = 'disk quota exceeded'


class OutputPathError(ValueError):
    """An output path cannot be written: the message names the option, the path and why."""


def _reason(error: OSError) -> str:
    return _REASONS.get(error.errno, error.strerror or str(error))


def writable_problem(directory: str) -> Optional[str]:
    """Why no file can be created in the existing ``directory`` (``None``: one can)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=directory)
    except OSError as error:
        return _reason(error)
    os.close(fd)
    os.remove(probe)
    return None


def _nearest_existing(path: str) -> str:
    while not osp.lexists(path):
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(path: str, option: str, create: bool = False) -> str:
    """Check that ``path`` is, or can be created as, a directory in which files can be written.

    Args:
        path: The directory (``~`` is expanded).
        option: How the user gave it (``--out-dir``), for the message.
        create: Create it (with its parents) once the check passed.

    Returns:
        The absolute path.

    Raises:
        OutputPathError: ``path`` (or a parent) is a regular file, or its nearest existing folder is read-only,
            not writable for this user or full.
    """
    full = osp.abspath(osp.expanduser(path))
    if osp.exists(full) and not osp.isdir(full):
        raise OutputPathError(f'{option} {path} is a regular file, not a directory')
    existing = _nearest_existing(full)
    if not osp.isdir(existing):
        raise OutputPathError(f'{option} {path}: {existing} is a regular file, so no folder can be created under it')
    problem = writable_problem(existing)
    if problem is not None:
        where = '' if existing == full else f' (the nearest existing folder {existing}, where it would be created)'
        raise OutputPathError(f'{option} {path}: cannot write there{where}: {problem}')
    if create:
        try:
            os.makedirs(full, exist_ok=True)
        except OSError as error:
            raise OutputPathError(f'{option} {path}: cannot create the folder: {_reason(error)}') from error
    return full


def check_output_file(path: str, option: str) -> str:
    """Check that the file ``path`` can be written (created or replaced) in its directory.

    Returns:
        The absolute path.

    Raises:
        OutputPathError: ``path`` is a directory, or its directory cannot hold it (see :func:`check_output_dir`).
    """
    full = osp.abspath(osp.expanduser(path))
    if osp.isdir(full):
        raise OutputPathError(f'{option} {path} is a directory; give a file name')
    check_output_dir(osp.dirname(full), f'{option} {path}: its folder')
    return full


def check_not_an_input_folder(path: str, option: str, input_folders: Dict[str, str], inside: bool = True) -> None:
    """Refuse an output folder of drawings that is a folder of input images (or, with ``inside``, lies in one): the
    drawings would replace the images of the same name (``browse_dataset.py --output-dir data/coco/train2017``
    overwrote the training images) and mix with the data set.

    Args:
        path: The output folder as given.
        option: How the user gave it (``--output-dir``), for the message.
        input_folders: What reads each folder (``train_dataloader.dataset``, ``the input images``) -> the folder.
        inside: Also refuse a folder inside an input folder.

    Raises:
        OutputPathError: Naming the option, the folder and what reads it.
    """
    full = osp.realpath(osp.expanduser(path))
    for reader, folder in input_folders.items():
        inputs = osp.realpath(osp.expanduser(folder))
        if full == inputs or (inside and full.startswith(inputs.rstrip(os.sep) + os.sep)):
            where, effect = (('is', 'would replace the images of the same name') if full == inputs else
                             ('is inside', 'would be written into the data set'))
            raise OutputPathError(f'{option} {path} {where} the image folder of {reader} ({folder}): the drawings '
                                  f'{effect}; choose a folder outside the images')
