"""Safe loading of local checkpoint files under torch >= 2.6 (mmengine 0.10.7 never passes ``weights_only``).

torch >= 2.6 loads with ``weights_only=True`` by default, which rejects the Python objects the Runner's own
checkpoints hold (``HistoryBuffer``, numpy scalars in ``meta``), so they could not be resumed. mmengine's local
loader (``CheckpointLoader`` prefix ``''``) is replaced by :func:`load_from_local_safe`: ``weights_only=True``
first; only when torch rejects pickled objects *and* the file is trusted (:mod:`brs_detr.fileio.trust`) is it
loaded with ``weights_only=False``. An untrusted file raises :class:`UntrustedCheckpointError`, a truncated one
:class:`CheckpointReadError`.

:func:`install_local_loader` registers it; :func:`brs_detr.register_all_modules` calls it (and ``import brs_detr``
does as soon as ``mmengine.runner.checkpoint`` is imported). The checksum-verified ``http(s)://`` and
``torchvision://`` loaders belong to the model zoo (:mod:`brs_detr.zoo.loaders`); the atomic writing of the
Runner's checkpoints is :mod:`brs_detr.fileio.backend`.
"""
import logging
import os.path as osp
import pickle
import re
import zipfile
from typing import Any, Callable, Union

from mmengine.logging import print_log

from .trust import MANIFEST_NAME, TRUSTED_DIRS_ENV, trust_reason

__all__ = [
    'UntrustedCheckpointError', 'CheckpointReadError', 'check_checkpoint_readable', 'safe_torch_load',
    'load_from_local_safe', 'install_local_loader'
]

#: What :func:`torch.load` accepts as ``map_location`` (a ``torch.device`` too; torch is imported when loading).
MapLocation = Union[None, str, Any, Callable, dict]

_WEIGHTS_ONLY_FAILURE = 'Weights only load failed'
#: First bytes of a zip archive (torch >= 1.6 saves checkpoints as zip archives).
_ZIP_MAGIC = b'PK\x03\x04'
_REJECTION_DETAIL = re.compile(r'(Unsupported global: GLOBAL \S+|Trying to load unsupported GLOBAL \S+|'
                               r'Unsupported operand \d+)')


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs full unpickling (code execution) but its file is not trusted."""


class CheckpointReadError(RuntimeError):
    """A checkpoint file cannot be read: empty, truncated or corrupt."""


def _read_error(path: str, detail: object) -> CheckpointReadError:
    size = osp.getsize(path) if osp.isfile(path) else 0
    return CheckpointReadError(f'Cannot read checkpoint {path} ({size} bytes): {detail}. The file is truncated or '
                               f'corrupt (an interrupted copy, download or save?); it was left as it is.')


def check_checkpoint_readable(path: str) -> None:
    """Cheap check that a local checkpoint file is complete, without loading it.

    torch's zip format keeps its directory at the end of the file: a truncated file has none, which
    :func:`zipfile.is_zipfile` sees from the last bytes alone. Legacy (pre-1.6) pickles are only checked for being
    non-empty.

    Raises:
        CheckpointReadError: The file is empty, or a zip archive whose end is missing.
    """
    with open(path, 'rb') as file:
        head = file.read(len(_ZIP_MAGIC))
    if not head:
        raise _read_error(path, 'the file is empty')
    if head == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        raise _read_error(path, 'its zip directory is missing')


def _rejection_detail(error: BaseException) -> str:
    match = _REJECTION_DETAIL.search(str(error))
    return match.group(1) if match else 'it contains pickled Python objects'


def _untrusted_message(path: str, detail: str) -> str:
    return (
        f'Refusing to load checkpoint {path}: torch.load(weights_only=True) rejects it ({detail}), and loading it '
        f'with weights_only=False would run arbitrary code stored in the file, which brs_detr only does for '
        f'trusted files. This file is not trusted: it is not under a trusted directory, not registered with '
        f'brs_detr.fileio.trust_file(), and has no valid verified entry in a {MANIFEST_NAME} next to it.\n'
        f'To proceed:\n'
        f'  * if it is a model-zoo checkpoint, download it with python tools/download_checkpoint.py NAME, which '
        f'verifies its checksum and trusts it;\n'
        f'  * if you know where the file comes from, trust it explicitly: '
        f'python tools/download_checkpoint.py --trust-file {path}  (records its sha256), '
        f'or export {TRUSTED_DIRS_ENV}={osp.dirname(path)}  (trusts that directory), '
        f'or brs_detr.fileio.trust_file(path) in Python;\n'
        f'  * better still, convert it once to a plain state dict (tensors only), which then loads anywhere without '
        f'trust: python tools/convert_checkpoint.py {path} CONVERTED.pth --trust  (for the mmdet 2.x '
        f'Co-DETR/BRS-DETR releases; see --help).')


def safe_torch_load(path: str, map_location: MapLocation = None) -> Any:
    """``torch.load`` that unpickles with code execution only files that are trusted.

    Args:
        path: Local checkpoint file.
        map_location: As in :func:`torch.load`.

    Returns:
        The loaded object.

    Raises:
        UntrustedCheckpointError: ``weights_only=True`` rejects the file and it is not trusted.
        CheckpointReadError: The file is truncated or corrupt.
    """
    import torch
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if _WEIGHTS_ONLY_FAILURE not in str(error):
            raise _read_error(path, error) from error
        detail = _rejection_detail(error)
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:  # truncated or corrupt zip archive / pickle
        raise _read_error(path, error) from error
    reason = trust_reason(path)
    if reason is None:
        raise UntrustedCheckpointError(_untrusted_message(path, detail))
    print_log(f'{path}: weights_only=True rejected it ({detail}); loading it with weights_only=False '
              f'because it is trusted ({reason})', logger='current', level=logging.INFO)
    return torch.load(path, map_location=map_location, weights_only=False)


def load_from_local_safe(filename: str, map_location: MapLocation = None) -> Any:
    """CheckpointLoader scheme ``''`` (local paths): see :func:`safe_torch_load`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location)


def install_local_loader() -> None:
    """Make :func:`load_from_local_safe` mmengine's loader of local paths (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader  # not mmengine.runner: it may be half-imported here
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
