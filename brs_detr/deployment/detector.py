"""Build a detector from a config for export and benchmarks, with its weights loaded strictly (or random)."""
from __future__ import annotations

from typing import Optional, Tuple

from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from mmdet.registry import MODELS

from brs_detr.apis.weights import load_weights_strictly
from brs_detr.engine.runner.class_weights import checkpoint_class_names
from brs_detr.engine.runner.model_build import named_build_errors

#: Detector parameters that mmdet creates with ``torch.Tensor(...)`` (uninitialized memory) and fills only in
#: ``init_weights`` (``normal_``): the level embedding of DeformableDETR, DINO and so Co-DETR / BRS-DETR.
UNINITIALIZED_PARAMETERS = ('level_embed', )


def load_detector(cfg: Config, checkpoint: Optional[str], device: str = 'cpu') -> nn.Module:
    """The detector of ``cfg`` in eval mode on ``device``.

    Args:
        cfg (Config): The model config (``custom_imports`` already imported by ``Config.fromfile``).
        checkpoint (str, optional): Weights, loaded through brs-detr's safe loader and strictly (a key or shape that
            does not fit raises :class:`~brs_detr.apis.weights.WeightsMismatchError`). None keeps PyTorch's default
            initialization (``init_weights`` is not called, so no pretrained backbone is downloaded): for speed
            measurements and tests only. The parameters that mmdet creates uninitialized
            (:data:`UNINITIALIZED_PARAMETERS`) are drawn from N(0, 1) then, as their ``init_weights`` does, instead
            of keeping whatever was in memory (NaN, 1e+30 or denormals, different from run to run).
        device (str): Torch device.
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    with named_build_errors(cfg.model):
        model = MODELS.build(cfg.model)
    if checkpoint is None:
        for name in UNINITIALIZED_PARAMETERS:
            parameter = getattr(model, name, None)
            if isinstance(parameter, nn.Parameter):
                nn.init.normal_(parameter)
    else:
        load_weights(model, checkpoint, cfg)
    model.cfg = cfg
    return model.to(device).eval()


def load_weights(model: nn.Module, checkpoint: str, cfg: Config) -> Optional[Tuple[str, ...]]:
    """Load ``checkpoint`` into ``model`` through brs-detr's safe loader, strictly (see :func:`load_detector`).

    Returns:
        The class names of its meta (label order), if it has them.
    """
    content = _load_checkpoint(checkpoint, map_location='cpu')
    load_weights_strictly(model, content, checkpoint, cfg.filename)
    return checkpoint_class_names(content)
