"""Plot training curves and summarise iteration times from the scalar logs that mmengine writes.

Every run of ``tools/train.py`` writes ``<work_dir>/<timestamp>/vis_data/scalars.json``: one JSON object per line,
either a training record (``loss``, ``lr``, ``time``, ... with ``epoch``, ``iter`` and ``step``) or a validation
record (``coco/bbox_mAP``, ... with ``step`` = the epoch, or the iteration in iteration-based loops). This tool reads
those files (the ``<timestamp>.json`` file next to them has the same format).

Commands (as in mmdetection's ``tools/analysis_tools/analyze_logs.py``)::

    # validation mAP of several runs against the epoch, saved as a PNG
    python tools/analysis_tools/analyze_logs.py plot_curve run_a/vis_data/scalars.json run_b/vis_data/scalars.json \\
        --keys coco/bbox_mAP --legend BRS-DETR Co-DETR --out map.png
    # training losses against the iteration
    python tools/analysis_tools/analyze_logs.py plot_curve run_a/vis_data/scalars.json --keys loss loss_cls
    # seconds per iteration: mean, and the slowest/fastest epoch
    python tools/analysis_tools/analyze_logs.py cal_train_time run_a/vis_data/scalars.json

``plot_curve`` also prints every plotted series (x, y) as a table, so the numbers behind a figure are on record.
Without ``--out`` it opens a window (needs a display). Bad input (a missing file, a line that is not JSON, a key no
record has) fails with a message naming the file, the line or the key and the keys that are there.

The reading and plotting live in :mod:`brs_detr.analysis.logs`; this file parses the arguments.
"""
import argparse
import os.path as osp
import sys
from typing import Optional, Sequence

from brs_detr.analysis.logs import LogError, cal_train_time, plot_curve
from brs_detr.apis.cli import add_debug_argument, run_tool_main
from brs_detr.fileio.output_paths import check_output_file


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Plot curves and iteration times from mmengine scalar logs')
    commands = parser.add_subparsers(dest='command', required=True)
    plot = commands.add_parser('plot_curve', help='plot one or more keys of one or more logs')
    plot.add_argument('json_logs', nargs='+', help='scalars.json files (JSON lines)')
    plot.add_argument('--keys', nargs='+', default=['coco/bbox_mAP'], help='keys to plot (default: coco/bbox_mAP)')
    plot.add_argument('--legend', nargs='+', help='one name per (log, key) pair, in that order')
    plot.add_argument('--title', help='figure title')
    plot.add_argument('--out', help='save the figure here (format from the extension, e.g. .png, .pdf)')
    train_time = commands.add_parser('cal_train_time', help='mean seconds per iteration, slowest/fastest epoch')
    train_time.add_argument('json_logs', nargs='+', help='scalars.json files (JSON lines)')
    for command in (plot, train_time):
        add_debug_argument(command)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if getattr(args, 'out', None) is not None:
        check_output_file(args.out, '--out')  # before the logs are read and plotted
    try:
        if args.command == 'plot_curve':
            plot_curve(args.json_logs, args.keys, args.legend, args.title, args.out)
        else:
            cal_train_time(args.json_logs)
    except LogError as error:
        print(f'{osp.basename(sys.argv[0])}: error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    run_tool_main(main)
