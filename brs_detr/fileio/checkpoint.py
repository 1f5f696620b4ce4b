"""Safe checkpoint loading under torch >= 2.6 and atomic checkpoint writing for mmengine 0.10.7.

torch >= 2.6 loads with ``weights_only=True`` by default; mmengine 0.10.7 never passes
``weights_only``, so the Runner's own checkpoints (``HistoryBuffer``, numpy scalars in ``meta``)
cannot be resumed, while its http loader unpickles downloads with ``weights_only=False`` and no
checksum. :func:`install` (run on ``import brs_detr``) replaces mmengine's loaders:

* local files (``CheckpointLoader`` prefix ``''``): ``weights_only=True`` first; only when torch
  rejects pickled objects *and* the file is trusted (:mod:`brs_detr.fileio.trust`) is it loaded
  with ``weights_only=False``. An untrusted file raises :class:`UntrustedCheckpointError`.
* ``http://`` / ``https://``: downloaded into torch.hub's cache with a checksum (the model-zoo
  index's full sha256, else the ``-<sha256 prefix>.pth`` in the file name); a verified file is
  recorded as trusted, an unverifiable one is only ever loaded with ``weights_only=True``.
  ``open-mmlab://`` and ``mmcls://`` reach it too (they call mmengine's module-level
  ``load_from_http``, which is rebound).
* ``torchvision://NAME`` / ``modelzoo://NAME``: mapped to torchvision's ImageNet URLs without
  importing torchvision (the verified http path then applies to them as to any URL).
* mmengine's ``'local'`` file backend becomes :class:`~brs_detr.fileio.atomic_io.AtomicLocalBackend`,
  so ``Runner.save_checkpoint`` writes ``epoch_N.pth`` atomically and records it as trusted.
"""
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Union
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log

from .atomic_io import AtomicLocalBackend
from brs_detr.zoo.download import ChecksumError, download_file
from brs_detr.zoo.index import expected_checksum, find_by_url
from .trust import (MANIFEST_NAME, TRUSTED_DIRS_ENV, is_trusted, record_trusted_file, sha256_file, trust_directory,
                    trust_file, trust_reason)

__all__ = [
    'UntrustedCheckpointError', 'CheckpointReadError', 'check_checkpoint_readable', 'StateDictFit', 'state_dict_fit',
    'safe_torch_load', 'load_from_local_safe', 'load_from_http_safe', 'load_from_torchvision_safe', 'install',
    'trust_directory', 'trust_file', 'is_trusted', 'TORCHVISION_URLS'
]

MapLocation = Union[None, str, torch.device, Callable, dict]

#: torchvision's ``IMAGENET1K_V1`` weights of the ResNets mmdet configs name as ``torchvision://NAME``.
TORCHVISION_URLS = {
    'resnet18': 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
    'resnet34': 'https://download.pytorch.org/models/resnet34-b627a593.pth',
    'resnet50': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
    'resnet101': 'https://download.pytorch.org/models/resnet101-63fe2227.pth',
    'resnet152': 'https://download.pytorch.org/models/resnet152-394f9c45.pth',
}
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


def _local_rank() -> int:
    return int(os.environ.get('LOCAL_RANK', get_dist_info()[0]))


def _cache_dir(model_dir: Optional[str]) -> str:
    return model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')


def fetch_verified(url: str, model_dir: Optional[str] = None, progress: bool = False) -> str:
    """Make sure ``url`` is in the download cache and verified if it can be; return the local path.

    A file is verified against the model-zoo index's full sha256 for ``url`` or, failing that, the
    hash prefix in its file name; a verified file is recorded in the cache's trust manifest. A
    cached file that fails verification raises :class:`ChecksumError` (it is not silently used).
    """
    entry = find_by_url(url)
    expected = expected_checksum(entry, url)
    file_name = entry['file_name'] if entry else osp.basename(urlparse(url).path)
    cached = osp.join(_cache_dir(model_dir), file_name)
    if not osp.isfile(cached):
        print_log(f'Downloading {url} to {cached}', logger='current')
        download_file(url, cached, sha256=expected['sha256'], hash_prefix=expected['hash_prefix'],
                      progress=progress, resume=False)
    if expected['sha256'] is None and expected['hash_prefix'] is None:
        return cached  # nothing to verify against: stays untrusted (weights_only=True only)
    if is_trusted(cached):
        return cached
    got = sha256_file(cached)
    ok = got == expected['sha256'] if expected['sha256'] else got.startswith(expected['hash_prefix'])
    if not ok:
        want = expected['sha256'] or f'{expected["hash_prefix"]}...'
        raise ChecksumError(f'cached file {cached} (from {url}) has sha256 {got}, expected {want}; delete it and '
                            f'load again to re-download')
    try:
        record_trusted_file(cached, sha256=got, source=url, url=url,
                            verified_by='sha256' if expected['sha256'] else 'file-name hash prefix')
    except OSError as error:  # read-only cache or home: trust it for this process only
        print_log(f'Could not record {cached} as verified ({error}); trusting it for this process only',
                  logger='current', level=logging.WARNING)
        trust_file(cached, sha256=got)
    return cached


def load_from_http_safe(filename: str,
                        map_location: MapLocation = None,
                        model_dir: Optional[str] = None,
                        progress: bool = False) -> Any:
    """CheckpointLoader scheme ``http(s)://``: checksum-verified download, then :func:`safe_torch_load`.

    In distributed runs local rank 0 of each node downloads while the others wait at a barrier.
    """
    rank, world_size = get_dist_info()
    cached = None
    if _local_rank() == 0:
        cached = fetch_verified(filename, model_dir, progress=progress and rank == 0)
    if world_size > 1:
        torch.distributed.barrier()
        if cached is None:
            cached = fetch_verified(filename, model_dir)
    return safe_torch_load(cached, map_location)


def load_from_torchvision_safe(filename: str, map_location: MapLocation = None) -> Any:
    """CheckpointLoader schemes ``torchvision://`` and ``modelzoo://`` without importing torchvision."""
    name = filename.split('://', 1)[1]
    url = TORCHVISION_URLS.get(name)
    if url is None:
        try:  # other torchvision models, where torchvision is importable
            from mmengine.runner.checkpoint import get_torchvision_models
            url = get_torchvision_models().get(name)
        except Exception:  # torchvision missing or broken (a CUDA build on a CPU torch)
            url = None
    if url is None:
        raise KeyError(f'{filename}: unknown torchvision model "{name}" (known without torchvision: '
                       f'{", ".join(TORCHVISION_URLS)}); pass an http(s) URL or a local file instead')
    return load_from_http_safe(url, map_location=map_location)


def _install_loaders() -> None:
    import mmengine.runner.checkpoint as mmengine_checkpoint
    from mmengine.runner import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http_safe, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('modelzoo://', 'torchvision://'), loader=load_from_torchvision_safe, force=True)
    # open-mmlab:// and mmcls:// call the module-level function directly.
    mmengine_checkpoint.load_from_http = load_from_http_safe


def _install_backend() -> None:
    from mmengine.fileio import FileClient, register_backend
    from mmengine.fileio import io as mmengine_io
    from mmengine.fileio.backends import LocalBackend
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    FileClient.register_backend('disk', AtomicLocalBackend, force=True)
    # Singleton instances of the old class created before this import would bypass the new one.
    for key, backend in list(mmengine_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            mmengine_io.backend_instances.pop(key)


def install() -> None:
    """Install the safe loaders and the atomic local backend into mmengine.

    Idempotent: every call (re-)registers the same functions and class with ``force=True``.
    """
    _install_loaders()
    _install_backend()


# ----------------------------------------------------------------------------- does a state dict fit a model?
#: How many keys of each kind :meth:`StateDictFit.describe` lists.
MAX_KEYS_LISTED = 5


@dataclass
class StateDictFit:
    """How a checkpoint's state dict fits a model's: what would load, what would not.

    Attributes:
        num_model_keys: Entries of the model's state dict.
        missing: Model keys the checkpoint lacks (they keep their initial values).
        unexpected: Checkpoint keys the model does not have (ignored).
        reshaped: ``'key: checkpoint (shape) vs model (shape)'`` for keys in both with different shapes (not
            loaded).
    """

    num_model_keys: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    reshaped: List[str] = field(default_factory=list)

    @property
    def num_loaded(self) -> int:
        """Model entries the checkpoint provides with the right shape."""
        return self.num_model_keys - len(self.missing) - len(self.reshaped)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    def describe(self, limit: int = MAX_KEYS_LISTED) -> str:
        """One line per kind of difference, each listing its first ``limit`` keys."""

        def listed(keys: List[str]) -> str:
            return ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')

        parts = [f'{self.num_loaded} of the model\'s {self.num_model_keys} entries fit']
        for keys, what in ((self.missing, 'missing from the checkpoint'),
                           (self.reshaped, 'with another shape in the checkpoint'),
                           (self.unexpected, 'in the checkpoint but not in the model')):
            if keys:
                parts.append(f'{len(keys)} {what}: {listed(keys)}')
        return '; '.join(parts)


def state_dict_fit(model_state: Mapping[str, Any], checkpoint_state: Mapping[str, Any]) -> StateDictFit:
    """Compare names and shapes of a checkpoint's state dict with a model's (``model.state_dict()``)."""
    fit = StateDictFit(num_model_keys=len(model_state))
    for key, value in model_state.items():
        if key not in checkpoint_state:
            fit.missing.append(key)
            continue
        theirs = getattr(checkpoint_state[key], 'shape', None)
        if theirs is not None and tuple(theirs) != tuple(value.shape):
            fit.reshaped.append(f'{key}: checkpoint {tuple(theirs)} vs model {tuple(value.shape)}')
    fit.unexpected = [key for key in checkpoint_state if key not in model_state]
    return fit
