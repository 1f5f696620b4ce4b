"""One place for the classes (brs_detr.datasets.num_classes) and fine-tuning across class counts (ReliableRunner).

* Every head of a config says ``num_classes='from_dataset'``: changing the datasets' ``metainfo`` changes all of them
  (query head, RoI heads of every cascade stage, ATSS head, mask head; not the RPN), and the COCO / LVIS /
  Cityscapes configs keep the counts of their dataset classes.
* A head with another number is an error naming its config key, before anything is built; so is a built head that
  leaves ``num_classes`` at its class's default.
* ``load_from`` of a checkpoint with another class count loads every weight that fits, keeps the model's own
  initialisation for the class layers, lists them in the log; anything else that does not fit is refused.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from brs_detr.apis.launch import load_config as load_tool_config
from brs_detr.datasets.num_classes import (FROM_DATASET, NumClassesError, check_model_num_classes, check_palettes,
                                           dataset_classes, dataset_leaves, load_config, read_config,
                                           resolve_num_classes)
from brs_detr.engine import CheckpointFitError, ReliableRunner
from brs_detr.engine.runner.class_weights import class_dependent_weights, checkpoint_num_classes
from conftest import CONFIGS_DIR, load_tool_module
from mmdet.registry import MODELS

init_default_scope('mmdet')

TINY_DETR = str(CONFIGS_DIR / 'brs_detr' / 'brs-detr_r18-tiny_1xb2-1e_toy-coco.py')
TOY_MASK_RCNN = str(CONFIGS_DIR / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py')
CASCADE = str(CONFIGS_DIR / 'rank_based' / 'brs-cascade-rcnn_r50_fpn_4xb4-12e_coco.py')
CITYSCAPES = str(CONFIGS_DIR / 'rank_based' / 'rs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py')
LVIS = str(CONFIGS_DIR / 'rank_based' / 'rs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py')
CUSTOM_CLASSES = ('cat', 'dog', 'bird')


def num_classes_values(node, path='') -> Dict[str, object]:
    """Config key -> value of every ``num_classes`` under ``node``."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'num_classes':
                found[f'{path}.{key}'] = value
            found.update(num_classes_values(value, f'{path}.{key}'))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found.update(num_classes_values(value, f'{path}[{index}]'))
    return found


def with_classes(cfg: Config, classes) -> Config:
    """A copy of ``cfg`` whose every dataset (train, val, test; inside wrappers) has ``metainfo.classes``."""
    cfg = copy.deepcopy(cfg)
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if isinstance(loader, dict) and isinstance(loader.get('dataset'), dict):
            for _, leaf in dataset_leaves(loader['dataset'], split):
                leaf['metainfo'] = dict(classes=tuple(classes))
    return cfg


# ----------------------------------------------------------------------------- one place for the classes
@pytest.mark.parametrize('config, dataset_count, heads', [
    (TINY_DETR, 3, ['.model.bbox_head', '.model.roi_head[0].bbox_head', '.model.aux_bbox_head[0]']),
    (CASCADE, 80, [f'.model.roi_head.bbox_head[{stage}]' for stage in range(3)]),
    (CITYSCAPES, 8, ['.model.roi_head.bbox_head', '.model.roi_head.mask_head']),
    (LVIS, 1203, ['.model.roi_head.bbox_head', '.model.roi_head.mask_head']),
    (TOY_MASK_RCNN, 3, ['.model.roi_head.bbox_head', '.model.roi_head.mask_head']),
], ids=['brs-detr', 'cascade', 'cityscapes', 'lvis', 'mask-rcnn'])
def test_every_head_follows_the_datasets_classes(config, dataset_count, heads):
    raw = read_config(config)
    marked = {key: value for key, value in num_classes_values(raw._cfg_dict).items() if key.startswith('.model')}
    assert marked == {f'{head}.num_classes': FROM_DATASET for head in heads}
    assert 'num_classes' not in raw.model.get('rpn_head', {})  # class-agnostic: left alone
    as_written = copy.deepcopy(raw)
    assert resolve_num_classes(as_written) == dataset_count  # the dataset class's own classes, or the toy metainfo
    assert set(num_classes_values(as_written.model).values()) == {dataset_count}
    custom = with_classes(raw, CUSTOM_CLASSES)
    assert resolve_num_classes(custom) == len(CUSTOM_CLASSES)
    assert set(num_classes_values(custom.model).values()) == {len(CUSTOM_CLASSES)}


def test_mmengines_own_loading_resolves_too():
    """mmdet's tools read configs with ``Config.fromfile``: once brs_detr is imported (``custom_imports`` does it),
    the heads follow the datasets there too; brs-detr's tools read the markers (read_config) to merge options first."""
    voc = str(CONFIGS_DIR / 'custom' / 'brs-detr_r18-tiny_1xb2-2e_toy-voc.py')
    assert set(num_classes_values(Config.fromfile(voc).model).values()) == {3}
    assert set(num_classes_values(Config.fromfile(CITYSCAPES).model).values()) == {8}
    assert set(num_classes_values(read_config(voc).model).values()) == {FROM_DATASET}
    assert Config.fromfile(TINY_DETR).model.aux_bbox_head[0].num_classes == 3


def test_a_head_with_another_count_is_an_error_naming_its_key():
    cfg = with_classes(read_config(CASCADE), CUSTOM_CLASSES)
    cfg.model.roi_head.bbox_head[1].num_classes = 80
    with pytest.raises(NumClassesError) as error:
        resolve_num_classes(cfg)
    assert str(error.value) == (
        "model.roi_head.bbox_head[1].num_classes=80 (RankBasedShared2FCBBoxHead) but the dataset has 3 classes "
        "(train_dataloader.dataset.metainfo.classes = (cat, dog, bird)); set it to 'from_dataset' to follow the "
        "dataset")
    with pytest.raises(NumClassesError, match=r"^model.aux_bbox_head\[0\].num_classes=5 \(CoRankBasedATSSHead\) but "
                       r'the dataset has 3 classes'):
        load_tool_config(TINY_DETR, {'model.aux_bbox_head.0.num_classes': 5}, 'none')


@pytest.mark.parametrize('change, message', [
    ({'val_dataloader.dataset.metainfo.classes': ('a', 'b', 'c')},
     r'the datasets of the config list different classes: train_dataloader.dataset.metainfo.classes = \(rectangle, '
     r'ellipse, triangle\) but val_dataloader.dataset.metainfo.classes = \(a, b, c\)'),
    ({'train_dataloader.dataset.metainfo.classes': 'person', 'val_dataloader.dataset.metainfo.classes': 'person'},
     r"train_dataloader.dataset.metainfo.classes is the string 'person', not a list of names: for one class write "
     r"classes=\('person', \)"),
    ({'model.bbox_head.num_classes': 'eighty'}, r"model.bbox_head.num_classes='eighty': num_classes must be a number"),
    ({'train_dataloader.dataset.metainfo.classes': ('a', 'a')}, r'lists a more than once'),
], ids=['splits-disagree', 'one-class-string', 'not-a-number', 'duplicate'])
def test_class_list_mistakes_are_named(change, message):
    with pytest.raises(NumClassesError, match=message):
        load_tool_config(TINY_DETR, change, 'none')


@pytest.mark.parametrize('palette, message', [
    ([(255, 0, 0)], r'^test_dataloader.dataset.metainfo.palette has 1 colours for 3 classes: mmdet draws each class '
                    r'in its own colour; give one \(R, G, B\) per class'),
    (((255, 0, 0), (0, 255, 0), (0, 0, 255)), r'palette is a tuple of colours, which mmdet reads as one colour: write '
                                              r'a list'),
    ([(255, 0, 0), (0, 255), (0, 0, 300)], r'palette must be a list of \(R, G, B\) colours of integers 0-255'),
    ('random', None), ('coco', None), ((255, 0, 0), None), ([(1, 2, 3), (4, 5, 6), (7, 8, 9), (0, 0, 0)], None),
], ids=['short', 'tuple-of-colours', 'bad-colours', 'random', 'coco', 'one-colour', 'more-colours'])
def test_palettes_are_checked_where_they_draw(palette, message):
    """mmdet asserts the palette only at the first drawing (after the model was loaded); the drawing tools check
    it first. Training does not draw: a palette left shorter after a change of classes does not stop it."""
    cfg = load_tool_config(TINY_DETR, {'+test_dataloader.dataset.metainfo.palette': palette}, 'none')  # '+': a type
    if message is None:
        check_palettes(cfg, ['test'])
        return
    with pytest.raises(NumClassesError, match=message):
        check_palettes(cfg, ['test'])
    check_palettes(cfg, ['train'])


def test_a_config_without_dataset_cannot_take_the_classes_from_one():
    cfg = Config(dict(model=dict(type='RetinaNet', bbox_head=dict(type='RetinaHead', num_classes=FROM_DATASET))))
    with pytest.raises(NumClassesError, match=r"model.bbox_head.num_classes='from_dataset' but the config .* has no "
                       'dataset'):
        resolve_num_classes(cfg)
    assert resolve_num_classes(Config(dict(model=dict(bbox_head=dict(num_classes=4))))) is None  # nothing to check
    assert dataset_classes(Config(dict())) is None


def test_a_built_head_left_at_its_default_is_found():
    """A RoI head config without num_classes builds mmdet's default of 80: only the built model shows it."""
    cfg = load_config(TOY_MASK_RCNN)
    del cfg.model.roi_head.mask_head['num_classes']
    model = MODELS.build(cfg.model)
    with pytest.raises(NumClassesError, match=r'^roi_head.mask_head \(RankBasedFCNMaskHead\) predicts 80 classes but '
                       r"the dataset has 3 classes: set num_classes of that head in the config "
                       r"\(model.roi_head.mask_head\) to 'from_dataset'"):
        check_model_num_classes(model, 3)
    check_model_num_classes(MODELS.build(load_config(TOY_MASK_RCNN).model), 3)  # the control


def test_train_py_refuses_a_wrong_head_before_anything_runs(tmp_path):
    train_tool = load_tool_module('train')
    with pytest.raises(NumClassesError, match=r'model.roi_head\[0\].bbox_head.num_classes=80'):
        train_tool.main([TINY_DETR, '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                         'model.roi_head.0.bbox_head.num_classes=80'])
    assert not (tmp_path / 'wd').exists()


# ----------------------------------------------------------------------------- fine-tuning across class counts
def build_model(classes) -> torch.nn.Module:
    cfg = with_classes(read_config(TINY_DETR), classes)
    resolve_num_classes(cfg)
    torch.manual_seed(len(classes))
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def models() -> Dict[int, torch.nn.Module]:
    return {5: build_model([f'c{i}' for i in range(5)]), 3: build_model(CUSTOM_CLASSES)}


CLASS_LAYERS = [f'bbox_head.cls_branches.{i}.{p}' for i in range(3) for p in ('weight', 'bias')] + [
    f'roi_head.0.bbox_head.fc_{layer}.{p}' for layer in ('cls', 'reg') for p in ('weight', 'bias')] + [
    f'aux_bbox_head.0.atss_cls.{p}' for p in ('weight', 'bias')]


def shapes(state: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
    return {key: tuple(value.shape) for key, value in state.items()}


@pytest.mark.parametrize('from_meta', [True, False])
def test_class_layers_are_exactly_the_weights_that_depend_on_the_class_count(models, from_meta):
    ours, theirs = shapes(models[3].state_dict()), shapes(models[5].state_dict())
    reshaped = [key for key in theirs if theirs[key] != ours[key]]
    split = class_dependent_weights(models[3], ours, theirs, reshaped, 5 if from_meta else None)
    assert sorted(weight.key for weight in split.class_weights) == sorted(CLASS_LAYERS) and not split.other
    assert (split.checkpoint_classes, split.classes_source) == ((5, 'meta') if from_meta else (None, 'weights'))
    # another reshaped weight (e.g. another transformer width) is not a class layer
    other = dict(theirs, **{'bbox_head.reg_branches.0.0.weight': (64, 32)})
    split = class_dependent_weights(models[3], ours, other, reshaped + ['bbox_head.reg_branches.0.0.weight'], 5)
    assert split.other == ['bbox_head.reg_branches.0.0.weight: checkpoint (64, 32) vs model (64, 64)']
    # a softmax classifier with a background column (mmdet's COCO Mask R-CNN: 81) into a sigmoid one
    softmax = dict(theirs, **{'roi_head.0.bbox_head.fc_cls.weight': (6, 128), 'roi_head.0.bbox_head.fc_cls.bias': (6,)})
    split = class_dependent_weights(models[3], ours, softmax, reshaped, 5)
    assert sorted(weight.key for weight in split.class_weights) == sorted(CLASS_LAYERS) and not split.other
    assert checkpoint_num_classes(dict(meta=dict(dataset_meta=dict(classes=['a', 'b'])))) == 2
    assert checkpoint_num_classes(dict(meta=dict(CLASSES=('a', 'b', 'c')))) == 3
    assert checkpoint_num_classes(dict(state_dict={})) is None


def bare_runner(model: torch.nn.Module, messages: List[str]) -> ReliableRunner:
    """A ReliableRunner with just what ``load_checkpoint`` uses (building a real one costs seconds)."""
    runner = ReliableRunner.__new__(ReliableRunner)
    runner.model, runner._hooks, runner._resuming, runner.checkpoint_fit = model, [], False, 'fine-tune'
    runner.cfg = SimpleNamespace(filename='custom.py', get=lambda key, default=None: default)  # no dataset
    runner.logger = SimpleNamespace(warning=messages.append, info=lambda message: None)
    return runner


def test_load_from_keeps_the_models_class_layers_and_loads_the_rest(models, tmp_path):
    checkpoint = tmp_path / 'coco_like.pth'
    source = models[5].state_dict()
    torch.save(dict(state_dict=source, meta=dict(dataset_meta=dict(classes=[f'c{i}' for i in range(5)]))), checkpoint)
    model = copy.deepcopy(models[3])
    initial = copy.deepcopy(model.state_dict())
    messages = []
    bare_runner(model, messages).load_checkpoint(str(checkpoint))
    loaded = model.state_dict()
    for key, value in loaded.items():
        expected = initial[key] if key in CLASS_LAYERS else source[key]
        assert torch.equal(value, expected), key
    assert len(messages) == 1
    assert messages[0].startswith(f'load_from {checkpoint}: the checkpoint has 5 classes (its meta), the model 3: 12 '
                                  "class-dependent weights are not loaded and keep the model's initialisation: "
                                  'bbox_head.cls_branches.0.weight (5, 64) -> (3, 64); ')
    assert all(key in messages[0] for key in CLASS_LAYERS)


def test_load_from_refuses_what_is_not_a_class_layer(models, tmp_path):
    source = dict(models[5].state_dict())
    source['bbox_head.reg_branches.0.0.weight'] = torch.zeros(64, 32)
    del source['aux_bbox_head.0.atss_reg.weight']
    source['extra.weight'] = torch.zeros(2)
    checkpoint = tmp_path / 'other.pth'
    torch.save(dict(state_dict=source), checkpoint)
    with pytest.raises(CheckpointFitError) as error:
        bare_runner(copy.deepcopy(models[3]), []).load_checkpoint(str(checkpoint))
    message = str(error.value)
    assert message.startswith(f'load_from {checkpoint} does not fit the model of custom.py beyond its class-dependent '
                              'weights (1 missing from the checkpoint: aux_bbox_head.0.atss_reg.weight; 1 with another '
                              'shape that is not a class layer of a head: bbox_head.reg_branches.0.0.weight: '
                              'checkpoint (64, 32) vs model (64, 64); 1 in the checkpoint but not in the model: '
                              'extra.weight)')
    assert 'init_cfg=dict(type="Pretrained", checkpoint=..., prefix=...)' in message

