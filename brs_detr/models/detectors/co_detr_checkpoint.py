"""Key conversion from the original mmdet 2.x Co-DETR / BRS-DETR checkpoints to :class:`CoDETR`.

The original model (Sense-X/Co-DETR, and the BRS authors' fork) keeps the transformer inside the
query head and uses mmcv 1.x transformer bricks; :class:`CoDETR` uses mmdet 3.x's native
Deformable-DETR layout. Tensors are unchanged except the Swin patch-merging weights, whose
channel order differs between the original Swin code and mmdet's ``SwinTransformer``.
"""
import re
from collections import OrderedDict
from typing import Callable, List, Mapping, Tuple

from torch import Tensor

from mmdet.models.backbones.swin import swin_converter

# (pattern, replacement) applied in order to keys below ``query_head.``
_QUERY_HEAD_RULES: List[Tuple[str, str]] = [
    (r'^transformer\.encoder\.layers\.(\d+)\.attentions\.0\.',
     r'encoder.layers.\1.self_attn.'),
    (r'^transformer\.encoder\.layers\.(\d+)\.ffns\.0\.',
     r'encoder.layers.\1.ffn.'),
    (r'^transformer\.encoder\.layers\.(\d+)\.norms\.', r'encoder.layers.\1.norms.'),
    (r'^transformer\.decoder\.layers\.(\d+)\.attentions\.0\.',
     r'decoder.layers.\1.self_attn.'),
    (r'^transformer\.decoder\.layers\.(\d+)\.attentions\.1\.',
     r'decoder.layers.\1.cross_attn.'),
    (r'^transformer\.decoder\.layers\.(\d+)\.ffns\.0\.',
     r'decoder.layers.\1.ffn.'),
    (r'^transformer\.decoder\.layers\.(\d+)\.norms\.', r'decoder.layers.\1.norms.'),
    (r'^transformer\.level_embeds$', 'level_embed'),
    (r'^transformer\.enc_output\.', 'memory_trans_fc.'),
    (r'^transformer\.enc_output_norm\.', 'memory_trans_norm.'),
    (r'^transformer\.pos_trans\.', 'pos_trans_fc.'),
    (r'^transformer\.pos_trans_norm\.', 'pos_trans_norm.'),
    (r'^transformer\.reference_points\.', 'reference_points_fc.'),
    (r'^transformer\.(head_pos_embed|aux_pos_trans|aux_pos_trans_norm|'
     r'pos_feats_trans|pos_feats_norm)\.', r'\1.'),
    (r'^(cls_branches|reg_branches)\.', r'bbox_head.\1.'),
    (r'^query_embedding\.', 'query_embedding.'),
    (r'^downsample\.', 'downsample.'),
]

# top-level prefixes that keep their name
_UNCHANGED_PREFIXES = ('backbone.', 'neck.', 'rpn_head.', 'roi_head.')


def _convert_query_head_key(key: str) -> str:
    """Map a key below ``query_head.`` (without that prefix)."""
    for pattern, replacement in _QUERY_HEAD_RULES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    raise KeyError(f'unknown query head key: query_head.{key}')


def is_legacy_co_detr_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether ``state_dict`` has the mmdet 2.x Co-DETR layout."""
    return any(key.startswith('query_head.') for key in state_dict)


def _convert_swin_backbone(state_dict: 'OrderedDict[str, Tensor]'
                           ) -> 'OrderedDict[str, Tensor]':
    """Convert original-Swin backbone keys (``backbone.layers.*``) to mmdet's
    ``SwinTransformer`` (``backbone.stages.*``, reordered patch merging)."""
    backbone = OrderedDict((key[len('backbone.'):], value)
                           for key, value in state_dict.items()
                           if key.startswith('backbone.'))
    converted = swin_converter(backbone)  # keys come back with 'backbone.'
    result = OrderedDict()
    inserted = False
    for key, value in state_dict.items():
        if key.startswith('backbone.'):
            if not inserted:
                result.update(converted)
                inserted = True
            continue
        result[key] = value
    return result


def convert_co_detr_state_dict(
        state_dict: Mapping[str, Tensor],
        log: Callable[[str], None] = lambda msg: None
) -> 'OrderedDict[str, Tensor]':
    """Convert an mmdet 2.x Co-Deformable-DETR or BRS-DETR state dict.

    Handles the ``module.`` prefix of DDP checkpoints, the transformer keys
    (``query_head.transformer.*`` -> ``encoder.*``, ``decoder.*``,
    ``level_embed``, ``memory_trans_fc``, ``pos_trans_fc``...), the query
    head branches (``query_head.cls_branches`` -> ``bbox_head.cls_branches``),
    the dense auxiliary heads (``bbox_head.{i}`` -> ``aux_bbox_head.{i}``) and
    original-Swin backbones (``backbone.layers`` -> ``backbone.stages``).
    A state dict already in this layout is returned unchanged.

    Args:
        state_dict (Mapping[str, Tensor]): The original ``state_dict``.
        log (callable): Receives one line per notable step.

    Returns:
        OrderedDict[str, Tensor]: The converted state dict (same tensors).

    Raises:
        KeyError: On a key this converter does not know.
    """
    if all(key.startswith('module.') for key in state_dict) and state_dict:
        state_dict = OrderedDict(
            (key[len('module.'):], value) for key, value in state_dict.items())
        log("stripped the 'module.' prefix")
    if not is_legacy_co_detr_state_dict(state_dict):
        log('no query_head.* keys: already in the mmdet 3.x layout')
        return OrderedDict(state_dict)

    converted = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('query_head.'):
            new_key = _convert_query_head_key(key[len('query_head.'):])
        elif key.startswith('bbox_head.'):
            new_key = 'aux_' + key
        elif key.startswith(_UNCHANGED_PREFIXES):
            new_key = key
        else:
            raise KeyError(f'unknown key in a Co-DETR checkpoint: {key}')
        if new_key in converted:
            raise KeyError(f'two keys map to {new_key}')
        converted[new_key] = value

    if any(key.startswith('backbone.layers.') for key in converted):
        converted = _convert_swin_backbone(converted)
        log('converted the Swin backbone (layers -> stages, patch merging '
            'channel order)')
    log(f'converted {len(converted)} entries')
    return converted
