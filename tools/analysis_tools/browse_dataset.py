"""Draw the ground truth of a config's training set after its pipeline (mmdet 3.x's ``browse_dataset.py`` interface).

Usage::

    python tools/analysis_tools/browse_dataset.py CONFIG [--output-dir DIR] [--not-show] [--show-interval S]
                                                  [--max-samples N] [--skip-data-check]
                                                  [--cfg-options KEY=VALUE ...] [--debug]

Every sample of ``train_dataloader.dataset`` goes through the training pipeline (resize, flip, crops, ...) and is
drawn with its ground truth (boxes with class names; masks when the pipeline loads them) into ``DIR/<stem>.png``.
Without a display the images are only saved (``--output-dir`` is then required). See docs/demo.md.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from brs_detr.apis.cli import add_cfg_options_argument, add_debug_argument, has_display, run_tool_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Browse a dataset: draw its ground truth after the train pipeline')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--output-dir', help='save the drawn samples as DIR/<stem>.png (needed without a display)')
    parser.add_argument('--not-show', action='store_true', help='do not show the samples in a window')
    parser.add_argument('--show-interval', type=float, default=2, help='seconds each sample is shown')
    parser.add_argument('--max-samples', type=int, help='draw at most this many samples (default: all)')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not check the training set before drawing (as tools/train.py --skip-data-check)')
    add_cfg_options_argument(parser, 'override config keys, as xxx=yyy pairs, e.g. '
                             'train_dataloader.dataset.pipeline.3.prob=0.0 (the key must exist in the config and the '
                             'value keep its type; write +key=value to add a new one)')
    add_debug_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f'--max-samples must be at least 1, got {args.max_samples}')
    show = not args.not_show
    if show and not has_display() and args.output_dir is None:
        parser.error('no display (DISPLAY/WAYLAND_DISPLAY is not set): pass --output-dir DIR to save the images')
    from brs_detr.apis.config_loading import read_config
    from brs_detr.fileio.output_paths import check_output_dir

    cfg = read_config(args.config, args.cfg_options)  # before the heavy imports: a bad config fails at once
    if args.output_dir is not None:
        check_output_dir(args.output_dir, '--output-dir')

    from mmengine.logging import print_log

    from brs_detr.apis.dataset_browser import browse_dataset
    from brs_detr.datasets.data_check import image_folders
    from brs_detr.datasets.num_classes import check_palettes
    from brs_detr.fileio.output_paths import check_not_an_input_folder

    if args.output_dir is not None:  # drawings written among the images would replace them
        check_not_an_input_folder(args.output_dir, '--output-dir', image_folders(cfg, ('train', 'val', 'test')))
    check_palettes(cfg, ('train', ))

    if show and not has_display():
        print_log('no display (DISPLAY/WAYLAND_DISPLAY is not set): saving the images only (--not-show)',
                  logger='current')
        show = False
    written = browse_dataset(cfg, output_dir=args.output_dir, show=show, show_interval=args.show_interval,
                             max_samples=args.max_samples, check_data=not args.skip_data_check)
    if args.output_dir is not None:
        print(f'\n{len(written)} sample(s) drawn into {args.output_dir}')


if __name__ == '__main__':
    run_tool_main(main)
