"""Test (and evaluate) a detector checkpoint with an mmdet 3.x / mmengine config (mmdet's ``tools/test.py`` interface).

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl] [--show-dir DIR] [--show]
                         [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-process testing goes through ``tools/dist_test.sh`` (torchrun) or ``tools/slurm_test.sh``.

Additions to mmdet's tool:

* ``import brs_detr`` registers the project's modules and installs its checkpoint loader.
* The checkpoint's directory is trusted for full unpickling only when it is a Runner work_dir (it holds a
  ``last_checkpoint`` marker); any other checkpoint is loaded with ``weights_only=True``.
* ``--out`` writes the predictions pickle atomically (temporary file in the same directory, then ``os.replace``).
* ``--show`` without a display is turned off with a warning instead of crashing; ``--show-dir`` needs no display.
* On a machine without CUDA a distributed run uses gloo (see ``tools/train.py``).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import tempfile
from typing import Optional, Sequence

from mmengine.fileio import dump
from mmengine.logging import print_log

# tools/ is sys.path[0] when this file runs as a script: reuse train.py's helpers.
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import (build_runner, check_checkpoint, check_config, fail, load_config,  # noqa: E402
                   parse_with_launch_args, run_checked, run_tool_main, set_work_dir, setup_distributed_without_cuda,
                   trust_checkpoint_dir, warn)


def atomic_dump_metric(out_file_path: str):
    """Return mmdet's ``DumpDetResults`` metric for ``out_file_path``, writing the pickle atomically.

    (mmdet is imported here, not at the top: it takes seconds and the argument checks come first.)
    """
    from mmdet.evaluation import DumpDetResults

    class AtomicDumpDetResults(DumpDetResults):
        """mmdet's ``DumpDetResults`` that never leaves a partial pickle at ``out_file_path``.

        Only :meth:`compute_metrics` changes: the results are dumped to a temporary file in the destination
        directory and moved into place with ``os.replace`` (atomic on POSIX and Windows within one file system).
        """

        def compute_metrics(self, results: list) -> dict:
            return _dump_atomically(results, self.out_file_path)

    return AtomicDumpDetResults(out_file_path=out_file_path)


def _dump_atomically(results: list, out_file_path: str) -> dict:
    """Pickle ``results`` to a temporary file next to ``out_file_path``, then rename it into place."""
    out_dir = osp.dirname(osp.abspath(out_file_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f'.{osp.basename(out_file_path)}.', suffix='.tmp', dir=out_dir)
    os.close(fd)
    try:
        dump(results, tmp_path, file_format='pkl')
        os.replace(tmp_path, out_file_path)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise
    print_log(f'Results has been saved to {out_file_path}.', logger='current')
    return {}


def has_display() -> bool:
    """Whether a window can be opened (always assumed on non-POSIX systems)."""
    if os.name != 'posix' or sys.platform == 'darwin':
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def enable_visualization(cfg, show: bool, show_dir: Optional[str], wait_time: float) -> None:
    """Turn on mmdet's DetVisualizationHook (drawing; optionally showing and saving under show_dir)."""
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        fail('--show/--show-dir need default_hooks.visualization=dict(type="DetVisualizationHook") in the config')
    hook = hooks['visualization']
    hook['draw'] = True
    if show:
        hook['show'] = True
        hook['wait_time'] = wait_time
    if show_dir:
        hook['test_out_dir'] = show_dir


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector (brs-detr, mmdet 3.x)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (path or URL)')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file (.pkl/.pickle) for offline '
                        'evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results in a window')
    parser.add_argument('--show-dir', help='directory where painted images are saved; a relative path is '
                        'relative to work_dir/<timestamp>/')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of --show (s)')
    return parse_with_launch_args(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        fail(f'--out must name a .pkl or .pickle file, got {args.out}')
    check_config(args.config)
    check_checkpoint(args.checkpoint)
    import brs_detr  # noqa: F401  (registers modules, installs the checkpoint loader; takes seconds)

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

    setup_distributed_without_cuda(cfg)
    trust_checkpoint_dir(args.checkpoint)

    runner = build_runner(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(atomic_dump_metric(args.out))
    run_checked(runner.test)


if __name__ == '__main__':
    run_tool_main(main)
