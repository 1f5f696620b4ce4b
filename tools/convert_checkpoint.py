#!/usr/bin/env python
"""Convert a published (mmdet 2.x) checkpoint for this project: Co-DETR / BRS-DETR and the rank-based CNN baselines.

    python tools/convert_checkpoint.py SRC.pth DST.pth [--config CONFIG]

SRC is read without running code from it: tensors load as they are, any other pickled object (mmcv 1.x
config objects, numpy values in the ``meta``) becomes an inert placeholder. With ``--config`` the keys are
converted for that config's detector and the result is loaded strictly into the model built from it (a
mismatch is explained and nothing is written). Without it the layout is guessed (Co-DETR when there are
``query_head.*`` keys, else a CNN baseline) and not checked.

DST is written atomically as ``{'state_dict': ..., 'meta': {...plain values...}}``: it loads with
``weights_only=True`` and works as ``tools/test.py CONFIG DST`` or ``load_from``. Its sha256 is printed.
``tools/download_checkpoint.py NAME`` does all of this for model-zoo entries.

Exit status: 0 on success; 1 when SRC cannot be read or converted (or does not fit the config); 2 on bad arguments
(a bad config, DST that cannot be written or that is SRC itself); 130 when interrupted.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout without install

from brs_detr.apis.cli import (ToolInputError, add_debug_argument, is_environment_error, run_tool_main,  # noqa: E402
                               tool_name)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('src', help='original checkpoint (mmdet 2.x keys)')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument('--config', help='convert for this config and check a strict load into its model')
    parser.add_argument('--trust', action='store_true',
                        help='accepted for compatibility; not needed: SRC is never unpickled with code execution')
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """DST must not be SRC and must be writable; the config must read (before the checkpoint is read)."""
    from brs_detr.apis.config_loading import read_config
    from brs_detr.fileio.output_paths import check_output_file

    if osp.exists(args.src) and osp.exists(args.dst) and osp.samefile(args.src, args.dst):
        raise ToolInputError(f'DST {args.dst} is SRC: converting in place would replace the published checkpoint; '
                             'write the result to another file')
    check_output_file(args.dst, 'DST')
    if args.config is not None:
        read_config(args.config)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_arguments(args)
    from brs_detr.zoo import CheckpointReadError, ConversionError, convert_checkpoint_file
    try:
        info = convert_checkpoint_file(args.src, args.dst, config=args.config, log=print)
    except (CheckpointReadError, ConversionError, OSError) as error:
        if is_environment_error(error):
            raise  # a full or read-only disk: run_tool_main names the path (exit status 2)
        print(f'{tool_name()}: error: {error}', file=sys.stderr)
        return 1
    print(f'saved {args.dst}')
    print(f'sha256 {info["sha256"]}')
    return 0


if __name__ == '__main__':
    run_tool_main(main)
