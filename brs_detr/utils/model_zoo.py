"""The model-zoo index (``checkpoints/model_zoo.json``): reading, validating and looking up entries.

Each entry names one downloadable checkpoint::

    {"name": "co_dino_5scale_r50_1x_coco",          # what users type
     "url": "https://.../co_dino_5scale_r50_1x_coco-7481f903.pth",
     "gdrive_id": null,                              # or a Google Drive file id (then url is informative)
     "sha256": null,                                 # full hex digest, or null when unknown
     "file_name": "co_dino_5scale_r50_1x_coco-7481f903.pth",
     "config": "...", "box_ap": 52.1, "source": "...",
     "format": "mmdet3", "needs_conversion": false}

When ``sha256`` is null the download is verified against the hash prefix in the file name
(torch.hub's ``name-<sha256 prefix>.pth`` convention) where there is one; files with neither are
downloaded but not trusted (they are loaded with ``weights_only=True`` only).
"""
import json
import os.path as osp
import re
from pathlib import Path
from typing import Dict, List, Optional, Union
from urllib.parse import urlparse

PathLike = Union[str, Path]

#: The index shipped with the repository.
DEFAULT_INDEX = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'checkpoints',
                         'model_zoo.json')
#: torch.hub's convention: ``<name>-<first hex digits of the sha256>.<ext>``.
HASH_IN_NAME = re.compile(r'-([a-f0-9]+)\.')
#: Fewer hex digits than this in a file name are not accepted as a checksum.
MIN_HASH_PREFIX_DIGITS = 8
REQUIRED_FIELDS = ('name', 'file_name')
_SHA256 = re.compile(r'^[0-9a-f]{64}$')


class ModelZooError(ValueError):
    """The index is malformed or does not know a name."""


def gdrive_download_url(file_id: str) -> str:
    """Direct-download URL of a Google Drive file that skips the large-file virus-scan page."""
    return f'https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t'


def hash_prefix_from_name(file_name: str) -> Optional[str]:
    """The sha256 prefix in a torch.hub-style file name (``resnet50-0676ba61.pth`` -> ``0676ba61``).

    Returns ``None`` when the name carries no prefix of at least :data:`MIN_HASH_PREFIX_DIGITS` digits.
    """
    match = HASH_IN_NAME.search(osp.basename(file_name))
    if match is None or len(match.group(1)) < MIN_HASH_PREFIX_DIGITS:
        return None
    return match.group(1)


def _validate(entry: object, index_path: str, position: int) -> dict:
    if not isinstance(entry, dict):
        raise ModelZooError(f'{index_path}: entry {position} must be an object, got {type(entry).__name__}')
    for field in REQUIRED_FIELDS:
        if not entry.get(field):
            raise ModelZooError(f'{index_path}: entry {position} ({entry.get("name", "?")}) lacks "{field}"')
    if not entry.get('url') and not entry.get('gdrive_id'):
        raise ModelZooError(f'{index_path}: entry "{entry["name"]}" needs "url" or "gdrive_id"')
    sha256 = entry.get('sha256')
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256.lower())):
        raise ModelZooError(f'{index_path}: entry "{entry["name"]}": sha256 must be 64 hex digits or null, '
                            f'got {sha256!r}')
    if osp.basename(entry['file_name']) != entry['file_name']:
        raise ModelZooError(f'{index_path}: entry "{entry["name"]}": file_name must be a bare file name, '
                            f'got {entry["file_name"]!r}')
    return entry


def load_index(path: Optional[PathLike] = None) -> Dict[str, dict]:
    """Read and validate a model-zoo index.

    Args:
        path: The JSON file; defaults to :data:`DEFAULT_INDEX`.

    Returns:
        Entries by name, in file order.
    """
    path = str(path or DEFAULT_INDEX)
    try:
        with open(path, encoding='utf-8') as file:
            content = json.load(file)
    except FileNotFoundError:
        raise ModelZooError(f'model-zoo index {path} does not exist') from None
    except ValueError as error:
        raise ModelZooError(f'model-zoo index {path} is not valid JSON: {error}') from None
    models = content.get('models') if isinstance(content, dict) else None
    if not isinstance(models, list):
        raise ModelZooError(f'{path}: expected an object with a "models" list')
    entries: Dict[str, dict] = {}
    for position, entry in enumerate(models):
        entry = _validate(entry, path, position)
        if entry['name'] in entries:
            raise ModelZooError(f'{path}: duplicate entry name "{entry["name"]}"')
        entries[entry['name']] = entry
    return entries


def get_entry(name: str, index: Dict[str, dict]) -> dict:
    """The entry called ``name``; an unknown name raises with the list of known ones."""
    if name not in index:
        known = ', '.join(index) or '(none)'
        raise ModelZooError(f'unknown checkpoint name "{name}". Known names: {known}')
    return index[name]


def entry_url(entry: dict) -> str:
    """The URL to download an entry from (Google Drive entries get the direct-download form)."""
    if entry.get('gdrive_id'):
        return gdrive_download_url(entry['gdrive_id'])
    return entry['url']


def find_by_url(url: str, index_path: Optional[PathLike] = None) -> Optional[dict]:
    """The entry of the default (or given) index whose URL is ``url``; ``None`` if there is none.

    A missing or malformed default index is not an error here (the http loader works without it).
    """
    try:
        index = load_index(index_path)
    except ModelZooError:
        return None
    for entry in index.values():
        if entry.get('url') == url:
            return entry
    return None


def expected_checksum(entry: Optional[dict], url: str) -> Dict[str, Optional[str]]:
    """What a download of ``url`` (described by ``entry``, if known) can be verified against.

    Returns:
        ``dict(sha256=..., hash_prefix=...)``; either may be ``None``.
    """
    sha256 = entry.get('sha256') if entry else None
    name = entry['file_name'] if entry else osp.basename(urlparse(url).path)
    return dict(sha256=sha256.lower() if sha256 else None, hash_prefix=hash_prefix_from_name(name))


def list_entries(index: Dict[str, dict]) -> List[str]:
    """Human-readable lines describing the entries of an index."""
    lines = []
    for entry in index.values():
        ap = entry.get('box_ap')
        ap_text = f'{ap:.1f}' if isinstance(ap, (int, float)) else '-'
        check = 'sha256' if entry.get('sha256') else ('name hash' if hash_prefix_from_name(entry['file_name'])
                                                      else 'none')
        extra = ' needs conversion' if entry.get('needs_conversion') else ''
        lines.append(f'{entry["name"]:<48} AP {ap_text:>5}  check: {check:<9} {entry.get("format", "?")}{extra}')
    return lines
