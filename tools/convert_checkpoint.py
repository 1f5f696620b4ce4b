#!/usr/bin/env python
"""Convert an original (mmdet 2.x) Co-Deformable-DETR or BRS-DETR checkpoint for brs_detr's CoDETR.

    python tools/convert_checkpoint.py SRC.pth DST.pth [--trust] [--config CONFIG]

SRC is read with ``torch.load(weights_only=True)``: tensors and plain Python values only, no code
runs. Checkpoints saved by mmdet 2.x usually pickle more than that in their ``meta`` (mmcv config
objects, numpy values); such a file is refused unless you pass ``--trust``, which unpickles it fully
(this can run arbitrary code: only use it on files whose origin you trust, e.g. after checking a
published checksum). Classes that no longer exist (mmcv 1.x) are replaced by inert placeholders.

DST is written atomically as ``{'state_dict': ..., 'meta': {...plain strings...}}``, which loads with
``weights_only=True`` and works as ``load_from`` in a config. Its sha256 is printed.
With ``--config`` the converted weights are also loaded strictly into the model of that config.
"""
import argparse
import hashlib
import os
import pickle
import sys
import tempfile
import types
from collections import OrderedDict
from typing import Any, Dict

import torch


def sha256sum(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


class _Placeholder:
    """Stands in for a pickled object whose class cannot be imported (its
    content is kept but never used)."""

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__['saved_args'] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__['saved_state'] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses
        self.__dict__.setdefault('saved_items', {})[key] = value

    def append(self, value: Any) -> None:  # list subclasses
        self.__dict__.setdefault('saved_elements', []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault('saved_elements', []).extend(values)


class _TolerantUnpickler(pickle.Unpickler):
    """Unpickler that replaces classes which fail to import (e.g. mmcv 1.x
    config objects) by :class:`_Placeholder`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder, ), {'__module__': module})


_tolerant_pickle = types.ModuleType('_tolerant_pickle')
_tolerant_pickle.__dict__.update(pickle.__dict__)
_tolerant_pickle.Unpickler = _TolerantUnpickler


def load_source(path: str, trust: bool) -> Dict[str, torch.Tensor]:
    """Load the state dict of SRC (see the module docstring)."""
    if not os.path.isfile(path):
        raise SystemExit(f'error: {path}: no such file')
    if trust:
        checkpoint = torch.load(
            path,
            map_location='cpu',
            weights_only=False,
            pickle_module=_tolerant_pickle)
    else:
        try:
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as error:
            first_line = str(error).strip().splitlines()[0]
            raise SystemExit(
                f'error: {path} holds pickled objects other than tensors '
                f'({first_line}).\nIf you trust where this file comes from '
                '(e.g. its sha256 matches the published one), run again with '
                '--trust to unpickle it fully.')
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    elif isinstance(checkpoint, dict) and 'model' in checkpoint:
        state_dict = checkpoint['model']
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, dict) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise SystemExit(f'error: {path}: no state dict of tensors found '
                         "(expected a dict, or one under 'state_dict')")
    return state_dict


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(
        prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    os.close(handle)
    try:
        torch.save(obj, tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def verify(state_dict: Dict[str, torch.Tensor], config: str) -> None:
    """Load ``state_dict`` strictly into the model of ``config``."""
    from mmengine.config import Config

    import brs_detr  # noqa: F401  (registers the models)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(
            f'error: the converted weights do not fit {config}:\n'
            f'  missing: {result.missing_keys[:20]}\n'
            f'  unexpected: {result.unexpected_keys[:20]}')
    num_params = sum(param.numel() for param in model.parameters())
    print(f'loads strictly into {config} ({num_params} parameters)')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('src', help='original checkpoint (mmdet 2.x keys)')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument(
        '--trust',
        action='store_true',
        help='unpickle SRC fully (runs code from the file; trusted files only)')
    parser.add_argument(
        '--config', help='check that the result loads strictly into this model')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from brs_detr.models.detectors.co_detr_checkpoint import \
        convert_co_detr_state_dict

    src_sha = sha256sum(args.src) if os.path.isfile(args.src) else None
    state_dict = load_source(args.src, args.trust)
    try:
        converted = convert_co_detr_state_dict(
            state_dict, log=lambda msg: print(msg))
    except KeyError as error:
        raise SystemExit(f'error: {args.src}: {error.args[0]}')
    if args.config:
        verify(converted, args.config)
    meta = dict(
        converted_by='brs_detr tools/convert_checkpoint.py',
        source=os.path.basename(args.src),
        source_sha256=src_sha,
        layout='brs_detr CoDETR (mmdet 3.x)')
    save_atomic(dict(state_dict=OrderedDict(converted), meta=meta), args.dst)
    print(f'saved {args.dst}')
    print(f'sha256 {sha256sum(args.dst)}')


if __name__ == '__main__':
    sys.exit(main())
