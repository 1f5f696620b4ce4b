"""Convert a YOLO data set (txt labels: ``class cx cy w h``, normalised) to COCO JSON files brs-detr's configs read.

Usage::

    python tools/dataset_converters/yolo2coco.py DATA_ROOT [-o OUT_DIR] [--classes data.yaml|classes.txt]
                                                 [--splits train val]

DATA_ROOT holds ``images/`` and ``labels/`` (Ultralytics' layout: ``images/train/x.jpg`` <-> ``labels/train/x.txt``)
and the class list (``data.yaml`` with ``names``, or ``classes.txt`` / ``obj.names``); the splits come from the
``train:``/``val:``/``test:`` folders of ``data.yaml``, else from ``images/<split>/``. One ``<split>.json`` per split
is written atomically into OUT_DIR after the checks of ``tools/train.py`` (missing images, boxes outside the image,
unknown class indices, unreadable sizes), with a summary line (images, objects per class). The logic is
:func:`brs_detr.datasets.converters.convert_yolo`; docs/custom_dataset.md has the details.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Convert YOLO txt labels to COCO JSON')
    parser.add_argument('data_root', help='the data set folder (images/, labels/, data.yaml or classes.txt)')
    parser.add_argument('-o', '--out-dir', help='folder of the COCO files (default: DATA_ROOT/annotations)')
    parser.add_argument('--classes', metavar='FILE',
                        help='class list: a data.yaml (names) or a text file with one name per line (default: '
                        'data.yaml, dataset.yaml, classes.txt or obj.names in DATA_ROOT)')
    parser.add_argument('--splits', nargs='+', help='splits to convert (default: all)')
    from brs_detr.apis.cli import add_debug_argument
    add_debug_argument(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from brs_detr.datasets.converters import convert_yolo, run_conversion
    from brs_detr.fileio.output_paths import check_output_dir
    out_dir = args.out_dir or osp.join(args.data_root, 'annotations')
    check_output_dir(out_dir, '--out-dir')  # before the work
    return run_conversion('yolo2coco.py', lambda: convert_yolo(args.data_root, out_dir, args.classes,
                                                               splits=args.splits))


if __name__ == '__main__':
    from brs_detr.apis.cli import run_tool_main
    run_tool_main(main)  # Ctrl-C, a full or read-only disk, --debug: as every tool
