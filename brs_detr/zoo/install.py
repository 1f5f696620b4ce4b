"""Install a model-zoo entry: download (or find) the published file, verify it, convert it, check it.

For a detector entry ``NAME`` and a destination ``DEST`` (default ``checkpoints/``):

1. the published file is ``DEST/original/<file_name>``: downloaded when missing (resumed from
   ``<file>.partial``), or taken as it is when a user placed it there by hand;
2. it is verified: against the index's ``sha256`` when there is one, else against the sha256 recorded on its
   first download (:mod:`brs_detr.zoo.known_hashes`), else against a torch.hub hash prefix in its name; a
   file seen for the first time gets its sha256 recorded. A file that fails is moved aside
   (``*.rejected``) and never loaded; an HTML page or anything else that is not a checkpoint (PyTorch or
   safetensors) is treated the same way;
3. it is converted for the entry's config and loaded strictly into the model built from that config
   (:mod:`brs_detr.zoo.convert`), and written atomically to ``DEST/<NAME>.pth``: the file to pass to
   ``tools/test.py CONFIG DEST/<NAME>.pth``. Its sha256 is recorded too; a later run checks both files
   and converts again only when the converted one is missing or changed.

Pretrained entries (the ImageNet backbones and the COCO model the configs start from) are downloaded into
torch.hub's cache, where the configs' ``init_cfg`` / ``load_from`` URLs find them (useful on machines without
internet access); they need no conversion.
"""
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import IO, Callable, Dict, Optional

from brs_detr.fileio.file_lock import file_lock, lock_path_for
from brs_detr.fileio.trust import brs_detr_home, record_trusted_file, sha256_file
from . import known_hashes
from .download import ChecksumError, DiskFullError, DownloadError, download_file, format_bytes, move_aside
from .index import (REPO_ROOT, STATUS_MANUAL, STATUS_NOT_RELEASED, config_path, entry_page, entry_paths, entry_status,
                    entry_url, expected_checksum)

#: Default destination of detector checkpoints.
DEFAULT_DEST = osp.join(REPO_ROOT, 'checkpoints')
TOOL_COMMAND = 'python tools/download_checkpoint.py'


class ZooInstallError(RuntimeError):
    """An entry cannot be installed; the message says why and what to do."""


@dataclass
class InstallResult:
    """What :func:`install_entry` left on disk."""
    name: str
    original: str
    sha256: str
    verified_by: str
    converted: Optional[str] = None
    converted_sha256: Optional[str] = None


@dataclass
class InstallOptions:
    """How :func:`install_entry` works.

    Attributes:
        dest: Directory of detector checkpoints.
        url: Download from this URL instead of the entry's (mirrors, local copies); checksums still apply.
        sha256: Expected sha256 of the published file (overrides the index and the recorded value).
        force: Download and convert again even if the files exist; a new first-use record is made.
        convert: Convert detector checkpoints (else only download and verify).
        progress: Show download progress (on ``stream``).
        progress_mode: ``'tty'``, ``'plain'`` or ``None`` (automatic).
        retries: Automatic resumes of an interrupted download.
        retry_wait_s: First wait before a resume.
        timeout: Socket timeout (seconds).
        stream: Progress and warnings (default stderr).
        out: Receives the report lines (default print to stdout).
    """
    dest: str = DEFAULT_DEST
    url: Optional[str] = None
    sha256: Optional[str] = None
    force: bool = False
    convert: bool = True
    progress: bool = True
    progress_mode: Optional[str] = None
    retries: int = 3
    retry_wait_s: float = 2.0
    timeout: float = 60.0
    stream: Optional[IO[str]] = None
    out: Callable[[str], None] = print


def _manual_steps(entry: dict, original: str) -> str:
    page = entry_page(entry)
    where = f'open {page} in a browser' if page else 'get the file from its authors'
    return (f'To install it by hand: {where} (or copy the file from a machine with internet access), save it as\n'
            f'    {original}\n'
            f'and run `{TOOL_COMMAND} {entry["name"]}` again: it records and checks the file\'s sha256'
            + (' and converts it.' if entry['kind'] == 'detector' else '.'))


def _expected(entry: dict, url: str, options: InstallOptions) -> Dict[str, Optional[str]]:
    """The checksum to verify against and where it comes from."""
    expected = expected_checksum(entry, url)
    record = known_hashes.recorded(entry['name'], entry['file_name'])
    if options.sha256:
        return dict(sha256=options.sha256.lower(), hash_prefix=None, by='sha256 given with --sha256', published=True)
    if expected['sha256']:
        return dict(expected, by='sha256 in the model-zoo index', published=True)
    if record is not None and not options.force:
        return dict(sha256=record['sha256'], hash_prefix=None, published=False,
                    by=f'sha256 recorded on its first download ({record.get("recorded_at", "?")}, '
                    f'{known_hashes.store_path()})')
    if expected['hash_prefix']:
        return dict(expected, by='sha256 prefix in the file name', published=True)
    return dict(sha256=None, hash_prefix=None, by=None, published=False)


def _reject_if_not_checkpoint(path: str, url: Optional[str]) -> None:
    from .checkpoint_reader import checkpoint_format, describe_head  # imports torch
    if checkpoint_format(path) is not None:
        return
    head = describe_head(path)
    rejected = move_aside(path, path, sha256_file(path))
    origin = f' from {url}' if url else ''
    raise ZooInstallError(f'{osp.basename(path)}{origin} is not a checkpoint (neither PyTorch nor safetensors; it '
                          f'starts with {head}: an HTML page or an error message?). It was moved to {rejected} and '
                          f'not used.')


def _verify_existing(entry: dict, path: str, expected: Dict[str, Optional[str]]) -> str:
    digest = sha256_file(path)
    ok = ((expected['sha256'] is None or digest == expected['sha256'])
          and (expected['hash_prefix'] is None or digest.startswith(expected['hash_prefix'])))
    if not ok:
        want = expected['sha256'] or f'{expected["hash_prefix"]}...'
        rejected = move_aside(path, path, digest)
        raise ChecksumError(f'{entry["name"]}: {path} has sha256 {digest}, expected {want} ({expected["by"]}). It '
                            f'was moved to {rejected} and not used; run `{TOOL_COMMAND} {entry["name"]}` to '
                            f'download it again (with --force to accept a new file as the first-use record).',
                            rejected)
    return digest


def _obtain_original(entry: dict, options: InstallOptions, report: Callable[[str], None]) -> InstallResult:
    original = entry_paths(entry, options.dest)['original']
    status = entry_status(entry)
    url = options.url or entry_url(entry)
    expected = _expected(entry, url or '', options)
    if osp.isfile(original) and options.force:
        os.remove(original)
    if osp.isfile(original):
        report(f'{entry["name"]}: found {original}')
    elif status == STATUS_NOT_RELEASED and not options.url:
        ap = ', '.join(f'{kind} AP {entry[f"{kind}_ap"]}' for kind in ('box', 'mask') if entry.get(f'{kind}_ap'))
        result = f'the published result is {ap}, but no checkpoint was released' if ap else 'no checkpoint exists'
        raise ZooInstallError(f'{entry["name"]} is not released ({result}); train it with '
                              f'python tools/train.py {entry.get("config")}')
    elif status == STATUS_MANUAL and not options.url:
        raise ZooInstallError(f'{entry["name"]} is published only on a page that cannot be downloaded '
                              f'automatically ({entry["manual_url"]}).\n' + _manual_steps(entry, original))
    else:
        report(f'{entry["name"]}: downloading {url}\n  to {original}')
        try:
            download_file(url, original, sha256=expected['sha256'], hash_prefix=expected['hash_prefix'],
                          progress=options.progress, resume=True, timeout=options.timeout, stream=options.stream,
                          retries=options.retries, retry_wait_s=options.retry_wait_s,
                          progress_mode=options.progress_mode)
        except (ChecksumError, DiskFullError):
            raise
        except DownloadError as error:  # no network, HTTP error, an HTML page, interrupted too often
            raise ZooInstallError(f'could not download {entry["name"]}: {error}.\n'
                                  + _manual_steps(entry, original)) from None
    _reject_if_not_checkpoint(original, url)
    digest = _verify_existing(entry, original, expected)
    by = expected['by']
    if by is None:
        by = 'sha256 recorded now (first use)'
        report(f'{entry["name"]}: no checksum known; recorded sha256 {digest} in {known_hashes.store_path()} '
               f'(trust on first use: later uses are checked against it)')
    record = known_hashes.recorded(entry['name'], entry['file_name'])
    known_hashes.update_record(entry['name'], replace=record is None or record['sha256'] != digest, sha256=digest,
                               size=osp.getsize(original), file_name=entry['file_name'], url=url)
    if expected['published']:
        # verified against a published checksum: brs_detr may also unpickle it fully if ever needed
        record_trusted_file(original, sha256=digest, source=f'model zoo {entry["name"]}, verified by {by}',
                            name=entry['name'], url=url)
    report(f'{entry["name"]}: verified ({by})')
    return InstallResult(entry['name'], original, digest, by)


def _convert(entry: dict, result: InstallResult, options: InstallOptions, report: Callable[[str], None]) -> None:
    from .convert import convert_checkpoint_file
    converted = entry_paths(entry, options.dest)['converted']
    record = known_hashes.recorded(entry['name'], entry['file_name']) or {}
    if osp.isfile(converted) and not options.force:
        digest = sha256_file(converted)
        if digest == record.get('converted_sha256'):
            report(f'{entry["name"]}: {converted} is up to date (sha256 {digest})')
            result.converted, result.converted_sha256 = converted, digest
            return
        report(f'{entry["name"]}: {converted} differs from the file converted earlier: converting again')
    config = config_path(entry)
    if not osp.isfile(config):
        raise ZooInstallError(f'{entry["name"]}: its config {entry["config"]} does not exist')
    report(f'{entry["name"]}: converting for {entry["config"]} (strict load check)')
    info = convert_checkpoint_file(result.original, converted, config=config, zoo_entry=entry['name'],
                                   src_sha256=result.sha256, log=lambda line: report(f'  {line}'))
    known_hashes.update_record(entry['name'], converted_sha256=info['sha256'])
    result.converted, result.converted_sha256 = converted, info['sha256']


def install_entry(entry: dict, options: InstallOptions) -> InstallResult:
    """Download (or find), verify and convert one model-zoo entry (see the module docstring).

    Raises:
        ZooInstallError: Not released, manual download needed, no network (with the manual steps), not a
            checkpoint, conversion failure.
        ChecksumError: The file does not match its checksum (it was moved aside).
        DownloadError: Other download failures (HTTP errors, disk full, interrupted too often).
    """
    from .checkpoint_reader import CheckpointReadError
    from .convert import ConversionError
    options.stream = options.stream or sys.stderr
    report = options.out
    original = entry_paths(entry, options.dest)['original']
    # one installer per file at a time (e.g. one per node of a cluster sharing the checkpoint directory): the
    # others wait, then find the file downloaded and converted
    with file_lock(lock_path_for(original, osp.join(brs_detr_home(), 'locks'))):
        result = _obtain_original(entry, options, report)
        if entry['kind'] == 'detector' and options.convert:
            try:
                _convert(entry, result, options, report)
            except (ConversionError, CheckpointReadError) as error:
                raise ZooInstallError(f'{entry["name"]}: {error}') from None
            except OSError as error:
                raise ZooInstallError(f'{entry["name"]}: could not write the converted checkpoint: {error}') from None
    size = format_bytes(osp.getsize(result.original))
    report(f'{entry["name"]}: sha256 {result.sha256} ({size})')
    if result.converted:
        report(f'use: python tools/test.py {entry["config"]} {osp.relpath(result.converted)}')
    elif entry['kind'] == 'pretrained':
        report(f'in torch.hub\'s cache: {result.original} (found there by the configs\' init_cfg / load_from)')
    return result


__all__ = ['ZooInstallError', 'InstallOptions', 'InstallResult', 'install_entry', 'DEFAULT_DEST']
