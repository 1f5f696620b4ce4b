"""timm image models as mmdet backbones (:class:`TimmBackbone`).

timm is imported only when a :class:`TimmBackbone` is built (or :func:`timm_feature_info` is called), so
``import brs_detr`` and every config that does not use a timm backbone work without timm installed.
"""
import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet.registry import MODELS
from mmdet.utils import OptMultiConfig

__all__ = ['TimmBackbone', 'TimmPretrainedInit', 'TimmUnavailableError', 'import_timm', 'timm_feature_info', 'timm_weights_url',
           'load_timm_state_dict']

#: The timm release brs-detr is tested with (requirements.txt pins the same).
TIMM_REQUIREMENT = 'timm==1.0.31'
SAFETENSORS_SUFFIX = '.safetensors'
#: Keys under which training scripts nest the weights in a checkpoint file, tried in this order.
_NESTED_STATE_DICT_KEYS = ('state_dict', 'model')
#: Prefix of the weights of a model saved while wrapped in (Distributed)DataParallel.
_DATA_PARALLEL_PREFIX = 'module.'
#: Buffers a checkpoint may lack without changing the model (older BatchNorm checkpoints).
_OPTIONAL_KEY_SUFFIXES = ('num_batches_tracked', )
_MAX_KEYS_IN_MESSAGE = 8
#: Weight-initialiser type that ``init_cfg=dict(type='Pretrained', ...)`` of a TimmBackbone becomes.
TIMM_PRETRAINED_INIT = 'TimmPretrained'


class TimmUnavailableError(ImportError):
    """timm (or the torchvision it imports) is missing or cannot be imported."""


def import_timm():
    """Import timm, or explain how to install it.

    Returns:
        module: The ``timm`` package.

    Raises:
        TimmUnavailableError: timm is not installed, or importing it fails (e.g. a CUDA build of
            torchvision next to a CPU-only torch: ``operator torchvision::nms does not exist``).
    """
    try:
        import timm
    except ImportError as error:
        raise TimmUnavailableError(
            f'TimmBackbone needs timm ({TIMM_REQUIREMENT}) and torchvision, which cannot be imported: {error}. '
            f'Install them with `bash tools/install.sh` (it also makes torchvision importable next to a CPU-only '
            f'torch), or `pip install -c requirements/constraints.txt {TIMM_REQUIREMENT}`; see '
            f'docs/timm_backbones.md.') from error
    except RuntimeError as error:
        raise TimmUnavailableError(
            f'timm is installed but importing it fails: {error}. This is what a CUDA build of torchvision does '
            f'next to a CPU-only torch; re-run `bash tools/install.sh`, which installs the torchvision matching '
            f'the installed torch and makes it importable (docs/install.md).') from error
    return timm


def timm_weights_url(model_name: str) -> Optional[str]:
    """Where timm downloads the pretrained weights of ``model_name`` (``name`` or ``name.tag``) from.

    Returns:
        The Hugging Face hub file URL (timm's format, safetensors) when the model's default or given
        pretrained tag has one, else timm's direct URL, else None.
    """
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        file_name = cfg.hf_hub_filename or 'model.safetensors'
        return f'https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{file_name}'
    return cfg.url or None


def timm_feature_info(model_name: str, out_indices: Sequence[int], **timm_kwargs) -> Dict[str, List[int]]:
    """Channels and strides of the features a :class:`TimmBackbone` returns, without building its weights.

    Use it to fill in the neck's ``in_channels``::

        >>> timm_feature_info('convnext_tiny', (1, 2, 3))
        {'channels': [192, 384, 768], 'strides': [8, 16, 32]}

    Args:
        model_name: timm model name.
        out_indices: timm feature indices (see :class:`TimmBackbone`).
        **timm_kwargs: Further arguments of ``timm.create_model``.

    Returns:
        ``channels`` and ``strides`` (input pixels per feature pixel), one per entry of ``out_indices``.
    """
    timm = import_timm()
    with torch.device('meta'):  # shapes only: no memory, no random initialisation
        model = timm.create_model(
            model_name, pretrained=False, features_only=True, out_indices=tuple(out_indices), **timm_kwargs)
    return dict(channels=list(model.feature_info.channels()), strides=list(model.feature_info.reduction()))


def _normalized(key: str) -> str:
    """A parameter name with ``.`` and ``_`` made equal.

    timm's feature wrappers flatten ``stages.0`` of the classification model into a module named
    ``stages_0``; comparing normalised names maps the wrapper's keys onto the checkpoint's.
    """
    return key.replace('.', '_')


def _key_list(keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f' and {more} more' if more > 0 else '')


def load_timm_state_dict(checkpoint: str, map_location: Union[str, torch.device, None] = 'cpu') -> Dict[str, Tensor]:
    """Read the weights of a timm-format checkpoint with brs_detr's safe loading.

    ``.safetensors`` files (timm's Hugging Face hub format) are read with safetensors, which cannot run code.
    Everything else goes through mmengine's ``CheckpointLoader``, i.e. brs_detr's loaders
    (:mod:`brs_detr.fileio.checkpoint`): ``torch.load(weights_only=True)`` unless the file is trusted,
    checksum-verified downloads for ``http(s)://``. Weights nested under ``state_dict`` or ``model`` are
    unpacked and a ``module.`` prefix (DataParallel) is removed.

    Args:
        checkpoint: Local file, or a URL / ``torchvision://`` name of a ``torch.save`` file.
        map_location: Device of the returned tensors.

    Returns:
        Parameter name -> tensor.
    """
    if checkpoint.endswith(SAFETENSORS_SUFFIX):
        if '://' in checkpoint:
            raise ValueError(f'{checkpoint}: download .safetensors files first (e.g. with curl -L -o FILE URL) and '
                             f'give the local path as init_cfg checkpoint')
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'{checkpoint} can not be found.')
        from safetensors.torch import load_file  # installed with timm
        device = 'cpu' if map_location is None else str(map_location)
        return load_file(checkpoint, device=device)
    from mmengine.runner import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    for key in _NESTED_STATE_DICT_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict):
        raise TypeError(f'{checkpoint}: expected a state dict (name -> tensor), got {type(loaded).__name__}')
    if loaded and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in loaded):
        loaded = {key[len(_DATA_PARALLEL_PREFIX):]: value for key, value in loaded.items()}
    return loaded


@MODELS.register_module()
class TimmBackbone(BaseModule):
    """A timm model's feature pyramid (``features_only=True``) as an mmdet backbone.

    Compared with mmpretrain's ``TIMMBackbone`` (a different class, not needed here): mmdet's ResNet
    semantics for ``frozen_stages`` and ``norm_eval``, weights from a local timm checkpoint through
    brs_detr's safe loading, no hub download unless ``pretrained=True``, and NCHW outputs for every model.

    Feature indices are timm's (``model.feature_info``): for timm's ResNets feature 0 is the stem (stride 2)
    and features 1-4 are ``layer1``-``layer4``, so ``out_indices=(1, 2, 3, 4)``/``frozen_stages=1`` are mmdet
    ResNet's ``(0, 1, 2, 3)``/``1``; for ConvNeXt features 0-3 are the four stages (stride 4-32, stem in 0).
    :func:`timm_feature_info` and :attr:`out_channels` give the channels to set as the neck's ``in_channels``.

    Args:
        model_name: timm model name, optionally with a pretrained tag (``'convnext_tiny.fb_in1k'``).
        out_indices: timm feature indices to return, shallow to deep.
        frozen_stages: Freeze (``requires_grad=False`` and eval mode) every module registered before the
            module producing feature ``frozen_stages`` and that module itself; -1 freezes nothing. Must not
            exceed ``max(out_indices)``.
        norm_eval: Keep every BatchNorm layer in eval mode during training (running statistics frozen), as
            mmdet's ResNet. Defaults to False.
        pretrained: Let timm download its pretrained weights from the Hugging Face hub at build time. Defaults
            to False; prefer ``init_cfg=dict(type='Pretrained', checkpoint=LOCAL_FILE)``.
        with_cp: Gradient checkpointing in timm's feature wrapper (where it supports it).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH[, prefix=...])`` loads a timm-format checkpoint
            (the classification model's state dict, ``.safetensors`` or ``torch.save`` file; the classifier and
            the stages after ``max(out_indices)`` are ignored, every other weight must be present) through
            :class:`TimmPretrainedInit`, which the entry is turned into. Other mmengine init types are applied
            as usual, before it.
        **timm_kwargs: Further arguments of ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...).

    Shapes:
        input: ``(N, C_in, H, W)``; output: one ``(N, C_i, H / s_i, W / s_i)`` tensor per ``out_indices``
        entry, with ``C_i = out_channels[i]`` and ``s_i = out_strides[i]``.
    """

    def __init__(self,
                 model_name: str,
                 out_indices: Sequence[int] = (1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 pretrained: bool = False,
                 with_cp: bool = False,
                 init_cfg: OptMultiConfig = None,
                 **timm_kwargs) -> None:
        super().__init__(init_cfg=init_cfg)
        out_indices = tuple(int(index) for index in out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'TimmBackbone({model_name}): out_indices must be increasing and not empty, '
                             f'got {out_indices}')
        if frozen_stages < -1 or frozen_stages > out_indices[-1]:
            raise ValueError(f'TimmBackbone({model_name}): frozen_stages={frozen_stages} must lie in [-1, '
                             f'{out_indices[-1]}] (max(out_indices); later stages are not built)')
        self.init_cfg = _with_timm_pretrained_init(init_cfg)
        if pretrained and self.init_cfg and self.init_cfg[-1]['type'] == TIMM_PRETRAINED_INIT:
            raise ValueError(f'TimmBackbone({model_name}): give either pretrained=True (timm downloads its weights) '
                             f'or an init_cfg of type Pretrained, not both')
        timm = import_timm()
        self.model_name = model_name
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        try:
            self.model = timm.create_model(
                model_name, pretrained=pretrained, features_only=True, out_indices=out_indices, **timm_kwargs)
        except Exception as error:
            if not pretrained:
                raise
            raise RuntimeError(
                f'TimmBackbone: timm could not load the pretrained weights of {model_name} '
                f'({type(error).__name__}: {error}). Without network access, download {timm_weights_url(model_name)} '
                f'on a machine that has it and use pretrained=False, '
                f"init_cfg=dict(type='Pretrained', checkpoint=LOCAL_FILE); see docs/timm_backbones.md.") from error
        if with_cp:
            if not hasattr(self.model, 'set_grad_checkpointing'):
                raise ValueError(f'TimmBackbone({model_name}): timm\'s {type(self.model).__name__} has no gradient '
                                 f'checkpointing; set with_cp=False')
            self.model.set_grad_checkpointing(True)
        feature_info = self.model.feature_info
        self.out_channels: List[int] = list(feature_info.channels())
        self.out_strides: List[int] = list(feature_info.reduction())
        output_format = getattr(self.model, 'output_fmt', 'NCHW')
        self._channels_last = getattr(output_format, 'value', output_format) == 'NHWC'
        self._frozen_modules = self._modules_up_to_feature(frozen_stages) if frozen_stages >= 0 else []
        self._freeze_stages()

    def _modules_up_to_feature(self, index: int) -> List[nn.Module]:
        """The modules registered before the module producing feature ``index``, and that module's subtree.

        Modules that contain the feature's module (its ancestors) are not included: their other children
        run later. timm registers the modules of its CNNs in execution order.
        """
        feature_module = self.model.feature_info.info[index]['module']
        names = [name for name, _ in self.model.named_modules() if name]
        target = [name for name in names if _normalized(name) == _normalized(feature_module)]
        if not target:  # wrappers that keep the classification model as a submodule (``model.blocks.3``)
            target = [name for name in names
                      if '.' in name and _normalized(name.split('.', 1)[1]) == _normalized(feature_module)]
        if len(target) != 1:
            raise NotImplementedError(
                f'TimmBackbone({self.model_name}): cannot locate the module {feature_module!r} of feature {index} '
                f'in timm\'s {type(self.model).__name__} to freeze the stages up to it; use frozen_stages=-1')
        target = target[0]
        frozen, reached = [], False
        for name, module in self.model.named_modules():
            if not name:
                continue
            if name == target or name.startswith(target + '.'):
                reached = True
                frozen.append(module)
            elif reached:  # pre-order: the target's subtree has ended
                break
            elif not target.startswith(name + '.'):  # not an ancestor of the target
                frozen.append(module)
        return frozen

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules:
            module.eval()
            for param in module.parameters(recurse=False):
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'TimmBackbone':
        """Set the training mode, keeping the frozen stages (and with ``norm_eval`` every BatchNorm) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        """Feature maps of ``inputs`` ``(N, C_in, H, W)``: one ``(N, C_i, H_i, W_i)`` per ``out_indices`` entry."""
        features = self.model(inputs)
        if isinstance(features, dict):
            features = list(features.values())
        if self._channels_last:  # e.g. timm's Swin returns NHWC features
            features = [feature.permute(0, 3, 1, 2).contiguous() for feature in features]
        return tuple(features)

    def load_timm_checkpoint(self,
                             checkpoint: str,
                             prefix: Optional[str] = None,
                             map_location: Union[str, torch.device, None] = 'cpu') -> None:
        """Load the weights of a timm-format checkpoint into the feature layers.

        Args:
            checkpoint: ``.safetensors`` or ``torch.save`` file of the timm classification model (or a
                checkpoint of this backbone); see :func:`load_timm_state_dict`.
            prefix: Use only the keys that start with it, with it removed (``'backbone.'`` for a detector).
            map_location: Device of the loaded tensors.

        Raises:
            FileNotFoundError: ``checkpoint`` does not exist (the message says where timm's weights are).
            KeyError: A weight of the feature layers is missing from the checkpoint.
            ValueError: A weight's shape differs from the model's.
        """
        if '://' not in checkpoint and not osp.isfile(osp.expanduser(checkpoint)):
            url = timm_weights_url(self.model_name)
            source = f'timm\'s weights of {self.model_name} are at {url}' if url else \
                f'timm has no pretrained weights for {self.model_name}'
            raise FileNotFoundError(f'TimmBackbone: checkpoint {checkpoint} does not exist ({source}; download the '
                                    f'file on a machine with network access and place it there, or set '
                                    f'init_cfg=None for random weights). See docs/timm_backbones.md.')
        source = load_timm_state_dict(osp.expanduser(checkpoint), map_location=map_location)
        if prefix:
            source = {key[len(prefix):]: value for key, value in source.items() if key.startswith(prefix)}
            if not source:
                raise KeyError(f'{checkpoint}: no key starts with prefix {prefix!r}')
        state_dict = self._map_to_own_keys(source, checkpoint)
        self.model.load_state_dict(state_dict, strict=False)
        print_log(f'TimmBackbone: loaded {len(state_dict)} tensors of {self.model_name} from {checkpoint} '
                  f'({len(source) - len(state_dict)} checkpoint tensors unused: classifier, later stages)',
                  logger='current', level=logging.INFO)

    def _map_to_own_keys(self, source: Dict[str, Tensor], checkpoint: str) -> Dict[str, Tensor]:
        """Rename the checkpoint's keys to timm's feature wrapper's keys; every own weight must be found."""
        by_normalized: Dict[str, str] = {}
        for key in source:
            other = by_normalized.setdefault(_normalized(key), key)
            if other != key:
                raise KeyError(f'{checkpoint}: keys {other!r} and {key!r} cannot be told apart')
        own = self.model.state_dict()
        mapped, missing, mismatched = {}, [], []
        for key, own_value in own.items():
            # the classification model's keys, or ours (a checkpoint of this backbone, model.<key>), or those
            # of a wrapper that keeps the classification model under ``model.``
            candidates = [key, f'model.{key}'] + ([key.split('.', 1)[1]] if key.startswith('model.') else [])
            found = next((by_normalized[_normalized(c)] for c in candidates if _normalized(c) in by_normalized),
                         None)
            if found is None:
                if not key.endswith(_OPTIONAL_KEY_SUFFIXES):
                    missing.append(key)
                continue
            if source[found].shape != own_value.shape:
                mismatched.append(f'{found} {tuple(source[found].shape)} vs {tuple(own_value.shape)}')
                continue
            mapped[key] = source[found]
        if missing:
            raise KeyError(
                f'TimmBackbone({self.model_name}): {checkpoint} lacks {len(missing)} of the {len(own)} weights of '
                f'the feature layers ({_key_list(missing)}). Is it a timm-format checkpoint of {self.model_name}? '
                f'Checkpoints in other layouts (e.g. the original ConvNeXt release) must be converted to timm\'s '
                f'first (docs/timm_backbones.md).')
        if mismatched:
            raise ValueError(f'TimmBackbone({self.model_name}): {checkpoint} has weights of other shapes (checkpoint '
                             f'vs model): {_key_list(mismatched)}')
        return mapped



def _with_timm_pretrained_init(init_cfg: OptMultiConfig) -> Optional[List[dict]]:
    """``init_cfg`` with its ``Pretrained`` entry turned into :class:`TimmPretrainedInit`, placed last.

    mmengine applies ``Pretrained`` after every other initialiser; the replacement keeps that order.
    """
    if not init_cfg:
        return None
    cfgs = [dict(cfg) for cfg in (init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg])]
    pretrained = [cfg for cfg in cfgs if cfg['type'] in ('Pretrained', TIMM_PRETRAINED_INIT)]
    if len(pretrained) > 1:
        raise ValueError(f'TimmBackbone: more than one Pretrained init_cfg: {pretrained}')
    others = [cfg for cfg in cfgs if cfg['type'] not in ('Pretrained', TIMM_PRETRAINED_INIT)]
    return others + [dict(cfg, type=TIMM_PRETRAINED_INIT) for cfg in pretrained]


@WEIGHT_INITIALIZERS.register_module(name=TIMM_PRETRAINED_INIT)
class TimmPretrainedInit:
    """Weight initialiser that loads a timm-format checkpoint into a :class:`TimmBackbone`.

    Replaces mmengine's ``PretrainedInit`` for this backbone: that one reads ``.pth`` files only and
    expects the module's own key names, while timm checkpoints are often ``.safetensors`` and name the
    classification model's modules (``stages.0.…``), which timm's feature wrapper renames (``stages_0.…``).

    Args:
        checkpoint: Local ``.safetensors`` / ``torch.save`` file, or a URL of a ``torch.save`` file.
        prefix: Use only the checkpoint keys that start with it (``'backbone.'``), with it removed.
        map_location: Device of the loaded tensors.
    """

    def __init__(self,
                 checkpoint: str,
                 prefix: Optional[str] = None,
                 map_location: Union[str, torch.device, None] = 'cpu') -> None:
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.map_location = map_location

    def __call__(self, module: nn.Module) -> None:
        if not isinstance(module, TimmBackbone):
            raise TypeError(f'{TIMM_PRETRAINED_INIT} initialises TimmBackbone only, got {type(module).__name__}')
        module.load_timm_checkpoint(self.checkpoint, prefix=self.prefix, map_location=self.map_location)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=f'{TIMM_PRETRAINED_INIT}: loaded from {self.checkpoint}')
