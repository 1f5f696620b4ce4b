"""Which checkpoint files brs_detr may unpickle with code execution enabled (``weights_only=False``).

A ``.pth`` file is a pickle; loading it with ``torch.load(weights_only=False)`` runs whatever the
file says. torch >= 2.6 therefore loads with ``weights_only=True`` by default, which rejects the
Python objects mmengine's own checkpoints contain (``HistoryBuffer``, numpy scalars, ...). brs_detr
loads every file with ``weights_only=True`` first and falls back to full unpickling only for a
file that is *trusted*. A file is trusted when

1. it lies under a directory passed to :func:`trust_directory` or listed in the environment
   variable ``BRS_DETR_TRUSTED_DIRS`` (``os.pathsep``-separated);
2. it was passed to :func:`trust_file` (optionally pinned to a sha256);
3. its directory's manifest (``brs_detr_manifest.json``, written by ``tools/download_checkpoint.py``
   after a checksum check, by the checksum-verified http loader, and by the atomic local backend
   for checkpoints the user's own Runner saves) has an entry for it whose signature is valid and
   whose size and mtime still match (otherwise the file is re-hashed and compared).

Manifest entries are signed with an HMAC keyed by a per-user secret (``$BRS_DETR_HOME/trust_key``,
default ``~/.cache/brs_detr``), so a manifest shipped inside someone else's archive next to a
malicious file does not make it trusted.
"""
import hashlib
import hmac
import json
import os
import os.path as osp
import secrets
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

from .atomic_io import atomic_write_text
from .file_lock import file_lock, lock_path_for

PathLike = Union[str, Path]

#: Environment variable listing trusted directories (``os.pathsep``-separated).
TRUSTED_DIRS_ENV = 'BRS_DETR_TRUSTED_DIRS'
#: Environment variable for brs_detr's per-user state (trust key); default ``~/.cache/brs_detr``.
HOME_ENV = 'BRS_DETR_HOME'
#: File name of the per-directory manifest.
MANIFEST_NAME = 'brs_detr_manifest.json'
MANIFEST_VERSION = 1
HASH_CHUNK_BYTES = 8 * 1024 * 1024

_trusted_dirs: Set[str] = set()
_trusted_files: Dict[str, Optional[str]] = {}
# (realpath, size, mtime_ns) -> sha256, so that a file is hashed at most once per process and state.
_hash_cache: Dict[Tuple[str, int, int], str] = {}


def _real(path: PathLike) -> str:
    return osp.realpath(osp.abspath(osp.expanduser(str(path))))


def brs_detr_home() -> str:
    """Directory for brs_detr's per-user state (``$BRS_DETR_HOME`` or ``~/.cache/brs_detr``)."""
    return osp.expanduser(os.environ.get(HOME_ENV) or osp.join('~', '.cache', 'brs_detr'))


def sha256_file(path: PathLike) -> str:
    """Full sha256 hex digest of a file (cached per size and mtime)."""
    real = _real(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(real, 'rb') as file:
            for chunk in iter(lambda: file.read(HASH_CHUNK_BYTES), b''):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


# ----------------------------------------------------------------------------- explicit trust
def trust_directory(path: PathLike) -> None:
    """Trust every file under ``path`` (recursively) for the rest of this process."""
    _trusted_dirs.add(_real(path))


def trust_file(path: PathLike, sha256: Optional[str] = None) -> None:
    """Trust one file for the rest of this process.

    Args:
        path: The file.
        sha256: If given, the file is trusted only while its content has this full sha256.
    """
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in '0123456789abcdef' for c in sha256):
            raise ValueError(f'trust_file({path!r}): sha256 must be 64 hex digits, got {sha256!r}')
    _trusted_files[_real(path)] = sha256


def reset_trust() -> None:
    """Forget directories and files trusted through :func:`trust_directory` / :func:`trust_file`."""
    _trusted_dirs.clear()
    _trusted_files.clear()
    _hash_cache.clear()


def trusted_directories() -> List[str]:
    """Directories trusted now: explicit ones plus those in ``$BRS_DETR_TRUSTED_DIRS``."""
    from_env = [_real(p) for p in os.environ.get(TRUSTED_DIRS_ENV, '').split(os.pathsep) if p.strip()]
    return sorted(_trusted_dirs.union(from_env))


def _is_under(path: str, directory: str) -> bool:
    try:
        return osp.commonpath([path, directory]) == directory
    except ValueError:  # different drives on Windows
        return False


# ----------------------------------------------------------------------------- signed manifest
def _trust_key(create: bool) -> Optional[bytes]:
    """The per-user HMAC key; created (mode 0600) on first use when ``create``."""
    key_path = osp.join(brs_detr_home(), 'trust_key')
    try:
        with open(key_path, 'rb') as file:
            key = file.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    if not create:
        return None
    os.makedirs(osp.dirname(key_path), exist_ok=True)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile
        return _trust_key(create=False)
    with os.fdopen(fd, 'wb') as file:
        file.write(secrets.token_hex(32).encode())
    return _trust_key(create=False)


def _signature(key: bytes, file_name: str, sha256: str, size: int) -> str:
    message = f'{file_name}\0{sha256}\0{size}'.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def manifest_path(directory: PathLike) -> str:
    """Path of the manifest of ``directory``."""
    return osp.join(str(directory), MANIFEST_NAME)


def read_manifest(directory: PathLike) -> Dict[str, dict]:
    """Entries (file name -> record) of ``directory``'s manifest; empty if there is none."""
    path = manifest_path(directory)
    try:
        with open(path, encoding='utf-8') as file:
            content = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable manifest trusts nothing
    files = content.get('files', {}) if isinstance(content, dict) else {}
    return files if isinstance(files, dict) else {}


def record_trusted_file(path: PathLike,
                        sha256: Optional[str] = None,
                        data: Optional[bytes] = None,
                        source: str = '',
                        **extra: object) -> str:
    """Record ``path`` in its directory's manifest as verified, which makes it trusted.

    Call this only after the content was verified (checksum) or produced by this program.

    Args:
        path: The file (must exist).
        sha256: Its full sha256 if already known (it is checked against the file when ``data``
            is not given and the file is not cached).
        data: The exact bytes just written to ``path`` (saves re-reading it).
        source: Free text saying why the file is trusted (URL, "written by Runner", ...).
        **extra: More JSON-serializable fields stored in the entry (name, url, config, ...).

    Returns:
        The file's sha256.
    """
    real = _real(path)
    stat = os.stat(real)
    if data is not None:
        digest = hashlib.sha256(data).hexdigest()
        _hash_cache[(real, stat.st_size, stat.st_mtime_ns)] = digest
    else:
        digest = sha256_file(real)
    if sha256 is not None and sha256.lower() != digest:
        raise ValueError(f'record_trusted_file: {real} has sha256 {digest}, expected {sha256.lower()}')
    directory, file_name = osp.split(real)
    key = _trust_key(create=True)
    entry = dict(
        sha256=digest,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        source=source,
        recorded_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        **extra)
    entry['signature'] = _signature(key, file_name, digest, stat.st_size)
    # The lock lives in brs_detr's home, not next to the checkpoints, so work_dirs stay clean.
    with file_lock(lock_path_for(directory, osp.join(brs_detr_home(), 'locks'))):
        files = read_manifest(directory)
        # Drop entries of files that no longer exist (e.g. checkpoints the CheckpointHook removed).
        files = {name: rec for name, rec in files.items() if osp.exists(osp.join(directory, name))}
        files[file_name] = entry
        atomic_write_text(
            json.dumps(dict(version=MANIFEST_VERSION, files=files), indent=2, sort_keys=True) + '\n',
            manifest_path(directory))
    return digest


def _manifest_reason(real: str) -> Optional[str]:
    directory, file_name = osp.split(real)
    entry = read_manifest(directory).get(file_name)
    if not isinstance(entry, dict):
        return None
    key = _trust_key(create=False)
    try:
        sha256, size = str(entry['sha256']), int(entry['size'])
        mtime_ns = int(entry.get('mtime_ns', -1))
        signature = str(entry['signature'])
    except (KeyError, TypeError, ValueError):
        return None
    if key is None or not hmac.compare_digest(signature, _signature(key, file_name, sha256, size)):
        return None
    stat = os.stat(real)
    if stat.st_size != size:
        return None
    if stat.st_mtime_ns != mtime_ns and sha256_file(real) != sha256:
        return None
    return f'recorded as verified in {manifest_path(directory)} ({entry.get("source", "")})'


# ----------------------------------------------------------------------------- queries
def trust_reason(path: PathLike) -> Optional[str]:
    """Why ``path`` is trusted, or ``None`` if it is not (or does not exist)."""
    real = _real(path)
    if not osp.isfile(real):
        return None
    for directory in trusted_directories():
        if _is_under(real, directory):
            source = 'BRS_DETR_TRUSTED_DIRS' if directory not in _trusted_dirs else 'trust_directory()'
            return f'under trusted directory {directory} ({source})'
    if real in _trusted_files:
        expected = _trusted_files[real]
        if expected is None:
            return 'trusted explicitly with trust_file()'
        if sha256_file(real) == expected:
            return f'trusted with trust_file() and sha256 {expected} verified'
        return None
    return _manifest_reason(real)


def is_trusted(path: PathLike) -> bool:
    """Whether brs_detr may unpickle ``path`` with ``weights_only=False``."""
    return trust_reason(path) is not None
