"""Read the settings that decide a training result out of a merged config, in one vocabulary for every config.

Used by ``tests/test_release_settings.py`` to compare our configs with the facts of the authors' releases recorded
in ``tests/release_facts.py``. A key is either

* a dotted path into the merged config, with list indices in brackets (``model.train_cfg[1].rpn_proposal.nms_pre``).
  A key missing from a dict that names a registered ``type`` resolves to that class's default argument (looked up
  along its MRO), so a head default that decides the result (``value_matched_bbox``, a loss's ``delta``) is
  compared as well as a configured value; or
* a derived key (``optimizer.lr``, ``schedule.milestones``, ``data.train_augment``, ``rcnn.sampling`` ...), one
  normalised reading of settings that mmdet 2.x and 3.x spell differently (see :data:`DERIVED`).
"""
import functools
import inspect
import os.path as osp
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import mmengine.config.utils as mmengine_config_utils
from mmengine.config import Config

from mmdet.registry import MODELS, TASK_UTILS

#: What a path that exists nowhere (not in the config, not as a default) reads as.
MISSING = '<missing>'
#: A RandomSampler with at least this many expected samples keeps every proposal of an image (no image has as many).
KEEPS_EVERYTHING = 10**6
#: ``{algo}_{backbone}_{gpus}xb{batch}-...``: the GPU count of a config's name.
GPUS_IN_NAME = re.compile(r'[_-](\d+)xb(\d+)-')


def class_default(type_name: str, key: str) -> Any:
    """Default of argument ``key`` of the registered class ``type_name`` (first class along the MRO that names it)."""
    cls = None
    for registry in (MODELS, TASK_UTILS):
        cls = registry.get(type_name)
        if cls is not None:
            break
    if cls is None:
        return MISSING
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get(key)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return MISSING


def lookup(cfg: dict, path: str) -> Any:
    """Value of a dotted path with ``[i]`` indices, falling back to the class default of the innermost typed dict."""
    node: Any = cfg
    parts = re.findall(r'[^.\[\]]+|\[\d+\]', path)
    for position, part in enumerate(parts):
        if part.startswith('['):
            index = int(part[1:-1])
            if not isinstance(node, (list, tuple)) or index >= len(node):
                return MISSING
            node = node[index]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and 'type' in node and position == len(parts) - 1:
            return class_default(node['type'], part)
        elif isinstance(node, dict) and 'type' in node:
            # a nested dict argument left at its default, e.g. a head's default loss_cls
            default = class_default(node['type'], part)
            if not isinstance(default, dict):
                return MISSING
            node = default
        else:
            return MISSING
    return node


def _optimizer(cfg: dict) -> dict:
    return cfg['optim_wrapper']['optimizer']


def _scheduler(cfg: dict, type_name: str) -> Optional[dict]:
    found = [s for s in cfg.get('param_scheduler') or [] if s['type'] == type_name]
    if len(found) > 1:
        raise AssertionError(f'more than one {type_name} in param_scheduler')
    return found[0] if found else None


def _scale(scale) -> Tuple[int, int]:
    """A keep-ratio scale as (long side, short side): mmdet 2.x and 3.x write the pair in either order."""
    return (max(scale), min(scale))


def _steps(pipeline: List[dict]) -> tuple:
    """The data augmentation of a pipeline (loading, annotations and packing left out), normalised."""
    steps = []
    for transform in pipeline:
        kind = transform['type']
        if kind in ('LoadImageFromFile', 'LoadAnnotations', 'PackDetInputs'):
            continue
        if kind in ('Resize', 'RandomChoiceResize', 'RandomResize'):
            if not transform.get('keep_ratio', False):
                raise AssertionError(f'{kind} without keep_ratio=True: {transform}')
        if kind == 'Resize':
            steps.append(('resize', 'value', (_scale(transform['scale']),)))
        elif kind == 'RandomChoiceResize':
            steps.append(('resize', 'value', tuple(sorted(_scale(s) for s in transform['scales']))))
        elif kind == 'RandomResize':
            steps.append(('resize', 'range', tuple(sorted(_scale(s) for s in transform['scale']))))
        elif kind == 'RandomFlip':
            steps.append(('flip', transform['prob']))
        elif kind == 'RandomCrop':
            steps.append(('crop', transform['crop_type'], tuple(transform['crop_size']),
                          transform.get('allow_negative_crop', False)))
        elif kind == 'RandomChoice':
            steps.append(('choice', tuple(_steps(policy) for policy in transform['transforms'])))
        else:
            raise AssertionError(f'augmentation step {kind} has no normalised reading; add it to _steps')
    return tuple(steps)


def _train_dataset(cfg: dict) -> dict:
    dataset = cfg['train_dataloader']['dataset']
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    return dataset


def _wrapper(cfg: dict):
    dataset = cfg['train_dataloader']['dataset']
    if dataset['type'] == 'RepeatDataset':
        return ('RepeatDataset', dataset['times'])
    if dataset['type'] == 'ClassBalancedDataset':
        return ('ClassBalancedDataset', dataset['oversample_thr'])
    return None


def _sampling(train_cfg: dict, subject: str) -> str:
    sampler = train_cfg.get('sampler', dict(type='PseudoSampler'))
    if sampler['type'] == 'PseudoSampler':
        return f'all {subject}'
    if sampler['type'] == 'RandomSampler':
        num, fraction = sampler['num'], sampler['pos_fraction']
        if num * fraction >= KEEPS_EVERYTHING and num >= KEEPS_EVERYTHING:
            return f'all {subject}'
        return f'{int(num)} sampled, {fraction} positive'
    return sampler['type']


def _rcnn_stages(cfg: dict) -> List[dict]:
    train_cfg = cfg['model']['train_cfg']
    if isinstance(train_cfg, list):  # Co-DETR: [query head, rpn + roi head, atss]
        train_cfg = train_cfg[1]
    rcnn = train_cfg['rcnn']
    return rcnn if isinstance(rcnn, list) else [rcnn]


def _rpn_train_cfg(cfg: dict) -> dict:
    train_cfg = cfg['model']['train_cfg']
    return (train_cfg[1] if isinstance(train_cfg, list) else train_cfg)['rpn']


def _dense_train_cfg(cfg: dict) -> dict:
    train_cfg = cfg['model']['train_cfg']
    return train_cfg[2] if isinstance(train_cfg, list) else train_cfg  # Co-DETR: the ATSS head's


def _rcnn_sampling(cfg: dict):
    stages = [_sampling(stage, 'proposals') for stage in _rcnn_stages(cfg)]
    return stages[0] if len(stages) == 1 else stages


def _gt_as_proposals(cfg: dict):
    stages = [stage['sampler']['type'] != 'PseudoSampler' and stage['sampler'].get('add_gt_as_proposals', True)
              for stage in _rcnn_stages(cfg)]
    return stages[0] if len(stages) == 1 else stages


def _rpn_rank_weight(cfg: dict) -> float:
    """Weight of the RPN's ranking loss: ``head_weight`` x ``loss_cls.loss_weight`` (the release: 0.2 x weight)."""
    return lookup(cfg, 'model.rpn_head.head_weight') * lookup(cfg, 'model.rpn_head.loss_cls.loss_weight')


def _rank_heads(cfg: dict) -> List[Tuple[str, dict]]:
    """(path, config) of every rank-based head of the model (ours are the classes named ``*RankBased*``)."""
    model = cfg['model']
    candidates = [('model.bbox_head', model.get('bbox_head')), ('model.rpn_head', model.get('rpn_head'))]
    roi_heads = model.get('roi_head')
    for i, roi_head in enumerate(roi_heads if isinstance(roi_heads, list) else [roi_heads]):
        prefix = f'model.roi_head[{i}]' if isinstance(roi_heads, list) else 'model.roi_head'
        bbox_heads = (roi_head or {}).get('bbox_head')
        for j, bbox_head in enumerate(bbox_heads if isinstance(bbox_heads, list) else [bbox_heads]):
            candidates.append((f'{prefix}.bbox_head' + (f'[{j}]' if isinstance(bbox_heads, list) else ''), bbox_head))
    for i, head in enumerate(model.get('aux_bbox_head') or []):
        candidates.append((f'model.aux_bbox_head[{i}]', head))
    return [(path, head) for path, head in candidates if head and 'RankBased' in head['type']]


def _box_loss_weighting(cfg: dict, paths: Tuple[str, ...]) -> Any:
    """'score-weighted' or 'uniform' mean of the box losses over the positives of the first rank-based head found
    at ``paths``. The CNN rank-based heads (:class:`RankBasedLossMixin`) always weight each positive by its
    detached maximum class score; the BRS-DETR query head does when ``score_weighted_bbox``."""
    heads = dict(_rank_heads(cfg))
    for path in paths:
        if path in heads:
            weighted = lookup(cfg, f'{path}.score_weighted_bbox')
            return 'uniform' if weighted is False else 'score-weighted'
    return MISSING


def _min_positive_target(cfg: dict) -> Any:
    """The smallest ranking target of a positive, one value for all rank-based heads of the model (RS/BRS targets
    are IoUs; a positive whose box misses its gt gets this target instead of 0, which would make it a negative)."""
    values = {lookup(cfg, f'{path}.min_positive_target') for path, _ in _rank_heads(cfg)}
    if len(values) != 1:
        raise AssertionError(f'rank-based heads with different min_positive_target: {values}')
    return values.pop()


def _total_batch(cfg: dict) -> int:
    match = GPUS_IN_NAME.search(osp.basename(cfg['filename']))
    if match is None:
        raise AssertionError(f'{cfg["filename"]}: no {{gpus}}x b{{batch}} in the name')
    gpus, batch = int(match.group(1)), int(match.group(2))
    if batch != cfg['train_dataloader']['batch_size']:
        raise AssertionError(f'{cfg["filename"]}: the name says {batch} images per GPU, train_dataloader.batch_size '
                             f'is {cfg["train_dataloader"]["batch_size"]}')
    return gpus * batch


#: Derived keys: name -> reader of the merged config (a dict with ``filename``).
DERIVED: Dict[str, Callable[[dict], Any]] = {
    'optimizer.type': lambda cfg: _optimizer(cfg)['type'],
    'optimizer.lr': lambda cfg: _optimizer(cfg)['lr'],
    'optimizer.momentum': lambda cfg: _optimizer(cfg).get('momentum', MISSING),
    'optimizer.weight_decay': lambda cfg: _optimizer(cfg)['weight_decay'],
    'optimizer.lr_mult': lambda cfg: {key: value['lr_mult'] for key, value in
                                      ((cfg['optim_wrapper'].get('paramwise_cfg') or {}).get('custom_keys') or {})
                                      .items()},
    'optimizer.grad_clip': lambda cfg: (cfg['optim_wrapper'].get('clip_grad') or {}).get('max_norm'),
    'schedule.epochs': lambda cfg: cfg['train_cfg']['max_epochs'],
    'schedule.milestones': lambda cfg: list(_scheduler(cfg, 'MultiStepLR')['milestones']),
    'schedule.gamma': lambda cfg: _scheduler(cfg, 'MultiStepLR').get('gamma', 0.1),
    'schedule.warmup': lambda cfg: (None if _scheduler(cfg, 'LinearLR') is None else
                                    (_scheduler(cfg, 'LinearLR')['end'], _scheduler(cfg, 'LinearLR')['start_factor'])),
    'data.batch_per_gpu': lambda cfg: cfg['train_dataloader']['batch_size'],
    'data.total_batch': _total_batch,
    'data.train_augment': lambda cfg: _steps(_train_dataset(cfg)['pipeline']),
    'data.test_scale': lambda cfg: _steps(cfg['test_dataloader']['dataset']['pipeline'])[0][2][0],
    'data.wrapper': _wrapper,
    'data.filter_empty_gt': lambda cfg: _train_dataset(cfg).get('filter_cfg', {}).get('filter_empty_gt', False),
    'dense.sampling': lambda cfg: _sampling(_dense_train_cfg(cfg), 'anchors'),
    'rpn.sampling': lambda cfg: _sampling(_rpn_train_cfg(cfg), 'anchors'),
    'rpn.rank_weight': _rpn_rank_weight,
    'rpn.iou_target_stds': lambda cfg: lookup(cfg, 'model.rpn_head.bbox_coder.target_stds'),  # its own coder
    'rpn.box_loss_weighting': lambda cfg: _box_loss_weighting(cfg, ('model.rpn_head', )),
    'rcnn.box_loss_weighting': lambda cfg: _box_loss_weighting(cfg, ('model.roi_head.bbox_head',
                                                                      'model.roi_head.bbox_head[0]',
                                                                      'model.roi_head[0].bbox_head')),
    'dense.box_loss_weighting': lambda cfg: _box_loss_weighting(cfg, ('model.aux_bbox_head[0]', 'model.bbox_head')),
    'rank_heads.min_positive_target': _min_positive_target,
    'rcnn.sampling': _rcnn_sampling,
    'rcnn.gt_as_proposals': _gt_as_proposals,
}


def read(cfg: dict, key: str) -> Any:
    """Our value of ``key`` (derived or a path) in the merged config ``cfg`` (``Config.to_dict()`` + filename)."""
    if key in DERIVED:
        return DERIVED[key](cfg)
    return lookup(cfg, key)


def load(path: str) -> dict:
    """The merged config as plain dicts and lists, with its file name.

    mmengine resolves every ``mmdet::`` base by parsing mmdet's model-index and its ~100 metafile YAML files again
    (0.6 s each time); they are files of the installed mmdet, read here once per test session.
    """
    if not hasattr(mmengine_config_utils.load, 'cache_info'):
        mmengine_config_utils.load = functools.lru_cache(maxsize=None)(mmengine_config_utils.load)
    cfg = Config.fromfile(path)
    merged = cfg.to_dict()
    merged['filename'] = path
    return merged


def same(ours: Any, release: Any) -> bool:
    """Equal, with lists and tuples alike and floats compared to 1e-9."""
    if isinstance(ours, (list, tuple)) and isinstance(release, (list, tuple)):
        return len(ours) == len(release) and all(same(a, b) for a, b in zip(ours, release))
    if isinstance(ours, dict) and isinstance(release, dict):
        return ours.keys() == release.keys() and all(same(ours[k], release[k]) for k in ours)
    if isinstance(ours, bool) or isinstance(release, bool):
        return ours is release
    if isinstance(ours, (int, float)) and isinstance(release, (int, float)):
        return abs(ours - release) <= 1e-9 * max(1.0, abs(release))
    return ours == release
