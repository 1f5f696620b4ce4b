"""What ``tools/train.py`` and ``tools/test.py`` share after parsing: config loading and checks, data checks, the Runner.

The tools parse their arguments with :mod:`brs_detr.apis.cli` (light), then call :func:`brs_detr.apis.train.train` /
:func:`brs_detr.apis.test.test` through :func:`~brs_detr.apis.cli.run_tool_main`. Bad input raises
:class:`~brs_detr.apis.cli.ToolInputError` (or another of :data:`~brs_detr.apis.cli.USER_ERRORS`) anywhere below.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config
from mmengine.logging import print_log

from brs_detr.datasets.data_check import check_datasets, use_checked_loading
from brs_detr.datasets.num_classes import check_model_num_classes, dataset_classes
from brs_detr.engine.runner import ReliableRunner, ReliableTestRunner
from .config_loading import (NEW_KEY_PREFIX, RUNNER_FIELDS, check_cfg_options,  # noqa: F401
                             check_config_components, read_config, set_work_dir)
from .cli import (ToolInputError, add_launch_arguments, check_checkpoint_file, check_config_file,  # noqa: F401
                  error_message, fail, is_main_launch_process, parse_tool_args, run_tool_main, tool_name)


def warn(message: str) -> None:
    """Log a warning once per job: before the Runner exists every process would print it, so only rank 0 does."""
    if is_main_launch_process():
        print_log(message, logger='current', level=logging.WARNING)


def load_config(config_path: str, cfg_options: Optional[dict], launcher: str) -> Config:
    """Read ``config_path`` and apply ``--cfg-options`` (:func:`~brs_detr.apis.config_loading.read_config`, which
    also gives every head the datasets' class count), set the launcher."""
    cfg = read_config(config_path, cfg_options)
    cfg.launcher = launcher
    return cfg


def prepare_datasets(cfg: Config, splits: Sequence[str], skip_check: bool) -> None:
    """Load the data of ``splits`` as the tools do (:func:`~brs_detr.datasets.data_check.use_checked_loading`: image
    loading errors name their image and annotation file, stored pixels, sizes checked, malformed annotations
    dropped), and check those datasets (on rank 0, before the Runner exists) unless ``skip_check``
    (``--skip-data-check``)."""
    use_checked_loading(cfg, splits)
    if skip_check:
        warn(f'--skip-data-check: the {"/".join(splits)} data are not checked')
    elif is_main_launch_process():
        check_datasets(cfg, splits)


def build_runner(cfg: Config, for_testing: bool = False):
    """Build the Runner named by ``runner_type`` (default: :class:`~brs_detr.engine.ReliableRunner`, or
    :class:`~brs_detr.engine.ReliableTestRunner` ``for_testing``)."""
    from mmdet.registry import RUNNERS

    if 'runner_type' not in cfg:
        runner = (ReliableTestRunner if for_testing else ReliableRunner).from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    check_runner_num_classes(runner, cfg)
    check_mask_metrics(runner, cfg, 'test_evaluator' if for_testing else 'val_evaluator')
    return runner


def check_runner_num_classes(runner, cfg: Config) -> None:
    """Every head of the built model predicts the datasets' classes (a head that leaves ``num_classes`` at its
    class's default escapes the config check; :func:`~brs_detr.datasets.num_classes.check_model_num_classes`)."""
    from mmengine.model import BaseTTAModel, is_model_wrapper

    found = dataset_classes(cfg)
    if found is not None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_model_num_classes(model.module if isinstance(model, BaseTTAModel) else model,  # --tta: its detector
                                len(found.classes))




#: Evaluator metrics that read predicted masks.
MASK_METRICS = ('segm', )


def _predicts_masks(model) -> bool:
    """Whether an mmdet detector predicts instance masks (a two-stage detector with a mask branch, an instance
    segmentor with a mask head, a MaskFormer)."""
    from mmdet.models.detectors import MaskFormer

    return (bool(getattr(model, 'with_mask', False)) or getattr(model, 'mask_head', None) is not None
            or isinstance(model, MaskFormer))


def _evaluator_metrics(evaluator) -> list:
    """``[(metric name, evaluator type)]`` of an evaluator config (a dict or a list of them)."""
    found = []
    for metric_cfg in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
        if not isinstance(metric_cfg, dict):
            continue
        names = metric_cfg.get('metric', [])
        for name in [names] if isinstance(names, str) else names:
            found.append((name, metric_cfg.get('type')))
    return found


def check_mask_metrics(runner, cfg: Config, evaluator_key: str) -> None:
    """Refuse a mask metric (``segm``) of the evaluator ``evaluator_key`` (``val_evaluator``, ``test_evaluator``)
    for a model that predicts no masks, before the evaluation it would fail after.

    mmdet's ``CocoMetric`` finds the missing masks only when it computes the metric, after the whole inference (and
    during training, after the first epoch): ``KeyError: 'segm is not in results'``.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper

    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    model = model.module if isinstance(model, BaseTTAModel) else model
    if _predicts_masks(model):
        return
    for name, metric_type in _evaluator_metrics(cfg.get(evaluator_key)):
        if name in MASK_METRICS:
            raise ToolInputError(f'{evaluator_key} asks {metric_type} for the {name!r} metric, but the model '
                                 f'({type(model).__name__}) predicts no masks: evaluate metric=\'bbox\' (e.g. '
                                 f'--cfg-options {evaluator_key}.metric=bbox), or use a config with a mask head')
