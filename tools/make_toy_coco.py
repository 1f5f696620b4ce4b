"""Generate a small, deterministic COCO-format detection dataset of coloured shapes (exact boxes and masks).

Writes ``OUT_DIR/annotations/instances_{train,val}.json`` and ``OUT_DIR/{train,val}/000001.png ...`` (OUT_DIR is
either absent or complete; same arguments give byte-identical files); ``--annotation-format voc`` or ``yolo`` writes
the same data in those layouts instead, for ``tools/dataset_converters/``. What the images hold and how: see
:mod:`brs_detr.datasets.toy_coco`, which does the work; this file parses the arguments.

Example::

    python tools/make_toy_coco.py data/toy_coco --num-train 200 --num-val 50
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from brs_detr.apis.cli import add_debug_argument, run_tool_main
from brs_detr.datasets.toy_coco import (ANNOTATION_FORMATS, DEFAULT_CLASSES, IMAGE_EXTENSIONS, SHAPE_KINDS,
                                       make_toy_coco)
from brs_detr.fileio.output_paths import check_output_dir


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Generate a small deterministic COCO-format toy detection dataset')
    parser.add_argument('out_dir', help='output directory, e.g. data/toy_coco')
    parser.add_argument('--num-train', type=int, default=64, help='number of training images (default 64)')
    parser.add_argument('--num-val', type=int, default=16, help='number of validation images (default 16)')
    parser.add_argument('--img-size', type=int, nargs=2, default=(128, 128), metavar=('H', 'W'),
                        help='image height and width (default 128 128)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--classes', nargs='+', default=list(DEFAULT_CLASSES),
                        help=f'class names (default: {" ".join(DEFAULT_CLASSES)}); class i is drawn as '
                        f'{"/".join(SHAPE_KINDS)}[i %% {len(SHAPE_KINDS)}] in its own colour')
    parser.add_argument('--format', dest='image_format', choices=sorted(IMAGE_EXTENSIONS), default='png',
                        help='image file format (default png, lossless)')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT_DIR if it exists')
    parser.add_argument('--annotation-format', choices=ANNOTATION_FORMATS, default='coco',
                        help='annotation layout: coco (default), or voc / yolo (the layouts that '
                        'tools/dataset_converters/voc2coco.py and yolo2coco.py read)')
    add_debug_argument(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        check_output_dir(os.path.dirname(os.path.abspath(args.out_dir)), f'OUT_DIR {args.out_dir}: its folder')
        out_dir = make_toy_coco(args.out_dir, args.num_train, args.num_val, tuple(args.img_size), args.seed,
                                args.classes, args.image_format, args.overwrite, args.annotation_format)
    except (ValueError, FileExistsError, OSError) as e:  # OutputPathError is a ValueError
        print(f'make_toy_coco.py: error: {e}', file=sys.stderr)
        return 2
    print(f'wrote toy {args.annotation_format.upper()} dataset to {out_dir}: {args.num_train} train / '
          f'{args.num_val} val images, classes {list(args.classes)}')
    return 0


if __name__ == '__main__':
    run_tool_main(main)
