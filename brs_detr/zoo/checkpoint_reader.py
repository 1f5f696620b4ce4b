"""Read any published checkpoint without running code from it.

mmdet 2.x checkpoints pickle more than tensors in their ``meta`` (mmcv 1.x ``ConfigDict``, numpy scalars,
...), which ``torch.load(weights_only=True)`` refuses, while ``weights_only=False`` would execute whatever
the file asks for. :func:`read_checkpoint` first tries ``weights_only=True``; when that refuses, it
unpickles with :class:`InertUnpickler`: the globals torch's weights-only loader allows (tensor rebuild
functions, dtypes, ``OrderedDict``, ...) resolve to the real objects, every other global to an inert
placeholder class that only stores what it is given. No callable named by the file ever runs, so the
tensors come out intact and the rest of the ``meta`` becomes harmless placeholders, whatever the file's
origin.
"""
import collections
import io
import pickle
import types
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

#: The first bytes of a torch zip checkpoint (torch >= 1.6) and of a legacy pickled one.
ZIP_MAGIC = b'PK\x03\x04'
PICKLE_PROTOCOL_2_OR_LATER = b'\x80'
#: A safetensors file (timm's weights) starts with an 8-byte header length, then its JSON header.
SAFETENSORS_HEADER_START = 8
#: Prefix DistributedDataParallel adds to every key.
DDP_PREFIX = 'module.'
#: Checkpoint keys that may hold the model's state dict, in order of preference.
STATE_DICT_KEYS = ('state_dict', 'model')
#: Plain value types copied from a source checkpoint's ``meta`` into a converted one.
_PLAIN = (str, int, float, bool, type(None))


class CheckpointReadError(ValueError):
    """The file is not a PyTorch checkpoint, or it holds no state dict of tensors."""


def checkpoint_format(path: str) -> Optional[str]:
    """``'zip'``, ``'legacy'`` (torch) or ``'safetensors'`` from a file's first bytes; ``None`` for anything else."""
    with open(path, 'rb') as file:
        head = file.read(SAFETENSORS_HEADER_START + 2)
    if head[:len(ZIP_MAGIC)] == ZIP_MAGIC:
        return 'zip'
    if head[:1] == PICKLE_PROTOCOL_2_OR_LATER:
        return 'legacy'
    if head[SAFETENSORS_HEADER_START:] == b'{"':  # 8-byte header length, then the JSON header
        return 'safetensors'
    return None


def describe_head(path: str, size: int = 60) -> str:
    """The first bytes of a file as readable text (for error messages)."""
    with open(path, 'rb') as file:
        head = file.read(size)
    return repr(head.decode('latin-1'))


class _Inert:
    """Stands in for an object of a class the unpickler does not allow; keeps its data, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__['pickled_args'] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__['pickled_state'] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses
        self.__dict__.setdefault('pickled_items', {})[key] = value

    def append(self, value: Any) -> None:  # list subclasses
        self.__dict__.setdefault('pickled_elements', []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault('pickled_elements', []).extend(values)

    def __repr__(self) -> str:
        return f'<inert {type(self).__module__}.{type(self).__qualname__}>'


def _allowed_globals() -> Dict[str, Any]:
    """The globals torch's weights-only unpickler accepts, by ``module.name``."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        return dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without this private helper: the essentials
        allowed = {f'torch._utils.{name}': getattr(torch._utils, name)
                   for name in ('_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_parameter')}
        allowed.update({f'torch.{name}': getattr(torch, name) for name in ('float32', 'float16', 'float64',
                                                                           'int64', 'int32', 'uint8', 'bool')})
        allowed['collections.OrderedDict'] = collections.OrderedDict
        return allowed


class InertUnpickler(pickle.Unpickler):
    """Resolves allowed globals (see :func:`_allowed_globals`) and replaces every other one by an inert class."""

    _allowed: Optional[Dict[str, Any]] = None

    def find_class(self, module: str, name: str) -> Any:
        if InertUnpickler._allowed is None:
            InertUnpickler._allowed = _allowed_globals()
        allowed = InertUnpickler._allowed.get(f'{module}.{name}')
        if allowed is not None:
            return allowed
        return type(name, (_Inert, ), {'__module__': module, '__qualname__': name})


def _inert_load(file: io.BufferedIOBase, **kwargs: Any) -> Any:
    return InertUnpickler(file, **kwargs).load()


#: A ``pickle_module`` for :func:`torch.load` whose every unpickling step is inert.
inert_pickle = types.ModuleType('brs_detr_inert_pickle')
inert_pickle.__dict__.update(pickle.__dict__)
inert_pickle.Unpickler = InertUnpickler
inert_pickle.load = _inert_load
inert_pickle.loads = lambda data, **kwargs: _inert_load(io.BytesIO(data), **kwargs)


def read_checkpoint(path: str) -> Any:
    """Load a checkpoint file on the CPU without executing code from it (see the module docstring).

    Raises:
        CheckpointReadError: The file is not a PyTorch checkpoint or is damaged.
    """
    kind = checkpoint_format(path)
    if kind not in ('zip', 'legacy'):
        raise CheckpointReadError(f'{path} is not a PyTorch checkpoint (it starts with {describe_head(path)})')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        pass  # pickled objects besides tensors: read them inertly
    except RuntimeError as error:
        raise CheckpointReadError(f'{path} is damaged or truncated: {error}') from None
    try:
        return torch.load(path, map_location='cpu', weights_only=False, pickle_module=inert_pickle)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise CheckpointReadError(f'{path} is damaged or truncated: {error}') from None


def split_checkpoint(checkpoint: Any, source: str) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """The state dict (``module.`` prefix removed) and the ``meta`` dict of a loaded checkpoint.

    Accepts ``{'state_dict': ...}`` (mmdet / mmengine), ``{'model': ...}`` (Swin, DETR-style releases) and a
    bare state dict. Optimizer states and other top-level entries are left out.

    Raises:
        CheckpointReadError: No state dict of tensors was found (names the first offending key).
    """
    state_dict, container = checkpoint, None
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                state_dict, container = checkpoint[key], checkpoint
                break
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointReadError(f'{source}: no state dict found (expected a dict of tensors, or one under '
                                  f'{" / ".join(repr(k) for k in STATE_DICT_KEYS)})')
    bad = next((key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointReadError(f'{source}: state dict entry "{bad}" is a {type(state_dict[bad]).__name__}, '
                                  f'not a tensor')
    if all(key.startswith(DDP_PREFIX) for key in state_dict):
        state_dict = OrderedDict((key[len(DDP_PREFIX):], value) for key, value in state_dict.items())
    meta = container.get('meta') if container is not None else None
    return OrderedDict(state_dict), meta if isinstance(meta, dict) else {}


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def plain_meta(meta: Mapping[str, Any]) -> dict:
    """The plain-valued fields of a source checkpoint's ``meta`` worth keeping (versions, epoch, classes).

    mmdet 2.x's ``CLASSES`` becomes mmdet 3.x's ``dataset_meta['classes']`` (what ``init_detector`` and the
    inferencers read class names from).
    """
    kept = {key: meta[key] for key in ('mmdet_version', 'mmcv_version', 'epoch', 'iter', 'time')
            if key in meta and _plain(meta[key])}
    dataset_meta = meta.get('dataset_meta')
    classes = dataset_meta.get('classes') if isinstance(dataset_meta, Mapping) else meta.get('CLASSES')
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        kept['dataset_meta'] = dict(classes=tuple(classes))
    return kept
