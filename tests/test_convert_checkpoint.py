"""Conversion of the published (mmdet 2.x) checkpoints: brs_detr.zoo and tools/convert_checkpoint.py.

The state dicts have the exact layouts of the original models (tests/data/layouts/<model-zoo entry>.json, built
from the authors' code; see tests/state_dict_layouts.py) and random values.
"""
import hashlib
import os
import os.path as osp
import pickle
import subprocess
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

import brs_detr  # noqa: F401
from brs_detr.models.detectors import convert_co_detr_state_dict
from brs_detr.zoo.index import STATUS_NOT_RELEASED, entry_status, load_index
from brs_detr.zoo import (CheckpointReadError, ConversionError, build_model, check_strict_load, convert_and_check,
                          convert_state_dict_for_config, read_checkpoint, split_checkpoint)
from mmdet.models.backbones.swin import swin_converter
from conftest import load_tool_module
from state_dict_layouts import layout_names, load_layout, random_state_dict

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'convert_checkpoint.py')
CO_DETR_R50 = osp.join(ROOT, 'configs', 'co_deformable_detr', 'co_deformable_detr_r50_8xb2-12e_coco.py')
CO_DETR_SWIN_T = osp.join(ROOT, 'configs', 'co_deformable_detr', 'co_deformable_detr_swin-t-p4-w7_8xb2-12e_coco.py')
BRS_DETR_R50 = osp.join(ROOT, 'configs', 'brs_detr', 'brs-detr_r50_4xb4-12e_coco.py')
RANK_BASED = osp.join(ROOT, 'configs', 'rank_based')
#: Released checkpoints without a layout file: their random state dicts (235 M parameters) are too large here.
NO_LAYOUT = {'co-deformable-detr_swin-l_12e_coco_co-detr-paper'}
ZOO = load_index()


def save_legacy_checkpoint(state_dict, path):
    """Save like mmdet 2.x: the meta pickles an object of a class that no longer exists (a fake mmcv 1.x
    ConfigDict) and numpy scalars; the optimizer state is saved too."""
    module = types.ModuleType('legacy_mmcv_utils_config')
    config_dict = type('ConfigDict', (dict, ), {'__module__': module.__name__})
    module.ConfigDict = config_dict
    sys.modules[module.__name__] = module
    try:
        meta = dict(mmdet_version='2.25.3', config=config_dict(lr=2e-4), epoch=12, seed=np.int64(7),
                    CLASSES=('person', 'bicycle'))
        torch.save(dict(meta=meta, state_dict=state_dict, optimizer=dict(state={}, param_groups=[])), path)
    finally:
        del sys.modules[module.__name__]


def run_tool(*args):
    """The tool in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


tool = load_tool_module('convert_checkpoint')


_models = {}


def shape_model(config):
    """The model of ``config`` for shape checks: parameters on the meta device where it builds there (fast, no
    memory), on the CPU otherwise (Swin computes its drop-path rates with .item())."""
    if config not in _models:
        _models.clear()  # keep at most one model alive
        try:
            with torch.device('meta'):
                _models[config] = build_model(config)
        except (RuntimeError, NotImplementedError):
            _models[config] = build_model(config)
    return _models[config]


# ----------------------------------------------------------------------------- the layouts and the zoo


def test_every_released_detector_has_an_original_layout():
    names = set(layout_names())
    for name, entry in ZOO.items():
        released = entry['kind'] == 'detector' and entry_status(entry) != STATUS_NOT_RELEASED
        if released and name not in NO_LAYOUT:
            assert name in names, f'{name} has a checkpoint but no tests/data/layouts/{name}.json'
    for name in names:
        entry = ZOO.get(name)
        assert entry is not None and entry['kind'] == 'detector', f'layout {name} is no model-zoo detector'
        assert entry_status(entry) != STATUS_NOT_RELEASED, f'layout {name}: the entry has no checkpoint'
        assert load_layout(name)['project_config'] == entry['config']


@pytest.mark.parametrize('name', layout_names())
def test_original_layout_converts_and_loads_strictly(name):
    """Each published checkpoint's layout converts for its zoo entry's config and loads into it strictly, with
    as many state elements as the original model."""
    layout = load_layout(name)
    config = osp.join(ROOT, ZOO[name]['config'])
    state_dict = OrderedDict((key, torch.empty(shape)) for key, shape in layout['state_dict'])
    converted = convert_and_check(state_dict, config, model=shape_model(config))
    assert len(converted) == layout['num_state_entries']
    assert sum(value.numel() for value in converted.values()) == layout['num_state_elements']


def test_cnn_conversion_keeps_every_tensor_and_strips_ddp_prefix():
    layout = load_layout('rs-atss_r50_fpn_12e_coco_rs-paper')
    source = random_state_dict(layout)
    config = osp.join(RANK_BASED, 'rs-atss_r50_fpn_4xb4-12e_coco.py')
    wrapped = OrderedDict(('module.' + key, value) for key, value in source.items())
    converted = convert_state_dict_for_config(wrapped, config)
    assert list(converted) == list(source)
    assert all(converted[key] is value for key, value in source.items())
    assert 'bbox_head.atss_centerness.weight' not in converted  # the rank-based head has no centerness


def test_r50_layout_keys_move_and_tensors_stay():
    layout = load_layout('co-deformable-detr_r50_12e_coco_co-detr-paper')
    source = random_state_dict(layout)
    converted = convert_and_check(source, CO_DETR_R50)
    assert len(converted) == layout['num_state_entries']
    pairs = {
        'query_head.transformer.level_embeds': 'level_embed',
        'query_head.transformer.enc_output.weight': 'memory_trans_fc.weight',
        'query_head.transformer.pos_trans.weight': 'pos_trans_fc.weight',
        'query_head.transformer.head_pos_embed.weight': 'head_pos_embed.weight',
        'query_head.transformer.decoder.layers.3.attentions.1.sampling_offsets.bias':
        'decoder.layers.3.cross_attn.sampling_offsets.bias',
        'query_head.transformer.encoder.layers.5.ffns.0.layers.1.weight': 'encoder.layers.5.ffn.layers.1.weight',
        'query_head.cls_branches.6.bias': 'bbox_head.cls_branches.6.bias',
        'query_head.downsample.1.weight': 'downsample.1.weight',
        'bbox_head.0.atss_centerness.weight': 'aux_bbox_head.0.atss_centerness.weight',
        'roi_head.0.bbox_head.fc_cls.weight': 'roi_head.0.bbox_head.fc_cls.weight',
        'backbone.layer4.2.bn3.num_batches_tracked': 'backbone.layer4.2.bn3.num_batches_tracked',
    }
    for old, new in pairs.items():
        assert converted[new] is source[old], old


def test_swin_t_patch_merging_is_reordered_as_mmdet_does():
    layout = load_layout('co-deformable-detr_swin-t_12e_coco_co-detr-paper')
    source = random_state_dict(layout)
    converted = convert_and_check(source, CO_DETR_SWIN_T, model=shape_model(CO_DETR_SWIN_T))
    expected = swin_converter({'layers.1.downsample.reduction.weight':
                               source['backbone.layers.1.downsample.reduction.weight']})
    assert torch.equal(converted['backbone.stages.1.downsample.reduction.weight'],
                       expected['backbone.stages.1.downsample.reduction.weight'])
    assert torch.equal(converted['backbone.stages.2.blocks.3.attn.w_msa.qkv.weight'],
                       source['backbone.layers.2.blocks.3.attn.qkv.weight'])


def test_conversion_is_idempotent():
    model = shape_model(CO_DETR_R50)
    state = model.state_dict()
    assert list(convert_state_dict_for_config(state, CO_DETR_R50)) == list(state)


# ----------------------------------------------------------------------------- mismatches are explained


def _empty(layout, drop=(), add=None):
    state = OrderedDict((key, torch.empty(shape)) for key, shape in layout['state_dict'] if key not in drop)
    state.update(add or {})
    return state


@pytest.mark.parametrize('layout, config, causes', [
    ('co-deformable-detr_r50_12e_coco_co-detr-paper', BRS_DETR_R50,
     ['one more than the config\'s 80 classes', 'atss_centerness']),
    ('brs-detr_r50_12e_coco', CO_DETR_R50, ['rank-based (sigmoid, no background row)', 'centerness / IoU branch']),
    ('rs-faster-rcnn_r50_fpn_12e_coco', osp.join(RANK_BASED, 'rs-faster-rcnn_r101-mdconv-group4-c3-c5_fpn_ms-4xb4-36e_'
                                                              'coco.py'),
     ['ResNet-50 backbone, the config a ResNet-101', 'deformable convolutions the checkpoint lacks']),
    ('rs-mask-rcnn_r50_fpn_ms-12e_lvis-v1', osp.join(RANK_BASED, 'rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py'),
     ['another number of classes']),
    ('rs-mask-rcnn_r50_fpn_12e_coco', osp.join(RANK_BASED, 'rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py'),
     ['it is a Mask R-CNN checkpoint']),
])
def test_a_mismatch_names_the_keys_and_the_likely_cause(layout, config, causes):
    with pytest.raises(ConversionError) as error:
        convert_and_check(_empty(load_layout(layout)), config, model=shape_model(config))
    message = str(error.value)
    assert 'do not fit the model of' in message
    for cause in causes:
        assert cause in message


def test_standard_atss_checkpoint_is_recognised():
    layout = load_layout('rs-atss_r50_fpn_12e_coco')
    config = osp.join(RANK_BASED, 'rs-atss_r50_fpn_4xb4-12e_coco.py')
    state = _empty(layout, add={'bbox_head.atss_centerness.weight': torch.empty(3, 256, 3, 3),
                                'bbox_head.atss_centerness.bias': torch.empty(3)})
    with pytest.raises(ConversionError, match='not in the model \\(2\\): bbox_head.atss_centerness.weight'):
        convert_and_check(state, config, model=shape_model(config))


def test_unknown_key_is_reported():
    with pytest.raises(ConversionError, match='query_head.transformer.foo'):
        convert_state_dict_for_config({'query_head.transformer.foo': torch.zeros(1)}, CO_DETR_R50)


# ----------------------------------------------------------------------------- reading files safely


class _RunsCode:
    """Pickles as a call of exec(): what a malicious checkpoint can do when unpickled with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({str(self.marker)!r}, "w").write("pwned")', )


def test_reading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict={'w': torch.ones(2)}, meta=dict(payload=_RunsCode(marker))), path)
    with pytest.raises(pickle.UnpicklingError):  # torch's safe loader refuses it ...
        torch.load(path, weights_only=True)
    checkpoint = read_checkpoint(str(path))  # ... this reads it, inertly
    assert not marker.exists()
    state_dict, meta = split_checkpoint(checkpoint, str(path))
    assert torch.equal(state_dict['w'], torch.ones(2))
    assert type(meta['payload']).__name__ == 'exec' and 'pwned' in meta['payload'].pickled_args[0]


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / 'page.pth'
    path.write_text('<!DOCTYPE html><html>quota exceeded</html>')
    with pytest.raises(CheckpointReadError, match='not a PyTorch checkpoint'):
        read_checkpoint(str(path))


# ----------------------------------------------------------------------------- the tool, as a user runs it


@pytest.mark.parametrize('layout, config', [
    ('co-deformable-detr_r50_12e_coco', CO_DETR_R50),
    ('brs-detr_r50_12e_coco', BRS_DETR_R50),
    ('brs-faster-rcnn_r50_fpn_12e_coco', osp.join(RANK_BASED, 'brs-faster-rcnn_r50_fpn_4xb4-12e_coco.py')),
])
def test_tool_end_to_end(tmp_path, layout, config):
    """An mmdet 2.x file (pickled meta objects, optimizer state) converts without --trust, loads strictly, and the
    result is a plain checkpoint that loads with weights_only=True into the config's model."""
    source = random_state_dict(load_layout(layout), seed=3)
    src = tmp_path / 'published.pth'
    dst = tmp_path / 'out' / 'converted.pth'
    save_legacy_checkpoint(source, src)
    done = run_tool(src, dst, '--config', config)
    assert done.returncode == 0, done.stderr
    assert 'loads strictly into' in done.stdout
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    assert f'sha256 {digest}' in done.stdout
    assert os.listdir(tmp_path / 'out') == ['converted.pth']  # no temporary file left
    checkpoint = torch.load(dst, weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    meta = checkpoint['meta']
    assert meta['source_sha256'] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta['dataset_meta'] == dict(classes=('person', 'bicycle')) and meta['epoch'] == 12
    check_strict_load(shape_model(config), checkpoint['state_dict'], config)  # a meta model: names and shapes
    first_key = next(iter(source))  # the backbone's first conv: the same name in both layouts
    assert torch.equal(checkpoint['state_dict'][first_key], source[first_key])


def test_tool_refuses_a_config_the_weights_do_not_fit(tmp_path, capsys):
    src = tmp_path / 'brs.pth'
    torch.save({'state_dict': random_state_dict(load_layout('brs-detr_r50_12e_coco'), seed=1)}, src)
    assert tool.main([str(src), str(tmp_path / 'x.pth'), '--config', CO_DETR_R50]) == 1
    err = capsys.readouterr().err
    assert 'one more than the config' not in err and 'rank-based (sigmoid' in err
    assert not (tmp_path / 'x.pth').exists()


def test_tool_without_config_guesses_the_layout(tmp_path, capsys):
    layout = load_layout('co-deformable-detr_r50_12e_coco_co-detr-paper')
    src = tmp_path / 'plain.pth'
    torch.save({'state_dict': random_state_dict(layout)}, src)
    assert tool.main([str(src), str(tmp_path / 'dst.pth')]) == 0
    out = capsys.readouterr().out
    assert 'converted 676 entries' in out and 'not checked' in out
    assert set(convert_co_detr_state_dict(random_state_dict(layout))) == set(
        torch.load(tmp_path / 'dst.pth', weights_only=True)['state_dict'])


def test_tool_rejects_missing_file(tmp_path, capsys):
    assert tool.main([str(tmp_path / 'nope.pth'), str(tmp_path / 'dst.pth')]) == 1
    assert 'no such file' in capsys.readouterr().err


def test_layout_files_record_their_provenance():
    for name in layout_names():
        layout = load_layout(name)
        assert layout['source_repo'].startswith('https://github.com/') and len(layout['source_commit']) >= 7
        assert layout['built_with']['mmdet'].startswith('2.'), name
        assert len(layout['state_dict']) == layout['num_state_entries']
