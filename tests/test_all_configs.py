"""Every config under ``configs/`` builds, trains one step and has data pipelines that run.

The configs are found by a glob, so a config added later is covered without touching this file; only fragments
under a ``_base_`` folder (model, dataset or schedule parts, not complete configs) are skipped. For each config:

0. with other classes in every dataset's ``metainfo``, every head of the model follows them (``num_classes``);
1. ``read_config`` (``Config.fromfile`` with its ``custom_imports``, ``num_classes='from_dataset'`` kept) and every
   head's ``num_classes`` resolved from the datasets (``resolve_num_classes``, as the tools load configs), the
   settings the tools refuse (``brs_detr.apis.run_settings.check_run_settings``: batch sizes, packing pipelines, ...),
   ``MODELS.build`` and ``init_weights`` of the model (as the runner initialises it), with every ``Pretrained``
   ``init_cfg`` dropped and ``load_from`` ignored (no weights can be downloaded here) and the RPN's training
   proposals capped at :data:`TEST_PROPOSALS_PER_IMAGE` per image (the images are tiny);
2. one training step on a tiny synthetic batch (two images of :data:`IMAGE_SHAPES`, boxes, and masks where the
   model has a mask head): ``model.train_step`` = data preprocessor, forward, loss, backward and a step of the
   optimizer built from the config's own ``optim_wrapper`` (its param-wise settings included). The losses must be
   finite and the trainable parameters must change;
3. the train and test pipelines of the innermost datasets of ``train_dataloader`` / ``test_dataloader`` are built
   and run on a small synthetic image with one box and its polygon mask;
4. for every model-zoo entry (``checkpoints/model_zoo.json``) whose ``config`` is this config and whose original
   state-dict layout is stored in ``tests/data/layouts/<entry name>.json``, a random state dict in that layout is
   converted with the package's conversion function and loaded strictly into the built model.

:func:`check_config` is the single code path; a broken temporary config is pushed through it to show that the test
fails when a config does not build, does not step or has a broken pipeline.
"""
from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed

from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from brs_detr.apis.cli import ToolInputError
from brs_detr.apis.run_settings import check_run_settings
from brs_detr.datasets.num_classes import dataset_leaves, load_config, read_config, resolve_num_classes
from mmdet.utils import register_all_modules
from state_dict_layouts import random_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / 'configs'
LAYOUTS_DIR = REPO_ROOT / 'tests' / 'data' / 'layouts'
MODEL_ZOO_INDEX = REPO_ROOT / 'checkpoints' / 'model_zoo.json'
#: Folder name of config fragments (parts merged into complete configs through ``_base_``).
BASE_FOLDER = '_base_'
#: (C, H, W) of the two synthetic training images: small, unequal (padding and batching are exercised).
IMAGE_SHAPES = [(3, 64, 80), (3, 72, 64)]
#: Ground-truth instances per synthetic training image.
NUM_GT_PER_IMAGE = [3, 2]
#: (H, W) of the synthetic image the pipelines run on.
PIPELINE_IMAGE_SIZE = (48, 64)
#: A two-stage DETR picks ``num_queries`` proposals among its encoder tokens, so the images must give at least that
#: many tokens: this many pixels per query give as many on the stride-8 level alone.
PIXELS_PER_QUERY = 8 * 8
#: Libraries that ``brs_detr`` imports without and that some configs need (a timm backbone). A config whose model
#: cannot be built because one of them is not installed is skipped, naming it; any other import error fails.
OPTIONAL_LIBRARIES = ('timm', 'torchvision')
#: Seed of ``random``, numpy and torch before each model is built: each config's step is reproducible.
SEED = 0
#: Proposals per image kept by two-stage models in the test (``rpn_proposal.max_per_img``; 1000 in the configs):
#: scaled down with the image, since CPU RoIAlign over thousands of RoIs per stage dominates the step otherwise.
TEST_PROPOSALS_PER_IMAGE = 64
#: Classes every config is also loaded with: every head must follow them (one place for the classes).
CUSTOM_CLASSES = ('cat', 'dog', 'bird')

register_all_modules()


def discover_configs(root: Path) -> List[Path]:
    """Every complete config below ``root``: all ``*.py`` files except those inside a ``_base_`` folder."""
    return sorted(path for path in root.rglob('*.py') if BASE_FOLDER not in path.relative_to(root).parts)


ALL_CONFIGS = discover_configs(CONFIGS_DIR)


def config_id(path: Path) -> str:
    return path.relative_to(CONFIGS_DIR).as_posix()


# ------------------------------------------------------------------------------------------------ config walking
def _walk_dicts(node) -> Iterator[dict]:
    """Every dict nested in ``node`` (dicts and lists of a config), ``node`` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_dicts(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk_dicts(value)


def drop_pretrained_weights(model_cfg: ConfigDict) -> None:
    """Remove every ``init_cfg`` that loads weights (``Pretrained``), in place: nothing can be downloaded here."""
    for node in _walk_dicts(model_cfg):
        init_cfg = node.get('init_cfg')
        inits = init_cfg if isinstance(init_cfg, list) else [init_cfg]
        if any(isinstance(init, dict) and init.get('type') == 'Pretrained' for init in inits):
            node['init_cfg'] = None


def shrink_proposals(model_cfg: ConfigDict) -> None:
    """Cap the RPN's training proposals per image at :data:`TEST_PROPOSALS_PER_IMAGE`, in place."""
    for node in _walk_dicts(model_cfg):
        proposal_cfg = node.get('rpn_proposal')
        if isinstance(proposal_cfg, dict):
            for key in ('nms_pre', 'max_per_img'):
                if key in proposal_cfg:
                    proposal_cfg[key] = min(proposal_cfg[key], TEST_PROPOSALS_PER_IMAGE)


def smallest_num_classes(model_cfg: ConfigDict) -> int:
    """The fewest classes any head of the model predicts (class-agnostic RPNs, with one class, left out)."""
    counts = [node['num_classes'] for node in _walk_dicts(model_cfg)
              if isinstance(node.get('num_classes'), int) and node['num_classes'] > 1]
    if not counts:
        raise ValueError('no head of the model states num_classes > 1')
    return min(counts)


def image_shapes_for(model_cfg: ConfigDict) -> List[Tuple[int, int, int]]:
    """:data:`IMAGE_SHAPES`, scaled up (aspect kept) where a query-based head needs more encoder tokens."""
    queries = max((node['num_queries'] for node in _walk_dicts(model_cfg) if isinstance(node.get('num_queries'), int)),
                  default=0)
    smallest = min(height * width for _, height, width in IMAGE_SHAPES)
    scale = max(1.0, math.sqrt(queries * PIXELS_PER_QUERY / smallest))
    return [(channels, math.ceil(height * scale), math.ceil(width * scale)) for channels, height, width in IMAGE_SHAPES]


def missing_optional_library(error: ImportError) -> Optional[str]:
    """The optional library (:data:`OPTIONAL_LIBRARIES`) that ``error`` names and that is indeed not installed."""
    for library in OPTIONAL_LIBRARIES:
        if library in str(error) and importlib.util.find_spec(library) is None:
            return library
    return None


def has_mask_head(model_cfg: ConfigDict) -> bool:
    return any(node.get('mask_head') is not None for node in _walk_dicts(model_cfg))


def innermost_dataset(dataset_cfg: ConfigDict) -> ConfigDict:
    """The dataset inside wrappers such as ``RepeatDataset`` or ``ClassBalancedDataset``."""
    while 'pipeline' not in dataset_cfg and 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    if 'pipeline' not in dataset_cfg:
        raise KeyError(f'no pipeline in dataset config {dataset_cfg}')
    return dataset_cfg


# ------------------------------------------------------------------------------------------------ model zoo layouts
def layout_entries(config: Path, index_path: Path = MODEL_ZOO_INDEX,
                   layouts_dir: Path = LAYOUTS_DIR) -> List[Tuple[dict, Path]]:
    """(zoo entry, layout file) for every zoo entry of ``config`` whose original layout is stored."""
    if REPO_ROOT not in config.parents or not index_path.is_file() or not layouts_dir.is_dir():
        return []  # a config outside the repository has no zoo entry
    with open(index_path) as f:
        entries = json.load(f)['models']
    wanted = config.relative_to(REPO_ROOT).as_posix()
    return [(entry, layouts_dir / f'{entry["name"]}.json') for entry in entries
            if entry.get('config') == wanted and (layouts_dir / f'{entry["name"]}.json').is_file()]


def load_zoo_layouts(model: torch.nn.Module, cfg: Config, config: Path, index_path: Path = MODEL_ZOO_INDEX,
                     layouts_dir: Path = LAYOUTS_DIR) -> List[str]:
    """Strict-load a random state dict in each stored original layout of ``config``; the entries' names.

    The state dict is converted as a downloaded checkpoint is (:func:`brs_detr.zoo.convert.
    convert_state_dict_for_config`) and loaded with ``strict=True`` (:func:`brs_detr.zoo.convert.check_strict_load`,
    which lists missing, unexpected and reshaped keys when it fails).
    """
    entries = layout_entries(config, index_path, layouts_dir)
    if not entries:
        return []
    from brs_detr.zoo.convert import check_strict_load, convert_state_dict_for_config
    loaded = []
    for entry, layout_path in entries:
        with open(layout_path) as f:
            layout = json.load(f)
        converted = convert_state_dict_for_config(random_state_dict(layout), cfg)
        check_strict_load(model, converted, cfg)
        loaded.append(entry['name'])
    return loaded


# ------------------------------------------------------------------------------------------------ checks
def synthetic_batch(model_cfg: ConfigDict) -> dict:
    """Two small images with boxes (labels below the model's class count) and bitmap masks for a mask head."""
    shapes = image_shapes_for(model_cfg)
    return demo_mm_inputs(batch_size=len(shapes), image_shapes=shapes, num_items=NUM_GT_PER_IMAGE,
                          num_classes=smallest_num_classes(model_cfg), with_mask=has_mask_head(model_cfg))


def _parameter_sums(model: torch.nn.Module) -> torch.Tensor:
    """One float64 sum per trainable parameter: cheap to keep, changes when the optimizer steps."""
    return torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad])


def train_one_step(model: torch.nn.Module, cfg: Config) -> Dict[str, float]:
    """One ``train_step`` with the config's optim wrapper; the logged losses (all finite, parameters updated)."""
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    data = synthetic_batch(cfg.model)
    model.train()
    before = _parameter_sums(model)
    log_vars = model.train_step(data, optim_wrapper)
    losses = {name: float(torch.as_tensor(value).detach()) for name, value in log_vars.items()}
    assert 'loss' in losses, f'no total loss logged: {sorted(losses)}'
    not_finite = {name: value for name, value in losses.items() if not math.isfinite(value)}
    assert not not_finite, f'non-finite losses after one step: {not_finite}'
    after = _parameter_sums(model)
    assert torch.isfinite(after).all(), 'the optimizer step made parameters non-finite'
    assert not torch.equal(before, after), 'the optimizer step changed no parameter'
    return losses


def write_pipeline_sample(folder: Path) -> dict:
    """A small image on disk and a data-info dict (one box with its polygon mask) as mmdet's datasets give."""
    height, width = PIPELINE_IMAGE_SIZE
    rng = np.random.RandomState(0)
    image_path = folder / 'pipeline_sample.png'
    cv2.imwrite(str(image_path), rng.randint(0, 255, size=(height, width, 3), dtype=np.uint8))
    x1, y1, x2, y2 = 8.0, 6.0, 40.0, 30.0
    instance = dict(bbox=[x1, y1, x2, y2], bbox_label=0, ignore_flag=0, mask=[[x1, y1, x2, y1, x2, y2, x1, y2]])
    return dict(img_path=str(image_path), img_id=0, height=height, width=width, instances=[instance],
                seg_map_path=None)


def run_pipelines(cfg: Config, sample: dict) -> None:
    """Build the train and test pipelines and run each on ``sample``: packed inputs must come out."""
    for loader in ('train_dataloader', 'test_dataloader'):
        pipeline = Compose(innermost_dataset(cfg[loader]['dataset'])['pipeline'])
        packed = pipeline(dict(sample, instances=[dict(i) for i in sample['instances']]))
        assert packed is not None, f'{loader} pipeline dropped the sample'
        inputs = packed['inputs']
        assert isinstance(inputs, torch.Tensor) and inputs.ndim == 3 and inputs.shape[0] == 3, \
            f'{loader} pipeline packed inputs of shape {getattr(inputs, "shape", None)}'
        assert packed['data_samples'].metainfo['img_shape'] == tuple(inputs.shape[1:])


def check_heads_follow_the_classes(cfg: Config) -> None:
    """With other classes in every dataset's ``metainfo``, every head of the model predicts that many (a head that
    states its own number raises ``NumClassesError``, naming it)."""
    custom = copy.deepcopy(cfg)
    for split in ('train', 'val', 'test'):
        loader = custom.get(f'{split}_dataloader')
        if isinstance(loader, dict) and isinstance(loader.get('dataset'), dict):
            for _, leaf in dataset_leaves(loader['dataset'], split):
                leaf['metainfo'] = dict(classes=CUSTOM_CLASSES)
    assert resolve_num_classes(custom) == len(CUSTOM_CLASSES)


def check_config(path: Path, pipeline_folder: Path) -> Dict[str, object]:
    """Build, step, pipelines and zoo layouts of one config (module docstring); what was found."""
    init_default_scope('mmdet')
    cfg = read_config(str(path))  # num_classes='from_dataset' kept
    check_heads_follow_the_classes(cfg)
    resolve_num_classes(cfg)  # what load_config does: the tools' path
    check_run_settings(cfg, [split for split in ('train', 'val', 'test') if cfg.get(f'{split}_dataloader')])
    drop_pretrained_weights(cfg.model)
    shrink_proposals(cfg.model)
    set_random_seed(SEED)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # init_weights logs every parameter's initialisation
    try:
        model = MODELS.build(cfg.model)
        model.init_weights()  # as the runner does before training: the heads' own initialisations
    finally:
        logger.setLevel(level)
    try:
        losses = train_one_step(model, cfg)
        # after the step: random layout values (e.g. negative BN variances) are not meant to be trained on
        zoo_layouts = load_zoo_layouts(model, cfg, path)
    finally:
        del model
        gc.collect()
    run_pipelines(cfg, write_pipeline_sample(pipeline_folder))
    return dict(losses=losses, zoo_layouts=zoo_layouts)


# ------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope='module')
def pipeline_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('pipeline_sample')


def test_discovery_finds_every_config_folder():
    folders = {path.relative_to(CONFIGS_DIR).parts[0] for path in ALL_CONFIGS}
    expected = {p.name for p in CONFIGS_DIR.iterdir() if p.is_dir() and p.name != BASE_FOLDER and any(p.rglob('*.py'))}
    assert folders == expected
    assert not any(BASE_FOLDER in path.parts for path in ALL_CONFIGS)


def test_discovery_skips_only_base_fragments(tmp_path):
    for rel in ('a/x.py', 'a/deeper/y.py', '_base_/models/m.py', 'b/_base_/d.py', 'b/z.py', 'b/notes.md'):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('')
    assert [p.relative_to(tmp_path).as_posix() for p in discover_configs(tmp_path)] == [
        'a/deeper/y.py', 'a/x.py', 'b/z.py']


@pytest.mark.slow
@pytest.mark.parametrize('path', [pytest.param(path, marks=pytest.mark.long) if 'swin-l' in path.name else path
                                  for path in ALL_CONFIGS], ids=config_id)
def test_config_builds_steps_and_runs_its_pipelines(path, pipeline_folder):
    try:
        found = check_config(path, pipeline_folder)
    except ImportError as error:
        library = missing_optional_library(error)
        if library is None:
            raise
        pytest.skip(f'{config_id(path)} needs {library}, which is not installed: {error}')
    assert found['losses']['loss'] > 0


def test_every_stored_layout_is_checked_with_a_config_under_test():
    """No original layout escapes the per-config check: each names a zoo entry whose config is tested above."""
    if not LAYOUTS_DIR.is_dir():
        pytest.skip('no original layouts stored (tests/data/layouts)')
    with open(MODEL_ZOO_INDEX) as f:
        config_of = {entry['name']: entry.get('config') for entry in json.load(f)['models']}
    tested = {path.relative_to(REPO_ROOT).as_posix() for path in ALL_CONFIGS}
    unchecked = {layout.stem: config_of.get(layout.stem) for layout in LAYOUTS_DIR.glob('*.json')
                 if config_of.get(layout.stem) not in tested}
    assert not unchecked, f'layouts whose zoo entry names no tested config: {unchecked}'


def test_a_layout_that_does_not_fit_fails_the_check(tmp_path):
    """The zoo-layout step of :func:`check_config` loads strictly: one key missing from the layout fails it."""
    pytest.importorskip('brs_detr.zoo.convert')
    config = CONFIGS_DIR / 'rank_based' / 'rs-atss_r50_fpn_4xb4-12e_coco.py'
    entries = layout_entries(config)
    if not entries:
        pytest.skip(f'no stored layout for {config_id(config)}')
    entry, layout_path = entries[0]
    with open(layout_path) as f:
        layout = json.load(f)
    index = tmp_path / 'model_zoo.json'
    index.write_text(json.dumps(dict(models=[entry])))
    (tmp_path / 'layouts').mkdir()
    cfg = load_config(str(config))
    drop_pretrained_weights(cfg.model)
    model = MODELS.build(cfg.model)
    copy = tmp_path / 'layouts' / f'{entry["name"]}.json'
    copy.write_text(json.dumps(layout))
    assert load_zoo_layouts(model, cfg, config, index, copy.parent) == [entry['name']]  # the control
    copy.write_text(json.dumps(dict(layout, state_dict=layout['state_dict'][:-1])))
    with pytest.raises(ValueError, match='missing in the weights'):
        load_zoo_layouts(model, cfg, config, index, copy.parent)


# ---------------------------------------------------------------------------------- the check can fail
TINY_BASE = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'


def _derived_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / 'broken' / 'broken_config.py'
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'_base_ = {str(TINY_BASE)!r}\n{body}\n')
    return path


RANK_BASED_HEAD = ("type='RankBasedATSSHead', loss_centerness=None, "
                   "loss_cls=dict(_delete_=True, type='BucketedRankSortLoss', delta=0.5)")


@pytest.mark.parametrize('body', [
    'model = dict(bbox_head=dict(stacked_convs=1))',
    f"model = dict(bbox_head=dict({RANK_BASED_HEAD}, loss_bbox=dict(type='GIoULoss', loss_weight=1.0)))",
], ids=['fewer-convs', 'rank-based-head'])
def test_the_check_passes_a_valid_derived_config(tmp_path, pipeline_folder, body):
    """The controls for the broken configs below: the same derivations without the defect pass."""
    found = check_config(_derived_config(tmp_path, body), pipeline_folder)
    assert math.isfinite(found['losses']['loss'])


@pytest.mark.parametrize('body, error, message', [
    ("model = dict(backbone=dict(type='NoSuchBackbone'))", KeyError, 'NoSuchBackbone is not in the'),
    ("model = dict(bbox_head=dict(num_classes='eighty'))", ValueError, "num_classes='eighty': num_classes must be"),
    (f"model = dict(bbox_head=dict({RANK_BASED_HEAD}, loss_bbox=dict(type='GIoULoss', loss_weight=2.0)))",
     ValueError, 'loss_weight=2.0 has no effect'),  # a weight that value matching would silently ignore
    ("optim_wrapper = dict(optimizer=dict(type='NoSuchOptimizer'))", TypeError, 'None is not a callable'),
    ("optim_wrapper = dict(optimizer=dict(lr=float('inf')))", ToolInputError, 'lr=inf: the learning rate must be'),
    ("train_dataloader = dict(dataset=dict(pipeline=[dict(type='NoSuchTransform'), dict(type='PackDetInputs')]))",
     KeyError, 'NoSuchTransform is not in the'),
    ("train_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile')]))", ToolInputError,
     'does not end in PackDetInputs'),
], ids=['unknown-backbone', 'bad-argument', 'rejected-loss-weight', 'unknown-optimizer', 'infinite-lr',
        'unknown-transform', 'unpacked-pipeline'])
def test_the_check_fails_on_a_broken_config(tmp_path, pipeline_folder, body, error, message):
    """A config that does not build, cannot step, has a setting the tools refuse (an infinite lr, a pipeline that
    does not pack) or a broken pipeline fails :func:`check_config`, the code path of every config's test."""
    with pytest.raises(error, match=message):
        check_config(_derived_config(tmp_path, body), pipeline_folder)
