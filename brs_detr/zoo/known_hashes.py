"""Trust-on-first-use sha256 records of model-zoo downloads.

Most published checkpoints come without a checksum (Google Drive releases). The first time
``tools/download_checkpoint.py`` fetches such a file it records the file's sha256 and size here; every
later use (a re-run, a re-download after the file was deleted, a conversion) is checked against that
record, so a file that changed on the server or on disk is noticed instead of silently used.

The records live in ``$BRS_DETR_HOME/model_zoo_sha256.json`` (default ``~/.cache/brs_detr/``), one per
zoo entry name::

    {"version": 1, "records": {"brs-detr_r50_12e_coco": {
        "sha256": "...", "size": 123, "file_name": "...", "url": "...", "recorded_at": "2026-...Z",
        "converted_sha256": "..."}}}

``converted_sha256`` is the digest of the converted checkpoint written from that file on this machine.
A record protects against later changes only: it cannot tell whether the first download was the
authors' file. Copy a recorded ``sha256`` into ``checkpoints/model_zoo.json`` to pin it for everyone.
"""
import json
import os.path as osp
import time
from typing import Dict, Optional

from brs_detr.fileio.atomic_io import atomic_write_text
from brs_detr.fileio.file_lock import file_lock
from brs_detr.fileio.trust import brs_detr_home

STORE_NAME = 'model_zoo_sha256.json'
STORE_VERSION = 1


def store_path() -> str:
    """Path of the record file."""
    return osp.join(brs_detr_home(), STORE_NAME)


def read_records() -> Dict[str, dict]:
    """All records by entry name (empty when there is no record file or it is unreadable)."""
    try:
        with open(store_path(), encoding='utf-8') as file:
            content = json.load(file)
    except (OSError, ValueError):
        return {}
    records = content.get('records') if isinstance(content, dict) else None
    return {name: rec for name, rec in (records or {}).items() if isinstance(rec, dict) and 'sha256' in rec}


def recorded(name: str, file_name: Optional[str] = None) -> Optional[dict]:
    """The record of entry ``name`` (for ``file_name``, when given: a record of another file is ignored)."""
    record = read_records().get(name)
    if record is None or (file_name is not None and record.get('file_name') != file_name):
        return None
    return record


def update_record(name: str, **fields: object) -> dict:
    """Create or update the record of ``name`` with ``fields`` (atomically); return the new record.

    A new record gets ``recorded_at``; ``sha256`` of an existing record is never changed silently: pass
    ``replace=True`` in ``fields`` to start a new record (after the user chose ``--force``).
    """
    replace = bool(fields.pop('replace', False))
    with file_lock(store_path() + '.lock'):
        records = read_records()
        record = {} if replace else dict(records.get(name, {}))
        if 'sha256' in fields and record.get('sha256') not in (None, fields['sha256']):
            raise ValueError(f'{name}: refusing to overwrite the recorded sha256 {record["sha256"]} with '
                             f'{fields["sha256"]}')
        if not record:
            record['recorded_at'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        record.update(fields)
        records[name] = record
        atomic_write_text(json.dumps(dict(version=STORE_VERSION, records=records), indent=2, sort_keys=True) + '\n',
                          store_path())
    return record
