"""tools/convert_checkpoint.py and the Co-DETR key conversion, on state dicts with the exact layouts
of the original models (tests/data/*_official_state_dict_layout.json, random values)."""
import hashlib
import logging
import os.path as osp
import subprocess
import sys
import types
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

import brs_detr  # noqa: F401
from state_dict_layouts import load_layout, random_state_dict
from brs_detr.models.detectors import convert_co_detr_state_dict
from mmdet.models.backbones.swin import swin_converter
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA_DIR = osp.join(ROOT, 'tests', 'data')
CONFIG_DIR = osp.join(ROOT, 'configs', 'co_deformable_detr')
R50_CONFIG = osp.join(CONFIG_DIR, 'co_deformable_detr_r50_8xb2-12e_coco.py')
SWIN_T_CONFIG = osp.join(CONFIG_DIR,
                         'co_deformable_detr_swin-t-p4-w7_8xb2-12e_coco.py')
TOOL = osp.join(ROOT, 'tools', 'convert_checkpoint.py')

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)


def build(config):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


def save_legacy_checkpoint(state_dict, path):
    """Save like mmdet 2.x: the meta pickles an object of a class that no
    longer exists (here a fake mmcv 1.x ConfigDict)."""
    module = types.ModuleType('legacy_mmcv_utils_config')
    config_dict = type('ConfigDict', (dict, ), {'__module__': module.__name__})
    module.ConfigDict = config_dict
    sys.modules[module.__name__] = module
    try:
        meta = dict(mmdet_version='2.25.3', config=config_dict(lr=2e-4),
                    CLASSES=('person', 'bicycle'))
        torch.save(dict(meta=meta, state_dict=state_dict), path)
    finally:
        del sys.modules[module.__name__]


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope='module')
def r50_model():
    return build(R50_CONFIG)


def test_r50_layout_loads_strictly(r50_model):
    layout = load_layout('co_deformable_detr_r50')
    source = random_state_dict(layout)
    converted = convert_co_detr_state_dict(source)
    r50_model.load_state_dict(converted, strict=True)
    assert len(converted) == layout['num_state_entries']
    num_params = sum(p.numel() for p in r50_model.parameters())
    assert num_params == layout['num_params']
    # tensors are moved, not changed
    model_state = r50_model.state_dict()
    pairs = {
        'query_head.transformer.level_embeds': 'level_embed',
        'query_head.transformer.enc_output.weight': 'memory_trans_fc.weight',
        'query_head.transformer.pos_trans.weight': 'pos_trans_fc.weight',
        'query_head.transformer.head_pos_embed.weight': 'head_pos_embed.weight',
        'query_head.transformer.decoder.layers.3.attentions.1.'
        'sampling_offsets.bias':
        'decoder.layers.3.cross_attn.sampling_offsets.bias',
        'query_head.transformer.encoder.layers.5.ffns.0.layers.1.weight':
        'encoder.layers.5.ffn.layers.1.weight',
        'query_head.cls_branches.6.bias': 'bbox_head.cls_branches.6.bias',
        'query_head.downsample.1.weight': 'downsample.1.weight',
        'bbox_head.0.atss_centerness.weight':
        'aux_bbox_head.0.atss_centerness.weight',
        'roi_head.0.bbox_head.fc_cls.weight': 'roi_head.0.bbox_head.fc_cls.weight',
        'backbone.layer4.2.bn3.num_batches_tracked':
        'backbone.layer4.2.bn3.num_batches_tracked',
    }
    for old, new in pairs.items():
        assert torch.equal(source[old], model_state[new]), old


def test_swin_t_layout_loads_strictly():
    layout = load_layout('co_deformable_detr_swin_t')
    source = random_state_dict(layout)
    converted = convert_co_detr_state_dict(source)
    model = build(SWIN_T_CONFIG)
    model.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in model.parameters()) == layout['num_params']
    # patch merging weights are reordered exactly as mmdet's swin_converter
    expected = swin_converter(
        {'layers.1.downsample.reduction.weight':
         source['backbone.layers.1.downsample.reduction.weight']})
    assert torch.equal(
        converted['backbone.stages.1.downsample.reduction.weight'],
        expected['backbone.stages.1.downsample.reduction.weight'])
    assert torch.equal(converted['backbone.stages.2.blocks.3.attn.w_msa.qkv.weight'],
                       source['backbone.layers.2.blocks.3.attn.qkv.weight'])


def test_brs_detr_layout_keys_are_renamed():
    layout = load_layout('brs_detr_r50')
    converted = convert_co_detr_state_dict(random_state_dict(layout))
    assert len(converted) == layout['num_state_entries']
    assert not any(k.startswith(('query_head.', 'bbox_head.0')) for k in converted)
    assert converted['roi_head.0.bbox_head.fc_cls.weight'].shape == (80, 1024)
    assert 'aux_bbox_head.0.atss_cls.weight' in converted
    assert 'aux_bbox_head.0.atss_centerness.weight' not in converted


def test_conversion_is_idempotent_and_strips_ddp_prefix(r50_model):
    state = r50_model.state_dict()
    assert list(convert_co_detr_state_dict(state)) == list(state)
    layout = load_layout('co_deformable_detr_r50')
    wrapped = OrderedDict(
        ('module.' + k, v) for k, v in random_state_dict(layout).items())
    assert set(convert_co_detr_state_dict(wrapped)) == set(state)


def test_unknown_key_is_reported():
    with pytest.raises(KeyError, match='query_head.transformer.foo'):
        convert_co_detr_state_dict(
            {'query_head.transformer.foo': torch.zeros(1)})


def test_tool_end_to_end(tmp_path):
    layout = load_layout('co_deformable_detr_r50')
    source = random_state_dict(layout, seed=3)
    src = tmp_path / 'co_deformable_detr_r50_1x_coco.pth'
    dst = tmp_path / 'out' / 'converted.pth'
    save_legacy_checkpoint(source, src)

    # weights_only=True refuses the pickled meta: the user is told about --trust
    refused = run_tool(src, dst)
    assert refused.returncode != 0
    assert '--trust' in refused.stderr
    assert not dst.exists()

    done = run_tool(src, dst, '--trust', '--config', R50_CONFIG)
    assert done.returncode == 0, done.stderr
    assert 'loads strictly' in done.stdout
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    assert f'sha256 {digest}' in done.stdout
    assert not list((tmp_path / 'out').glob('*.tmp'))

    checkpoint = torch.load(dst, weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert checkpoint['meta']['source_sha256'] == hashlib.sha256(
        src.read_bytes()).hexdigest()
    model = build(R50_CONFIG)
    model.load_state_dict(checkpoint['state_dict'], strict=True)
    assert torch.equal(checkpoint['state_dict']['level_embed'],
                       source['query_head.transformer.level_embeds'])


def test_tool_reads_plain_state_dict_without_trust(tmp_path):
    layout = load_layout('co_deformable_detr_r50')
    src = tmp_path / 'plain.pth'
    torch.save({'state_dict': random_state_dict(layout)}, src)
    done = run_tool(src, tmp_path / 'dst.pth')
    assert done.returncode == 0, done.stderr
    assert 'converted 676 entries' in done.stdout


def test_tool_rejects_missing_file(tmp_path):
    result = run_tool(tmp_path / 'nope.pth', tmp_path / 'dst.pth')
    assert result.returncode != 0
    assert 'no such file' in result.stderr
