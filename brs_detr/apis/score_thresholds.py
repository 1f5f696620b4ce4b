"""Choose a checkpoint's score thresholds on the validation set, as ``tools/analysis_tools/choose_score_threshold.py``
runs it.

The detections come from ``--results`` (the pickle of ``tools/test.py --out``, read without running code from it)
or from running the checkpoint on the config's ``val_dataloader`` (through the same Runner as ``tools/test.py``: the
weights must fit exactly, the data are checked first); the ground truth from the config's validation dataset. The
choice itself (:func:`brs_detr.analysis.score_threshold.choose_score_thresholds`) is printed as a table and written
next to the checkpoint (``<checkpoint>.score_thr.json``), where the demo and the inferencer find it.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Any, List, Tuple

from mmengine.config import Config

from brs_detr.engine.dist import setup_distributed_without_cuda
from brs_detr.fileio.output_paths import check_output_file
from .launch import (ToolInputError, build_runner, check_checkpoint_file, check_config_file, load_config,
                     prepare_datasets, set_work_dir)

#: The split the thresholds are chosen on.
SPLIT = 'val'


def validation_dataset(cfg: Config):
    """The config's validation dataset (annotations not read yet)."""
    from mmengine.registry import init_default_scope

    from mmdet.registry import DATASETS

    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset_cfg = cfg.get(f'{SPLIT}_dataloader', {}).get('dataset')
    if not dataset_cfg:
        raise ToolInputError(f'{cfg.filename} has no {SPLIT}_dataloader.dataset to choose the thresholds on')
    return DATASETS.build(dict(dataset_cfg, lazy_init=True))


def predict_validation_set(cfg: Config, checkpoint: str, skip_data_check: bool) -> Tuple[List[dict], Any]:
    """Run ``checkpoint`` on the validation set; its result dicts and the dataset.

    The config's ``val_dataloader`` becomes the test loader of a :class:`~brs_detr.engine.ReliableRunner` whose
    evaluator only collects the detections (:class:`~brs_detr.analysis.detections.PredictionCollector`).
    """
    from brs_detr.analysis.detections import PredictionCollector

    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    cfg.test_cfg = dict(type='TestLoop')
    cfg.load_from = checkpoint
    prepare_datasets(cfg, ('test', ), skip_data_check)
    setup_distributed_without_cuda(cfg)
    runner = build_runner(cfg)
    runner.checkpoint_fit = 'weights'
    collector = PredictionCollector()
    runner.test_evaluator.metrics[:] = [collector]
    runner.test()
    return collector.collected, runner.test_dataloader.dataset


def choose_thresholds(args: argparse.Namespace) -> str:
    """What ``tools/analysis_tools/choose_score_threshold.py`` does with its parsed ``args``; the written file."""
    from brs_detr.analysis.detections import (check_same_images, detections_from_results, read_results_pickle,
                                              truth_from_dataset)
    from brs_detr.analysis.score_threshold import (choose_score_thresholds, format_table, thresholds_path,
                                                   write_thresholds)

    if args.target_precision is not None and not 0 < args.target_precision <= 1:
        raise ToolInputError(f'--target-precision must be in (0, 1], got {args.target_precision}')
    check_config_file(args.config)
    check_checkpoint_file(args.checkpoint)
    # before the evaluation, which the write would otherwise lose (the default file sits next to the checkpoint,
    # whose folder may be read-only: a shared model folder)
    check_output_file(args.out or thresholds_path(args.checkpoint),
                      '--out' if args.out else f'the thresholds file of {args.checkpoint} (choose another with --out)')
    cfg = load_config(args.config, args.cfg_options, 'none')
    if args.results is not None:
        if not osp.isfile(args.results):
            raise ToolInputError(f'results file not found: {args.results}')
        source = args.results
        results = read_results_pickle(args.results)
        dataset = validation_dataset(cfg)
    else:
        set_work_dir(cfg, args.work_dir, args.config)
        source = f'{args.checkpoint} on the {SPLIT} set'
        results, dataset = predict_validation_set(cfg, args.checkpoint, args.skip_data_check)
    detections = detections_from_results(results, source)
    truth = truth_from_dataset(dataset)
    check_same_images(detections, truth, source, f'{SPLIT} set of {args.config}')
    classes = list(dataset.metainfo['classes'])
    thresholds = choose_score_thresholds(detections, truth, classes, args.iou_thr, args.target_precision)
    print(format_table(thresholds))
    path = write_thresholds(thresholds, args.checkpoint, path=args.out, config=args.config,
                            results=args.results, split=SPLIT, ann_file=getattr(dataset, 'ann_file', None))
    print(f'wrote {path}' + ('' if args.out else f': demo/image_demo.py and BRSDetInferencer draw with these '
                             f'thresholds for {args.checkpoint} unless --score-thr is given'))
    return path
