"""The numbers of a run that mmengine, torch or mmdet check only deep inside the run, or never.

Checked after ``--cfg-options`` and before anything is built, each with a one-line error naming the config key:

* the batch size and DataLoader workers of every split the tool reads (torch raises a ``ValueError`` from deep in
  ``Runner.build_dataloader``, after the model was built), and that its pipeline packs the samples for the model
  (without ``PackDetInputs`` the data preprocessor fails on the first batch with ``KeyError: 'inputs'``);
* the training length (``train_cfg.max_epochs`` / ``max_iters`` 0 trains nothing and exits 0; a negative one too)
  and the validation interval;
* the thresholds of the model's post-processing (``model.test_cfg``: a score or IoU threshold outside [0, 1], a
  ``max_per_img`` of 0: mmdet evaluates the whole set and reports an empty result, or a lower mAP);
* the optimizer's learning rate (a negative or NaN lr is refused by torch only after the model was built; an lr of
  0 trains nothing and exits 0) and weight decay.

A learning-rate step that falls after the end of training (``param_scheduler`` milestones beyond ``max_epochs``,
typical after ``--cfg-options train_cfg.max_epochs=N`` on a config that derived its schedule from another length)
is legitimate but rarely meant: it is logged as a warning naming the scheduler and the length. So is a run whose
total batch (processes x images per process x gradient accumulation) differs from the one the config's learning
rate is for (``auto_scale_lr.base_batch_size``) without ``--auto-scale-lr``: the 4-GPU config on 1 GPU trains with a
quarter of the batch at the full learning rate, which mmdet does silently.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, List, Optional, Sequence

from mmengine.config import Config

from .cli import ToolInputError

#: The dataloader config key of each split.
DATALOADER_OF_SPLIT = dict(train='train_dataloader', val='val_dataloader', test='test_dataloader')
#: What the name of a transform that packs samples for the model contains (mmdet's ``PackDetInputs``,
#: ``PackTrackInputs``, ...).
PACKING_TRANSFORM = 'Pack'
#: ``model.test_cfg`` keys (at any depth) that are a score or IoU threshold: detection scores and IoUs lie in [0, 1].
UNIT_THRESHOLD_KEYS = ('score_thr', 'iou_threshold', 'iou_thr')
#: ``model.test_cfg`` keys (at any depth) that count the detections kept per image: 0 keeps none.
DETECTION_COUNT_KEYS = ('max_per_img', )
#: ``train_cfg`` keys that give the training length, by loop.
LENGTH_KEYS = ('max_epochs', 'max_iters')


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dataloader_problems(cfg: Config, splits: Sequence[str]) -> List[str]:
    problems = []
    for split in splits:
        key = DATALOADER_OF_SPLIT[split]
        loader = cfg.get(key) or {}
        batch_size = loader.get('batch_size', 1)
        if not _is_int(batch_size) or batch_size < 1:
            problems.append(f'{key}.batch_size={batch_size!r}: the images per process and batch must be a positive '
                            f'integer')
        workers = loader.get('num_workers', 0)
        if not _is_int(workers) or workers < 0:
            problems.append(f'{key}.num_workers={workers!r}: the DataLoader worker processes must be an integer >= 0 '
                            f'(0 loads in the main process)')
    return problems


def _pipelines(dataset_cfg: Any) -> List[list]:
    """The ``pipeline`` of a dataset config and of every dataset it wraps."""
    if not isinstance(dataset_cfg, dict):
        return []
    found = [dataset_cfg['pipeline']] if isinstance(dataset_cfg.get('pipeline'), (list, tuple)) else []
    children = dataset_cfg.get('datasets') if isinstance(dataset_cfg.get('datasets'), (list, tuple)) else [
        dataset_cfg.get('dataset')]
    for child in children:
        found += _pipelines(child)
    return found


def _pipeline_problems(cfg: Config, splits: Sequence[str]) -> List[str]:
    problems = []
    for split in splits:
        key = DATALOADER_OF_SPLIT[split]
        pipelines = _pipelines((cfg.get(key) or {}).get('dataset'))
        types = [str(t.get('type')) for pipeline in pipelines for t in pipeline if isinstance(t, dict)]
        if pipelines and not any(PACKING_TRANSFORM in name for name in types):
            problems.append(f'{key}.dataset.pipeline ({", ".join(types) or "empty"}) does not end in PackDetInputs: '
                            f'the model would get no inputs (mmdet fails on the first batch with KeyError: '
                            f"'inputs'); end it with dict(type='PackDetInputs')")
    return problems


def _schedule_problems(train_cfg: dict) -> List[str]:
    problems = []
    for key in LENGTH_KEYS:
        if key in train_cfg and (not _is_int(train_cfg[key]) or train_cfg[key] < 1):
            problems.append(f'train_cfg.{key}={train_cfg[key]!r}: training must last at least one '
                            f'{key[len("max_"):-1]} (mmengine trains nothing and reports success)')
    interval = train_cfg.get('val_interval', 1)
    if not _is_int(interval) or interval < 1:
        problems.append(f'train_cfg.val_interval={interval!r}: must be a positive integer (validate every N '
                        f'epochs/iterations; leave val_cfg/val_dataloader/val_evaluator out to train without it)')
    return problems


def _optimizer_problems(optim_wrapper: dict) -> List[str]:
    optimizer = optim_wrapper.get('optimizer') or {}
    problems = []
    lr = optimizer.get('lr')
    if lr is not None and (not isinstance(lr, Real) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0):
        problems.append(f'optim_wrapper.optimizer.lr={lr!r}: the learning rate must be a positive finite number '
                        f'(0 would train without changing a weight)')
    decay = optimizer.get('weight_decay')
    if decay is not None and (not isinstance(decay, Real) or isinstance(decay, bool) or not math.isfinite(decay)
                              or decay < 0):
        problems.append(f'optim_wrapper.optimizer.weight_decay={decay!r}: must be a finite number >= 0')
    return problems


def _settings(node: Any, path: str) -> List[tuple]:
    """``(config key, name, value)`` of every entry in the nested dicts and lists of ``node``."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            found.append((f'{path}.{name}', name, value))
            found += _settings(value, f'{path}.{name}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found += _settings(value, f'{path}.{index}')
    return found


def _test_cfg_problems(model_cfg: dict) -> List[str]:
    """Thresholds of the model's post-processing that keep no detection, or every one: mmdet runs the whole
    evaluation and reports an empty result (``score_thr=1.1``, ``max_per_img=0``) or a lower mAP (an NMS IoU
    threshold above 1 suppresses nothing)."""
    problems = []
    for key, name, value in _settings(model_cfg.get('test_cfg'), 'model.test_cfg'):
        if name in UNIT_THRESHOLD_KEYS and not (isinstance(value, Real) and not isinstance(value, bool)
                                                and 0 <= value <= 1):
            problems.append(f'{key}={value!r}: detection scores and IoUs lie in [0, 1]; a threshold outside keeps no '
                            f'detection or suppresses none')
        if name in DETECTION_COUNT_KEYS and (not _is_int(value) or value == 0 or value < -1):
            problems.append(f'{key}={value!r}: the detections kept per image must be a positive integer (0 keeps '
                            f'none: the evaluation would find no result)')
    return problems


def check_run_settings(cfg: Config, splits: Sequence[str]) -> None:
    """Refuse batch sizes, worker counts, training lengths and learning rates no run can use.

    Args:
        cfg: The config after ``--cfg-options``.
        splits: The splits the tool reads (``'train'``, ``'val'``, ``'test'``); the training settings are checked
            when ``'train'`` is among them.

    Raises:
        ToolInputError: One line per bad setting, each naming its config key and value.
    """
    problems = (_dataloader_problems(cfg, splits) + _pipeline_problems(cfg, splits)
                + _test_cfg_problems(cfg.get('model') or {}))
    if 'train' in splits:
        problems += _schedule_problems(cfg.get('train_cfg') or {})
        problems += _optimizer_problems(cfg.get('optim_wrapper') or {})
    if problems:
        raise ToolInputError('\n'.join(problems))


def _training_length(train_cfg: dict) -> Optional[tuple]:
    """``(length, unit)`` of the training loop (``by_epoch`` schedulers count epochs, others iterations)."""
    if 'max_epochs' in train_cfg:
        return train_cfg['max_epochs'], 'epochs'
    if 'max_iters' in train_cfg:
        return train_cfg['max_iters'], 'iterations'
    return None


def late_schedule_steps(cfg: Config) -> List[str]:
    """Learning-rate steps (``milestones``) of the schedulers that no training step reaches.

    Returns:
        One description per such scheduler, e.g. ``param_scheduler[1] (MultiStepLR) milestones [8, 11] ...``.
    """
    length = _training_length(cfg.get('train_cfg') or {})
    schedulers = cfg.get('param_scheduler') or []
    schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
    if length is None:
        return []
    max_length, unit = length
    late = []
    for index, scheduler in enumerate(schedulers):
        milestones = scheduler.get('milestones') if isinstance(scheduler, dict) else None
        if not milestones:
            continue
        counts_epochs = scheduler.get('by_epoch', True)
        if counts_epochs != (unit == 'epochs'):
            continue  # an iteration scheduler in an epoch loop: the epoch length is not known here
        beyond = [step for step in milestones if _is_int(step) and step >= max_length]
        if beyond:
            late.append(f'param_scheduler[{index}] ({scheduler.get("type")}) milestones {list(milestones)}: the '
                        f'steps at {beyond} come at or after the end of training ({max_length} {unit}), so the '
                        f'learning rate never drops there')
    return late


def batch_size_mismatch(cfg: Config, world_size: int) -> Optional[str]:
    """A description of how the run's total batch differs from ``auto_scale_lr.base_batch_size`` (the batch the
    config's learning rate is for), when ``auto_scale_lr`` is off; ``None`` when they agree or nothing says.

    Args:
        cfg: The config, with ``--cfg-options`` and ``--auto-scale-lr`` applied.
        world_size: The number of training processes.
    """
    auto_scale_lr = cfg.get('auto_scale_lr') or {}
    base = auto_scale_lr.get('base_batch_size')
    per_process = (cfg.get('train_dataloader') or {}).get('batch_size')
    accumulation = (cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1)
    if auto_scale_lr.get('enable') or not all(_is_int(v) for v in (base, per_process, accumulation)):
        return None
    total = world_size * per_process * accumulation
    if total == base:
        return None
    accumulated = f' x {accumulation} accumulated' if accumulation != 1 else ''
    return (f'this run updates with a batch of {total} images ({world_size} process{"es" * (world_size != 1)} x '
            f'{per_process} images{accumulated}), but the config\'s learning rate is for a batch of {base} '
            f'(auto_scale_lr.base_batch_size): pass --auto-scale-lr to scale it by {total}/{base} (linear scaling), '
            f'or train with a total batch of {base} to reproduce the config')
