"""Convert Pascal VOC XML annotations to COCO JSON files that brs-detr's configs read.

Usage::

    python tools/dataset_converters/voc2coco.py INPUT [-o OUT_DIR] [--classes NAME [NAME ...] | --classes FILE]
                                                [--img-dir DIR] [--years 2007 2012] [--splits train val]
                                                [--difficult {ignore,keep,drop}]

INPUT is a VOC devkit (``VOCdevkit/`` with ``VOC2007/``, ``VOC2012/``: one ``voc07_<split>.json`` per year and
split of ``ImageSets/Main``), one year's folder (``<split>.json``) or a plain folder of XML files
(``<folder>.json``). Every file is checked as ``tools/train.py`` checks its data (missing images, boxes outside the
image, unknown classes, unreadable sizes) and written atomically; a summary line per file gives the images and the
objects per class. The logic is :func:`brs_detr.datasets.converters.convert_voc`; docs/custom_dataset.md explains
the layouts, the box convention and what happens to ``difficult`` objects.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import List, Optional, Sequence

DIFFICULT_CHOICES = ('ignore', 'keep', 'drop')  # brs_detr.datasets.converters.DIFFICULT_POLICIES (light import)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Convert Pascal VOC XML annotations to COCO JSON')
    parser.add_argument('input', help='a VOC devkit, one VOC<year> folder, or a folder of .xml files')
    parser.add_argument('-o', '--out-dir', help='folder of the COCO files (default: INPUT/annotations)')
    parser.add_argument('--classes', nargs='+', metavar='NAME',
                        help='class names in label order, or one file listing them (one per line); every object '
                        'must be one of them (default: every name found, alphabetically)')
    parser.add_argument('--img-dir', help='image folder of a plain folder of XML files (default: that folder); '
                        'each XML names its image in <filename>')
    parser.add_argument('--years', nargs='+', help='devkit years to convert (default: all)')
    parser.add_argument('--splits', nargs='+', help='ImageSets/Main splits to convert (default: every one present)')
    parser.add_argument('--difficult', choices=DIFFICULT_CHOICES, default='ignore',
                        help='difficult objects: ignore = iscrowd=1, neither trained on nor evaluated (default, as '
                        'mmdet); keep = normal objects; drop = left out')
    from brs_detr.apis.cli import add_debug_argument
    add_debug_argument(parser)
    return parser.parse_args(argv)


#: A single ``--classes`` value with one of these endings names a class-list file.
CLASS_LIST_ENDINGS = ('.txt', '.names', '.yaml', '.yml')


def class_names(values: Optional[List[str]]) -> Optional[List[str]]:
    """``--classes``: names, or the names listed in the one file given (an existing file, or a name ending in
    :data:`CLASS_LIST_ENDINGS`)."""
    if values is not None and len(values) == 1 and (osp.isfile(values[0]) or values[0].endswith(CLASS_LIST_ENDINGS)):
        from brs_detr.datasets.converters.coco_output import read_class_names
        return read_class_names(values[0])
    return values


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from brs_detr.datasets.converters import convert_voc, run_conversion
    from brs_detr.fileio.output_paths import check_output_dir
    out_dir = args.out_dir or osp.join(args.input, 'annotations')
    check_output_dir(out_dir, '--out-dir')  # before the work
    return run_conversion('voc2coco.py', lambda: convert_voc(
        args.input, out_dir, class_names(args.classes),
        img_dir=args.img_dir, years=args.years, splits=args.splits, difficult=args.difficult))


if __name__ == '__main__':
    from brs_detr.apis.cli import run_tool_main
    run_tool_main(main)  # Ctrl-C, a full or read-only disk, --debug: as every tool
