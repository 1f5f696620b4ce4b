"""mmengine checkpoint loaders for URLs that verify what they download against the model zoo.

mmengine's http loader unpickles downloads with no checksum. :func:`install_http_loaders` replaces it:

* ``http://`` / ``https://``: downloaded into torch.hub's cache with a checksum (the model-zoo index's full sha256,
  else the ``-<sha256 prefix>.pth`` in the file name); a verified file is recorded as trusted, an unverifiable one
  is only ever loaded with ``weights_only=True`` (:func:`brs_detr.fileio.checkpoint.safe_torch_load`).
  ``open-mmlab://`` and ``mmcls://`` reach it too (they call mmengine's module-level ``load_from_http``, which is
  rebound).
* ``torchvision://NAME`` / ``modelzoo://NAME``: mapped to torchvision's ImageNet URLs without importing
  torchvision (the verified http path then applies to them as to any URL).

:func:`brs_detr.register_all_modules` installs them (and ``import brs_detr`` does as soon as
``mmengine.runner.checkpoint`` is imported).
"""
import logging
import os
import os.path as osp
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log

from brs_detr.fileio.checkpoint import MapLocation, safe_torch_load
from brs_detr.fileio.trust import is_trusted, record_trusted_file, sha256_file, trust_file
from .download import ChecksumError, download_file
from .index import expected_checksum, find_by_url

__all__ = ['TORCHVISION_URLS', 'fetch_verified', 'load_from_http_safe', 'load_from_torchvision_safe',
           'install_http_loaders']

#: torchvision's ``IMAGENET1K_V1`` weights of the ResNets mmdet configs name as ``torchvision://NAME``.
TORCHVISION_URLS = {
    'resnet18': 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
    'resnet34': 'https://download.pytorch.org/models/resnet34-b627a593.pth',
    'resnet50': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
    'resnet101': 'https://download.pytorch.org/models/resnet101-63fe2227.pth',
    'resnet152': 'https://download.pytorch.org/models/resnet152-394f9c45.pth',
}


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


def install_http_loaders() -> None:
    """Make the verified loaders mmengine's loaders of URLs and ``torchvision://`` names (idempotent)."""
    import mmengine.runner.checkpoint as mmengine_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader  # not mmengine.runner: it may be half-imported here
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http_safe, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('modelzoo://', 'torchvision://'), loader=load_from_torchvision_safe, force=True)
    # open-mmlab:// and mmcls:// call the module-level function directly.
    mmengine_checkpoint.load_from_http = load_from_http_safe
