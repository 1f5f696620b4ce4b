"""Testing as ``tools/test.py`` runs it (mmdet's ``tools/test.py`` interface, plus brs-detr's safety).

* The checkpoint must fit the model exactly (no missing or reshaped weights: ``ReliableRunner.checkpoint_fit =
  'weights'``); mmengine would test a partly random network with a warning.
* A checkpoint is unpickled beyond its weights only when it is trusted: saved by a brs-detr Runner of this user
  (signed manifest entry), verified by ``tools/download_checkpoint.py``, or trusted explicitly.
* The test set is checked before the Runner starts (:func:`brs_detr.datasets.check_datasets`).
* ``--out`` writes the predictions pickle atomically (temporary file in the same directory, then ``os.replace``).
* ``--show`` without a display is turned off with a warning instead of crashing; ``--show-dir`` needs no display.
* ``--classwise`` (mmdet's ``CocoMetric(classwise=True)``) and ``--confusion-matrix`` write ``classwise_ap.json`` and
  ``confusion_matrix.{json,csv,png}`` into the run's folder ``work_dir/<timestamp>/``
  (:func:`write_evaluation_files`).
* ``--out``, ``--show-dir`` and ``--work-dir`` are checked for writing, and the config is read, before the heavy
  imports, the model and the evaluation (mmdet finds an unwritable ``--out`` only after the whole evaluation).
* The config dump goes into the run's ``<work_dir>/<timestamp>/`` folder, not over the dump of the training run whose
  work_dir it shares (:class:`~brs_detr.engine.ReliableTestRunner`).
* On a machine without CUDA a distributed run uses gloo (see :mod:`brs_detr.apis.train`).
* ``--tta`` wraps the model in the config's ``tta_model`` and tests with its ``tta_pipeline`` (mmdet's semantics);
  a config without them fails with a message naming the missing key.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config, ConfigDict

from brs_detr.engine.dist import check_launch_environment
from brs_detr.fileio.output_paths import check_not_an_input_folder, check_output_dir, check_output_file
from .cli import ToolInputError, check_checkpoint_file, check_config_file, has_display, is_main_launch_process
from .config_loading import read_config, set_work_dir
from .run_settings import check_run_settings

#: File suffixes ``--out`` accepts (mmdet's DumpDetResults writes a pickle).
PICKLE_SUFFIXES = ('.pkl', '.pickle')
#: The split tools/test.py reads.
TEST_SPLITS = ('test', )


def atomic_dump_metric(out_file_path: str):
    """Return mmdet's ``DumpDetResults`` metric for ``out_file_path``, writing the pickle atomically."""
    from mmdet.evaluation import DumpDetResults
    from mmengine.fileio import dump
    from mmengine.logging import print_log

    from brs_detr.fileio.atomic_io import atomic_open

    class AtomicDumpDetResults(DumpDetResults):
        """mmdet's ``DumpDetResults`` that never leaves a partial pickle at ``out_file_path``.

        Only :meth:`compute_metrics` changes: the results are pickled into a temporary file in the destination
        directory and moved into place with ``os.replace`` (:func:`brs_detr.fileio.atomic_io.atomic_open`).
        """

        def compute_metrics(self, results: list) -> dict:
            with atomic_open(self.out_file_path, 'wb') as file:
                dump(results, file, file_format='pkl')
            print_log(f'Results has been saved to {self.out_file_path}.', logger='current')
            return {}

    return AtomicDumpDetResults(out_file_path=out_file_path)


def enable_visualization(cfg: Config, show: bool, show_dir: Optional[str], wait_time: float) -> None:
    """Turn on mmdet's DetVisualizationHook (drawing; optionally showing and saving under show_dir)."""
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise ToolInputError('--show/--show-dir need default_hooks.visualization=dict(type="DetVisualizationHook") '
                             'in the config')
    from brs_detr.engine.reliability import draw_stored_pixels
    draw_stored_pixels(cfg)  # the pixels the model saw, one file per image
    hook = hooks['visualization']
    hook['draw'] = True
    if show:
        hook['show'] = True
        hook['wait_time'] = wait_time
    if show_dir:
        hook['test_out_dir'] = show_dir


def enable_tta(cfg: Config) -> None:
    """``--tta`` as mmdet 3.x's tools/test.py does it: wrap the model in ``cfg.tta_model`` and test with
    ``cfg.tta_pipeline``.

    Raises:
        ToolInputError: The config has no ``tta_model`` or ``tta_pipeline`` (mmdet would fall back to a flip with
            NMS that suits neither every model nor every data set; here the config says what it wants).
    """
    missing = [key for key in ('tta_model', 'tta_pipeline') if cfg.get(key) is None]
    if missing:
        raise ToolInputError(f'--tta needs {" and ".join(missing)} in the config {cfg.filename} (docs/tools.md: '
                             f'configs/_base_/tta/*.py have examples)')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset_cfg = cfg.test_dataloader.dataset
    while 'dataset' in dataset_cfg:  # dataset wrappers
        dataset_cfg = dataset_cfg['dataset']
    dataset_cfg.pipeline = cfg.tta_pipeline


def coco_metrics(evaluator_cfg) -> list:
    """The CocoMetric configs (mmdet's ``CocoMetric`` or a subclass) of an evaluator config."""
    from mmdet.evaluation import CocoMetric
    from mmdet.registry import METRICS

    metrics = evaluator_cfg if isinstance(evaluator_cfg, (list, tuple)) else [evaluator_cfg]
    found = []
    for metric in metrics:
        kind = metric.get('type') if isinstance(metric, dict) else None
        kind = METRICS.get(kind) if isinstance(kind, str) else kind
        if isinstance(kind, type) and issubclass(kind, CocoMetric):
            found.append(metric)
    return found


def enable_classwise(cfg: Config) -> None:
    """``--classwise``: every CocoMetric of ``test_evaluator`` reports the AP of each class (mmdet's option)."""
    metrics = coco_metrics(cfg.get('test_evaluator') or [])
    if not metrics:
        raise ToolInputError('--classwise needs a CocoMetric in test_evaluator (the config has '
                             f'{cfg.get("test_evaluator")})')
    for metric in metrics:
        metric['classwise'] = True


def check_evaluation_options(args: argparse.Namespace) -> None:
    """``--score-thr`` and ``--tp-iou-thr`` only mean something with ``--confusion-matrix``."""
    if not args.confusion_matrix:
        given = [option for option, value in (('--score-thr', args.score_thr), ('--tp-iou-thr', args.tp_iou_thr))
                 if value is not None]
        if given:
            raise ToolInputError(f'{" and ".join(given)} set the confusion matrix: add --confusion-matrix')
    if args.score_thr is not None and not 0 <= args.score_thr <= 1:
        raise ToolInputError(f'--score-thr must be between 0 and 1, got {args.score_thr}')
    if args.tp_iou_thr is not None and not 0 < args.tp_iou_thr <= 1:
        raise ToolInputError(f'--tp-iou-thr must be in (0, 1], got {args.tp_iou_thr}')


def classwise_ap(metrics: dict, classes: Sequence[str], metric_names: Sequence[str]) -> dict:
    """Per-class AP of CocoMetric's output (``<prefix>/<class>_precision``: AP at IoU 0.50:0.95).

    CocoMetric writes the per-class APs of each of its metrics (bbox, segm) under the same keys, so the values are
    those of its last metric.
    """
    values = {}
    for name in classes:
        found = [value for key, value in metrics.items() if key.split('/')[-1] == f'{name}_precision']
        if found:
            values[name] = found[-1]
    return dict(metric=metric_names[-1] if metric_names else 'bbox', ap=values,
                note='AP at IoU 0.50:0.95 per class (mmdet CocoMetric classwise); nan: no object of the class')


def write_evaluation_files(runner, cfg: Config, args: argparse.Namespace, metrics: dict, collector) -> None:
    """``classwise_ap.json`` and ``confusion_matrix.*`` in the run's log folder (main process only)."""
    import json

    from mmengine.dist import is_main_process
    from mmengine.logging import print_log

    from brs_detr.analysis.confusion_matrix import confusion_matrix, format_matrix, write_confusion_matrix
    from brs_detr.analysis.detections import detections_from_results, truth_from_dataset
    from brs_detr.analysis.score_threshold import resolve_score_threshold
    from brs_detr.fileio.atomic_io import atomic_write_text

    if not is_main_process():
        return
    dataset = runner.test_dataloader.dataset
    classes = list(dataset.metainfo['classes'])
    if args.classwise:
        names = [m for metric in coco_metrics(cfg.test_evaluator) for m in (
            metric.get('metric', 'bbox') if isinstance(metric.get('metric', 'bbox'), (list, tuple)) else
            [metric.get('metric', 'bbox')])]
        path = osp.join(runner.log_dir, 'classwise_ap.json')
        atomic_write_text(json.dumps(classwise_ap(metrics, classes, names), indent=1) + '\n', path)
        print_log(f'per-class AP written to {path}', logger='current')
    if collector is not None:
        score_thr = resolve_score_threshold(args.score_thr, args.checkpoint, classes, warn=warn)
        tp_iou_thr = 0.5 if args.tp_iou_thr is None else args.tp_iou_thr
        matrix = confusion_matrix(detections_from_results(collector.collected, 'the test run'),
                                  truth_from_dataset(dataset), classes, score_thr, tp_iou_thr)
        paths = write_confusion_matrix(matrix, classes, runner.log_dir, score_thr, tp_iou_thr)
        print_log(f'confusion matrix ({score_thr.describe(classes)}, IoU {tp_iou_thr:g}; rows: ground truth, '
                  f'columns: prediction):\n{format_matrix(matrix, classes)}\nwritten to {", ".join(paths.values())}',
                  logger='current')


def warn(message: str) -> None:
    from .launch import warn as warn_once
    warn_once(message)


def check_outputs(args: argparse.Namespace, work_dir: str, cfg: Optional[Config] = None) -> None:
    """``--out``, ``--show-dir`` (relative to ``<work_dir>/<timestamp>/``) and the work_dir can be written (rank 0);
    ``--show-dir`` is not a folder of the config's images (the drawings would replace them).

    Raises:
        OutputPathError: Naming the option, the path and the reason.
    """
    if not is_main_launch_process():
        return
    check_output_dir(work_dir, '--work-dir', create=True)
    if args.out is not None:
        check_output_file(args.out, '--out')
    if args.show_dir:
        show_dir = args.show_dir if osp.isabs(args.show_dir) else osp.join(work_dir, args.show_dir)
        check_output_dir(show_dir, '--show-dir')
        if cfg is not None:
            from brs_detr.datasets.data_check import image_folders
            check_not_an_input_folder(show_dir, '--show-dir', image_folders(cfg, ('train', 'val', 'test')))


def test(args: argparse.Namespace) -> None:
    """Test as ``tools/test.py`` does with the parsed ``args`` (see ``tools/test.py --help``)."""
    if args.out is not None and not args.out.endswith(PICKLE_SUFFIXES):
        raise ToolInputError(f'--out must name a .pkl or .pickle file, got {args.out}')
    check_evaluation_options(args)
    check_config_file(args.config)
    check_checkpoint_file(args.checkpoint)
    cfg = read_config(args.config, args.cfg_options)  # light: syntax, _base_, custom_imports, --cfg-options
    cfg.launcher = args.launcher
    check_run_settings(cfg, TEST_SPLITS)
    check_launch_environment(cfg.launcher)
    set_work_dir(cfg, args.work_dir, args.config)
    check_outputs(args, cfg.work_dir, cfg)
    if args.show or args.show_dir:
        from brs_detr.datasets.num_classes import check_palettes
        check_palettes(cfg, TEST_SPLITS)
    cfg.load_from = args.checkpoint
    _test(cfg, args)


def _test(cfg: Config, args: argparse.Namespace) -> None:
    """The heavy part of :func:`test`."""
    from brs_detr.engine.dist import setup_distributed_without_cuda
    from .launch import build_runner, check_config_components, prepare_datasets

    if args.classwise:
        enable_classwise(cfg)

    show = args.show
    if show and not has_display():
        warn('--show: no display available (DISPLAY/WAYLAND_DISPLAY unset); not showing images' +
             ('' if args.show_dir else ', use --show-dir to save them'))
        show = False
    if show or args.show_dir:
        enable_visualization(cfg, show, args.show_dir, args.wait_time)
    if getattr(args, 'tta', False):
        enable_tta(cfg)
    check_config_components(cfg)
    prepare_datasets(cfg, TEST_SPLITS, args.skip_data_check)

    setup_distributed_without_cuda(cfg)

    runner = build_runner(cfg, for_testing=True)
    runner.checkpoint_fit = 'weights'
    if args.out is not None:
        runner.test_evaluator.metrics.append(atomic_dump_metric(args.out))
    collector = None
    if args.confusion_matrix:
        from brs_detr.analysis.detections import PredictionCollector
        collector = PredictionCollector()
        runner.test_evaluator.metrics.append(collector)
    metrics = runner.test()
    if args.classwise or collector is not None:
        write_evaluation_files(runner, cfg, args, metrics, collector)
