"""Detect objects in images and draw them (mmdet 3.x's ``demo/image_demo.py`` interface, on CPU or GPU).

Usage::

    python demo/image_demo.py IMAGES [IMAGES ...] CONFIG [--weights CHECKPOINT | --onnx MODEL.onnx]
                              [--out-dir outputs] [--pred-score-thr T] [--device auto] [--batch-size 1]
                              [--palette none] [--no-save-vis] [--no-save-pred] [--print-result] [--show]
                              [--cfg-options K=V ...] [--debug]

IMAGES are image files, folders (their images) or quoted glob patterns (``'data/**/*.jpg'``). For every image it
writes ``OUT_DIR/vis/<stem>.png`` (the detections with a score above the threshold: boxes, masks for instance
segmentation models, class names and scores) and ``OUT_DIR/preds/<stem>.json`` (all detections the model returns:
``labels``, ``scores``, ``bboxes`` as x1 y1 x2 y2 in input pixels, ``masks`` as COCO RLE). The score threshold is
``--pred-score-thr`` if given, else the per-class thresholds chosen for the checkpoint
(``CHECKPOINT.score_thr.json`` of ``tools/analysis_tools/choose_score_threshold.py``), else 0.3; the demo prints
which one it draws with. See docs/demo.md. ``--onnx`` runs a model exported by ``tools/deployment/pytorch2onnx.py``
with onnxruntime instead of PyTorch (same pipeline, drawing and outputs; docs/deployment.md).
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Optional, Sequence

from brs_detr.apis.cli import (add_cfg_options_argument, add_debug_argument, check_checkpoint_file, has_display,
                               run_tool_main)

PALETTES = ('coco', 'voc', 'citys', 'random', 'none')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Detect objects in images and draw them (brs-detr, mmdet 3.x DetInferencer)')
    parser.add_argument('inputs', nargs='+', metavar='IMAGES',
                        help='image files, folders or quoted glob patterns ("dir/*.jpg", "dir/**/*.png")')
    parser.add_argument('config', help='model config file')
    parser.add_argument('--weights', help='checkpoint file (without it the model keeps its random initialization)')
    parser.add_argument('--onnx', help='run this exported model (tools/deployment/pytorch2onnx.py) with onnxruntime '
                        'instead of the PyTorch model; CONFIG is the config it was exported from')
    parser.add_argument('--out-dir', default='outputs', help='output folder: vis/<stem>.png and preds/<stem>.json')
    parser.add_argument('--pred-score-thr', '--score-thr', dest='pred_score_thr', type=float,
                        help='draw the detections whose score is above this (default: the per-class thresholds '
                        'chosen for the checkpoint, WEIGHTS.score_thr.json, if tools/analysis_tools/'
                        'choose_score_threshold.py wrote them, else 0.3); the saved predictions keep all of them')
    parser.add_argument('--device', default='auto', help='cpu, cuda, cuda:N, ... (default: cuda if available, '
                        'else cpu)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument('--show', action='store_true', help='also show each drawn image in a window (needs a '
                        'display)')
    parser.add_argument('--no-save-vis', action='store_true', help='do not save the drawn images')
    parser.add_argument('--no-save-pred', action='store_true', help='do not save the predictions')
    parser.add_argument('--print-result', action='store_true', help='print the predictions')
    parser.add_argument('--palette', default='none', choices=PALETTES,
                        help="box/mask colours: 'none' = the config's (else the checkpoint's) palette")
    add_cfg_options_argument(parser, 'override config keys, e.g. model.test_cfg.max_per_img=10 (the key must exist in '
                             'the config and the value keep its type; write +key=value to add a new one)')
    add_debug_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pred_score_thr is not None and not 0 <= args.pred_score_thr <= 1:
        parser.error(f'--pred-score-thr must be between 0 and 1, got {args.pred_score_thr}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    if args.weights is not None and args.onnx is not None:
        parser.error('--weights and --onnx exclude each other: an exported model carries its weights')
    if args.weights is not None:
        check_checkpoint_file(args.weights, 'weights')
    if args.onnx is not None and not osp.isfile(args.onnx):
        parser.error(f'--onnx file not found: {args.onnx}')
    if args.show and not has_display():
        parser.error('--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set); the drawn images are saved '
                     f'under {osp.join(args.out_dir, "vis")} without it')
    save_vis, save_pred = not args.no_save_vis, not args.no_save_pred
    from brs_detr.apis.config_loading import read_config
    from brs_detr.fileio.output_paths import check_not_an_input_folder, check_output_dir

    cfg = read_config(args.config, args.cfg_options)  # before the heavy imports: a bad config fails at once
    if save_vis or save_pred:
        check_output_dir(args.out_dir, '--out-dir')
    if (save_vis or args.show) and args.palette == 'none':  # the config's palette draws the classes
        from brs_detr.datasets.num_classes import check_palettes
        check_palettes(cfg, ('test', ))

    from brs_detr.apis.det_inferencer import BRSDetInferencer
    from brs_detr.apis.image_inputs import collect_images

    images = collect_images(args.inputs)  # before the model is built: a typo fails in seconds
    if save_vis:  # the drawings (OUT_DIR/vis/<name>.<ext>) must not replace the input images
        for folder in sorted({osp.dirname(image) or '.' for image in images}):
            check_not_an_input_folder(osp.join(args.out_dir, 'vis'), '--out-dir (its vis folder)',
                                      {'the input images': folder}, inside=False)
    if args.onnx is not None:
        from brs_detr.deployment.onnx_inferencer import ONNXDetInferencer
        device = None if args.device == 'auto' else args.device
        inferencer = ONNXDetInferencer(model=cfg, onnx_file=args.onnx, device=device, palette=args.palette)
    else:
        inferencer = BRSDetInferencer(model=cfg, weights=args.weights, device=args.device, palette=args.palette)
    score_thr = inferencer.score_threshold(args.pred_score_thr)
    if save_vis or args.show:
        print(f'drawing with {score_thr.describe(inferencer.model.dataset_meta["classes"])}')
    inferencer(images, batch_size=args.batch_size, show=args.show, pred_score_thr=score_thr,
               no_save_vis=not save_vis, no_save_pred=not save_pred, print_result=args.print_result,
               out_dir=args.out_dir if save_vis or save_pred else '')
    saved = [f'drawn images in {osp.join(args.out_dir, "vis")}'] * save_vis + \
        [f'predictions in {osp.join(args.out_dir, "preds")}'] * save_pred
    print(f'{len(images)} image(s)' + (': ' + ', '.join(saved) if saved else ''))


if __name__ == '__main__':
    run_tool_main(main)
