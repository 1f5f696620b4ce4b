"""The released rank-based CNN baselines (RS/BRS/AP/BAP Faster R-CNN, Cascade R-CNN, Mask R-CNN, ATSS, PAA).

Facts, from building the original models (blisgard/BucketedRankingBasedLosses @ 9ba3b0e, mmdet 2.25.3, and
kemaloksuz/RankSortLoss @ b41f64d, mmdet 2.8.0; the layouts are in ``tests/data/layouts/``): their state
dicts have exactly the key names and shapes of the mmdet 3.x models built from this project's configs.

* ResNet / ResNet-DCN (``conv2.conv_offset``), FPN: the same modules in mmdet 2.x and 3.x.
* ``RankBasedRPNHead``: ``rpn_conv``, ``rpn_cls`` with one sigmoid logit per anchor, ``rpn_reg``.
* ``RankBasedShared2FCBBoxHead``: ``shared_fcs.{0,1}``, ``fc_cls`` with ``num_classes`` rows (sigmoid, no
  background row), ``fc_reg`` (class-specific, or 4 rows when class-agnostic as in Cascade R-CNN).
* ``RankBasedATSSHead``: ``cls_convs``/``reg_convs`` (conv + GN), ``atss_cls``, ``atss_reg``, ``scales``; no
  ``atss_centerness``. ``RankBasedPAAHead`` (a ``QFLHead`` there): the same modules, no IoU branch.
* ``RankBasedFCNMaskHead``: ``convs.{0..3}``, ``upsample``, ``conv_logits`` (one mask per class).

So the conversion is a check, not a renaming: unwrap, strip a DDP ``module.`` prefix, and explain a mismatch
in terms of what was probably mixed up (:func:`mismatch_hints`).
"""
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Tuple

from torch import Tensor

#: mmdet detector types whose rank-based variants this module converts.
RANK_BASED_CNN_DETECTORS = ('FasterRCNN', 'MaskRCNN', 'CascadeRCNN', 'ATSS', 'PAA')
_FC_CLS = re.compile(r'^roi_head\.(\d+\.)?bbox_head\.(\d+\.)?fc_cls\.weight$')
_RESNET_BLOCK = re.compile(r'^backbone\.layer(\d)\.(\d+)\.')

Shapes = Mapping[str, Tuple[int, ...]]


def convert_rank_based_cnn_state_dict(state_dict: Mapping[str, Tensor],
                                      log: Callable[[str], None] = lambda msg: None) -> 'OrderedDict[str, Tensor]':
    """Convert an mmdet 2.x rank-based CNN state dict (a ``module.`` prefix already removed) to this project.

    The names and shapes are the same (see the module docstring): the tensors are returned unchanged, in
    their order.

    Raises:
        KeyError: The state dict is a Co-DETR one (``query_head.*`` keys).
    """
    if any(key.startswith('query_head.') for key in state_dict):
        raise KeyError('query_head.* keys: this is a Co-DETR / BRS-DETR checkpoint, not a CNN baseline')
    log(f'mmdet 2.x rank-based CNN layout: {len(state_dict)} entries, names and shapes as in mmdet 3.x')
    return OrderedDict(state_dict)


def _resnet_depth(shapes: Shapes) -> int:
    """50 or 101 (or 152) from the number of blocks in stage 3 (6, 23, 36); 0 when there is no ResNet."""
    blocks = {int(m.group(2)) for key in shapes for m in [_RESNET_BLOCK.match(key)] if m and m.group(1) == '3'}
    return {6: 50, 23: 101, 36: 152}.get(len(blocks), 0)


def mismatch_hints(model_shapes: Shapes, weight_shapes: Shapes) -> List[str]:
    """Likely causes of a mismatch between a model (built from a config) and a checkpoint's weights.

    Args:
        model_shapes: Key -> shape of the model's state dict.
        weight_shapes: Key -> shape of the checkpoint's state dict.

    Returns:
        Sentences, most specific first; empty when no known cause fits.
    """
    hints: List[str] = []
    for key, shape in weight_shapes.items():
        model_shape = model_shapes.get(key)
        if model_shape is None or model_shape == shape:
            continue
        if _FC_CLS.match(key) and shape[0] == model_shape[0] + 1:
            hints.append(f'{key} has {shape[0]} rows, one more than the config\'s {model_shape[0]} classes: a '
                         f'softmax classifier with a background row (a standard, not a rank-based, R-CNN checkpoint)')
        elif _FC_CLS.match(key) and shape[0] + 1 == model_shape[0]:
            hints.append(f'{key} has {shape[0]} rows and the config\'s classifier {model_shape[0]}: a rank-based '
                         f'(sigmoid, no background row) checkpoint loaded into a softmax config')
        elif key == 'rpn_head.rpn_cls.weight' and shape[0] == 2 * model_shape[0]:
            hints.append(f'{key} has two logits per anchor ({shape[0]}): a softmax RPN; the rank-based RPN has one')
        elif key.endswith(('fc_cls.weight', 'atss_cls.weight', 'conv_logits.weight')):
            hints.append(f'{key} is {tuple(shape)} but the config builds {tuple(model_shape)}: the checkpoint was '
                         f'trained for another number of classes (another dataset) or anchors per location')
    extra = set(weight_shapes) - set(model_shapes)
    missing = set(model_shapes) - set(weight_shapes)
    if any('atss_centerness' in key for key in extra):
        hints.append('the checkpoint has atss_centerness (the centerness branch of ATSS / the IoU branch of PAA), '
                     'which the rank-based heads do not have: it is not a rank-based checkpoint')
    if any('atss_centerness' in key for key in missing):
        hints.append('the config has a centerness / IoU branch the checkpoint lacks: a rank-based checkpoint loaded '
                     'into a score-based ATSS/PAA config')
    if any('conv_offset' in key for key in extra):
        hints.append('the checkpoint\'s backbone has deformable convolutions (conv_offset): use the config with '
                     'the DCN backbone (..._r101-mdconv-...)')
    if any('conv_offset' in key for key in missing):
        hints.append('the config\'s backbone has deformable convolutions the checkpoint lacks')
    depths = _resnet_depth(weight_shapes), _resnet_depth(model_shapes)
    if all(depths) and depths[0] != depths[1]:
        hints.append(f'the checkpoint has a ResNet-{depths[0]} backbone, the config a ResNet-{depths[1]}')
    if any(key.startswith('mask_head.') or '.mask_head.' in key for key in extra):
        hints.append('the checkpoint has a mask head: it is a Mask R-CNN checkpoint')
    if any(key.startswith('query_head.') for key in extra):
        hints.append('the checkpoint is a Co-DETR / BRS-DETR one (query_head.*)')
    return hints


def shapes_of(state_dict: Mapping[str, Tensor]) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape."""
    return {key: tuple(value.shape) for key, value in state_dict.items()}
