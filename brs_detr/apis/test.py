"""Testing as ``tools/test.py`` runs it (mmdet's ``tools/test.py`` interface, plus brs-detr's safety).

* The checkpoint must fit the model exactly (no missing or reshaped weights: ``ReliableRunner.checkpoint_fit =
  'weights'``); mmengine would test a partly random network with a warning.
* A checkpoint is unpickled beyond its weights only when it is trusted: saved by a brs-detr Runner of this user
  (signed manifest entry), verified by ``tools/download_checkpoint.py``, or trusted explicitly.
* The test set is checked before the Runner starts (:func:`brs_detr.datasets.check_datasets`).
* ``--out`` writes the predictions pickle atomically (temporary file in the same directory, then ``os.replace``).
* ``--show`` without a display is turned off with a warning instead of crashing; ``--show-dir`` needs no display.
* On a machine without CUDA a distributed run uses gloo (see :mod:`brs_detr.apis.train`).
* ``--tta`` wraps the model in the config's ``tta_model`` and tests with its ``tta_pipeline`` (mmdet's semantics);
  a config without them fails with a message naming the missing key.
"""
from __future__ import annotations

import argparse
from typing import Optional

from mmengine.config import Config, ConfigDict

from brs_detr.engine.dist import setup_distributed_without_cuda
from .cli import has_display
from .launch import (ToolInputError, build_runner, check_checkpoint_file, check_config_file, load_config,
                     prepare_datasets, set_work_dir, warn)

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


def test(args: argparse.Namespace) -> None:
    """Test as ``tools/test.py`` does with the parsed ``args`` (see ``tools/test.py --help``)."""
    if args.out is not None and not args.out.endswith(PICKLE_SUFFIXES):
        raise ToolInputError(f'--out must name a .pkl or .pickle file, got {args.out}')
    check_config_file(args.config)
    check_checkpoint_file(args.checkpoint)

    cfg = load_config(args.config, args.cfg_options, args.launcher)
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint

    show = args.show
    if show and not has_display():
        warn('--show: no display available (DISPLAY/WAYLAND_DISPLAY unset); not showing images' +
             ('' if args.show_dir else ', use --show-dir to save them'))
        show = False
    if show or args.show_dir:
        enable_visualization(cfg, show, args.show_dir, args.wait_time)
    if getattr(args, 'tta', False):
        enable_tta(cfg)
    prepare_datasets(cfg, TEST_SPLITS, args.skip_data_check)

    setup_distributed_without_cuda(cfg)

    runner = build_runner(cfg)
    runner.checkpoint_fit = 'weights'
    if args.out is not None:
        runner.test_evaluator.metrics.append(atomic_dump_metric(args.out))
    runner.test()
