"""Activation checkpointing of the Co-Deformable-DETR encoder and decoder layers (``num_cp``): exact and active.

DDP with checkpointing is covered by tests/test_dist_equivalence.py (the 2-process focal Co-DETR run checkpoints
every encoder and decoder layer and matches a single process without checkpointing).
"""
import copy
import logging
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

import brs_detr  # noqa: F401  (registers the models)
from brs_detr.models.layers import CoDeformableDetrTransformerDecoder, CoDeformableDetrTransformerEncoder
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import dist_equivalence as de

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_LAYERS = 2


def build(config: str, num_cp: int):
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.model.encoder.num_cp = num_cp
    cfg.model.decoder.num_cp = num_cp
    cfg.model.bbox_head.aux_sampling_seed = 0
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.train()


def count_calls(modules) -> list:
    """Count calls of ``modules`` (a pre-hook: a recomputation in backward may stop before the forward returns)."""
    counts = [0]

    def hook(*_):
        counts[0] += 1

    for module in modules:
        module.register_forward_pre_hook(hook)
    return counts


def losses_and_grads(model):
    """Loss terms, gradients and (calls of the transformer layers in forward, in forward + backward)."""
    calls = count_calls([*model.encoder.layers, *model.decoder.layers])
    torch.manual_seed(1)
    batch = model.data_preprocessor(copy.deepcopy(de.make_data([0, 1])), True)
    losses = model(**batch, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    forward_calls = calls[0]
    loss.backward()
    grads = {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}
    return log_vars, grads, (forward_calls, calls[0])


def test_checkpointing_gives_the_same_losses_and_gradients():
    """BRS-DETR tiny (the focal Co-DETR has the same transformer; it runs checkpointed under DDP in
    test_dist_equivalence.py)."""
    config = de.CONFIGS['brs_detr']
    plain, checkpointed = build(config, -1), build(config, TINY_LAYERS)
    for key, value in plain.state_dict().items():  # same weights, same parameter names
        assert torch.equal(checkpointed.state_dict()[key], value), key
    plain_losses, plain_grads, plain_calls = losses_and_grads(plain)
    cp_losses, cp_grads, cp_calls = losses_and_grads(checkpointed)
    # 2 encoder layers once, 2 decoder layers for the queries and the 2 positive-query sets; checkpointed layers run
    # again in backward
    assert plain_calls == (2 + 2 * 3, 2 + 2 * 3)
    assert cp_calls == (2 + 2 * 3, 2 * (2 + 2 * 3))
    assert cp_losses.keys() == plain_losses.keys()
    for key, value in plain_losses.items():
        torch.testing.assert_close(cp_losses[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert cp_grads.keys() == plain_grads.keys()
    assert any('_aux' in key for key in plain_losses)  # the positive-query decoder passes take part
    for key, value in plain_grads.items():
        torch.testing.assert_close(cp_grads[key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_checkpointing_only_while_gradients_are_needed():
    model = build(de.CONFIGS['co_detr'], TINY_LAYERS).eval()
    calls = count_calls([*model.encoder.layers, *model.decoder.layers])
    with torch.no_grad():
        batch = model.data_preprocessor(copy.deepcopy(de.make_data([0])), False)
        model(**batch, mode='predict')
    assert calls[0] == 2 + 2


@pytest.mark.parametrize('num_cp', [-2, TINY_LAYERS + 1])
def test_num_cp_out_of_range_is_refused(num_cp):
    layer = dict(self_attn_cfg=dict(embed_dims=32, num_levels=1), ffn_cfg=dict(embed_dims=32, feedforward_channels=64))
    with pytest.raises(ValueError, match=r'CoDeformableDetrTransformerEncoder: num_cp must lie in \[-1, num_layers=2\]'):
        CoDeformableDetrTransformerEncoder(num_layers=TINY_LAYERS, layer_cfg=layer, num_cp=num_cp)
    decoder_layer = dict(self_attn_cfg=dict(embed_dims=32, num_heads=4, batch_first=True),
                         cross_attn_cfg=dict(embed_dims=32, num_levels=1, batch_first=True),
                         ffn_cfg=dict(embed_dims=32, feedforward_channels=64))
    with pytest.raises(ValueError, match='CoDeformableDetrTransformerDecoder: num_cp must lie in'):
        CoDeformableDetrTransformerDecoder(num_layers=TINY_LAYERS, layer_cfg=decoder_layer, post_norm_cfg=None,
                                           num_cp=num_cp)
