"""Convert a published (mmdet 2.x) checkpoint for one of this project's configs, and prove that it fits.

:func:`convert_state_dict_for_config` picks the converter from the config's detector type:

* ``CoDETR`` (Co-Deformable-DETR, BRS-DETR, RS-DETR): :func:`~brs_detr.models.detectors.convert_co_detr_state_dict`
  (transformer keys move out of ``query_head``, the dense auxiliary heads become ``aux_bbox_head``, original-Swin
  backbones become mmdet's ``SwinTransformer`` layout);
* the rank-based CNN baselines: :func:`~brs_detr.zoo.rank_based_cnn.convert_rank_based_cnn_state_dict` (same
  names and shapes; checked).

:func:`check_strict_load` then loads the result into the model built from the config with ``strict=True``; a
mismatch raises :class:`ConversionError` listing missing, unexpected and reshaped keys plus the likely cause.
:func:`convert_checkpoint_file` does all of it for files: read without running code
(:mod:`brs_detr.zoo.checkpoint_reader`), convert, check, write atomically a plain checkpoint
(``{'state_dict': ..., 'meta': {...}}``, loadable with ``weights_only=True``).
"""
import logging
import os.path as osp
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from mmengine.config import Config
from torch import Tensor, nn

from brs_detr.engine.runner.checkpoint_fit import state_dict_fit
from brs_detr.engine.runner.model_build import named_build_errors
from brs_detr.fileio.atomic_io import atomic_torch_save
from brs_detr.fileio.trust import sha256_file
from brs_detr.models.detectors.co_detr_checkpoint import convert_co_detr_state_dict
from .checkpoint_reader import CheckpointReadError, plain_meta, read_checkpoint, split_checkpoint
from .rank_based_cnn import (RANK_BASED_CNN_DETECTORS, convert_rank_based_cnn_state_dict, mismatch_hints,
                             shapes_of)

ConfigLike = Union[str, Config]
#: How many keys of each kind a :class:`ConversionError` lists.
MAX_KEYS_LISTED = 12
#: ``meta['layout']`` of a converted checkpoint.
CONVERTED_LAYOUT = 'brs_detr (mmdet 3.x)'


class ConversionError(ValueError):
    """A state dict cannot be converted for, or does not load strictly into, a config's model."""


def load_config(config: ConfigLike) -> Config:
    """A :class:`Config` from a path (or the config itself), every head's ``num_classes`` resolved from its datasets
    (:func:`brs_detr.datasets.num_classes.load_config`); the project's modules are registered."""
    if isinstance(config, Config):
        return config
    if not osp.isfile(config):
        raise ConversionError(f'config {config} does not exist')
    from mmengine.registry import init_default_scope

    from brs_detr.datasets.num_classes import load_config as load_resolved_config
    init_default_scope('mmdet')  # the project's configs build from mmdet's registries
    return load_resolved_config(config)


def detector_type(config: ConfigLike) -> str:
    """``cfg.model.type`` (e.g. ``'CoDETR'``, ``'FasterRCNN'``)."""
    return str(load_config(config).model.type)


def convert_state_dict_for_config(state_dict: Mapping[str, Tensor],
                                  config: ConfigLike,
                                  log: Callable[[str], None] = lambda msg: None) -> 'OrderedDict[str, Tensor]':
    """Convert an original (published, mmdet 2.x) state dict for the model of ``config``.

    A state dict already in this project's layout passes unchanged. This does not build the model; call
    :func:`check_strict_load` (or use :func:`convert_and_check`) to prove the result fits.

    Args:
        state_dict: Key -> tensor, as in the published checkpoint's ``state_dict`` (a ``module.`` prefix is
            removed).
        config: Path of (or a loaded) project config.
        log: Receives one line per notable step.

    Returns:
        The converted state dict (the same tensor objects, except reordered Swin patch-merging weights).

    Raises:
        ConversionError: An unknown key, or a detector type no converter handles.
    """
    model_type = detector_type(config)
    if state_dict and all(key.startswith('module.') for key in state_dict):
        state_dict = OrderedDict((key[len('module.'):], value) for key, value in state_dict.items())
        log("stripped the 'module.' prefix")
    try:
        if model_type == 'CoDETR':
            return convert_co_detr_state_dict(state_dict, log=log)
        if model_type in RANK_BASED_CNN_DETECTORS:
            return convert_rank_based_cnn_state_dict(state_dict, log=log)
    except KeyError as error:
        raise ConversionError(f'cannot convert for {_config_name(config)}: {error.args[0]}') from None
    raise ConversionError(f'no converter for detector type {model_type} ({_config_name(config)}); known: CoDETR, '
                          f'{", ".join(RANK_BASED_CNN_DETECTORS)}')


def _config_name(config: ConfigLike) -> str:
    return config if isinstance(config, str) else str(getattr(config, 'filename', None) or 'the config')


def build_model(config: ConfigLike) -> nn.Module:
    """The detector of ``config``, built without loading pretrained backbone weights (nothing is downloaded)."""
    import brs_detr.models  # noqa: F401  (registers the project's models)
    from mmdet.registry import MODELS
    from mmengine.logging import MMLogger
    cfg = load_config(config)
    if cfg.model.get('backbone') is not None:
        cfg.model.backbone.init_cfg = None
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # building logs every module's init config
    try:
        with named_build_errors(cfg.model):
            return MODELS.build(cfg.model)
    finally:
        logger.setLevel(level)


def _listed(keys: List[str]) -> str:
    shown = ', '.join(keys[:MAX_KEYS_LISTED])
    return shown + (f', ... ({len(keys) - MAX_KEYS_LISTED} more)' if len(keys) > MAX_KEYS_LISTED else '')


def check_strict_load(model: nn.Module, state_dict: Mapping[str, Tensor], config: ConfigLike = 'the config') -> None:
    """Load ``state_dict`` into ``model`` with ``strict=True``; explain any mismatch.

    A model built on the meta device (names and shapes only, as the tests build them) is compared, not loaded.

    Raises:
        ConversionError: Missing, unexpected or reshaped keys (listed, with :func:`mismatch_hints`).
    """
    model_state = model.state_dict()
    fit = state_dict_fit(model_state, state_dict)
    if not fit.exact:
        lines = [f'the weights do not fit the model of {_config_name(config)}:']
        for title, keys in (('missing in the weights', fit.missing), ('not in the model', fit.unexpected),
                            ('shape', fit.reshaped)):
            if keys:
                lines.append(f'  {title} ({len(keys)}): {_listed(keys)}')
        lines += [f'  likely cause: {hint}' for hint in mismatch_hints(shapes_of(model_state), shapes_of(state_dict))]
        raise ConversionError('\n'.join(lines))
    if any(value.is_meta for value in model_state.values()):
        return  # a model on the meta device holds no data: the names and shapes compared above are the whole check
    model.load_state_dict(state_dict, strict=True)


def convert_and_check(state_dict: Mapping[str, Tensor], config: ConfigLike,
                      model: Optional[nn.Module] = None,
                      log: Callable[[str], None] = lambda msg: None) -> 'OrderedDict[str, Tensor]':
    """:func:`convert_state_dict_for_config`, then :func:`check_strict_load` into ``model`` (built if not given)."""
    converted = convert_state_dict_for_config(state_dict, config, log=log)
    check_strict_load(model if model is not None else build_model(config), converted, config)
    num_params = sum(value.numel() for value in converted.values())
    log(f'loads strictly into {_config_name(config)} ({len(converted)} entries, {num_params} elements)')
    return converted


def convert_checkpoint_file(src: str,
                            dst: str,
                            config: Optional[ConfigLike] = None,
                            zoo_entry: Optional[str] = None,
                            src_sha256: Optional[str] = None,
                            log: Callable[[str], None] = lambda msg: None) -> Dict[str, Any]:
    """Convert the checkpoint file ``src`` into ``dst`` (written atomically).

    Args:
        src: The published checkpoint (read without running code from it).
        dst: The converted checkpoint: ``{'state_dict': ..., 'meta': {...}}`` with plain values only.
        config: Check that the result loads strictly into this config's model. Without it the layout is
            guessed (Co-DETR when ``query_head.*`` keys are present, else the CNN baselines' identity) and
            nothing is checked.
        zoo_entry: The model-zoo name, recorded in the meta.
        src_sha256: The sha256 of ``src`` if already known (saves hashing it again).
        log: Receives one line per notable step.

    Returns:
        ``dict(dst=..., sha256=<of dst>, source_sha256=..., num_entries=..., checked=<bool>)``.

    Raises:
        CheckpointReadError: ``src`` is not a readable checkpoint.
        ConversionError: The weights cannot be converted for, or do not fit, ``config``.
    """
    if not osp.isfile(src):
        raise CheckpointReadError(f'{src}: no such file')
    source_sha256 = src_sha256 or sha256_file(src)
    state_dict, meta = split_checkpoint(read_checkpoint(src), src)
    if config is not None:
        converted = convert_and_check(state_dict, config, log=log)
    else:
        if any(key.startswith('query_head.') for key in state_dict):
            converted = convert_co_detr_state_dict(state_dict, log=log)
        else:
            converted = convert_rank_based_cnn_state_dict(state_dict, log=log)
        log('no config given: the result was not checked against a model')
    out_meta = dict(plain_meta(meta), converted_by='brs_detr.zoo.convert_checkpoint_file', layout=CONVERTED_LAYOUT,
                    source=osp.basename(src), source_sha256=source_sha256)
    if config is not None:
        out_meta['config'] = _config_name(config)
    if zoo_entry:
        out_meta['zoo_entry'] = zoo_entry
    atomic_torch_save(dict(state_dict=OrderedDict(converted), meta=out_meta), dst)
    return dict(dst=osp.abspath(dst), sha256=sha256_file(dst), source_sha256=source_sha256,
                num_entries=len(converted), checked=config is not None)


__all__ = [
    'ConversionError', 'CheckpointReadError', 'convert_state_dict_for_config', 'check_strict_load',
    'convert_and_check', 'convert_checkpoint_file', 'build_model', 'load_config', 'detector_type'
]
