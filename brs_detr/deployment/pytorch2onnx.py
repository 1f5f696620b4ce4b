"""What ``tools/deployment/pytorch2onnx.py`` does: build, export, check with onnx.checker and onnxruntime."""
from __future__ import annotations

import argparse
import os.path as osp
from typing import List, Optional, Tuple

from brs_detr.apis.image_inputs import collect_images
from brs_detr.apis.cli import ToolInputError, check_checkpoint_file, check_config_file
from brs_detr.apis.launch import load_config
from brs_detr.datasets.num_classes import dataset_classes
from .builder import build_export_wrapper
from .dependencies import import_optional
from .detector import load_detector, load_weights
from .defaults import MASK_MIN_IOU, MIN_OPSET
from .exporter import export_onnx
from .inputs import ResizedImage, build_test_pipeline, default_shape, load_resized, synthetic_images
from .ort_runner import ONNXRuntimeDetector
from .parity import check_parity, parity_table

#: Relative sizes of the synthetic check images of a dynamic-shape export (besides the export shape itself).
DYNAMIC_CHECK_SCALES = ((0.75, 1.0), (1.0, 0.6))


def check_images(args: argparse.Namespace, pipeline, shape: Optional[Tuple[int, int]]) -> List[ResizedImage]:
    """The images of the parity check: ``--images`` resized by the test pipeline, or synthetic ones (the export
    shape, and for ``--dynamic-shape`` also other sizes)."""
    if args.images:
        return [load_resized(pipeline, path, osp.basename(path)) for path in collect_images(args.images)]
    shapes = [shape]
    if args.dynamic_shape:
        shapes += [(round(shape[0] * sy), round(shape[1] * sx)) for sy, sx in DYNAMIC_CHECK_SCALES]
    return synthetic_images((shapes * args.num_images)[:max(args.num_images, len(shapes))])


def run(args: argparse.Namespace) -> int:
    """Export and check as the tool does (see ``tools/deployment/pytorch2onnx.py --help``).

    Returns:
        int: The exit status: 0 when every check image agrees, 1 otherwise.
    """
    check_config_file(args.config)
    check_checkpoint_file(args.checkpoint)
    if not args.out.endswith('.onnx'):
        raise ToolInputError(f'--out must name a .onnx file, got {args.out}')
    if args.opset < MIN_OPSET:
        raise ToolInputError(f'--opset {args.opset}: the exported graphs need ONNX GridSample, opset >= {MIN_OPSET}')
    if args.shape is not None and min(args.shape) < 1:
        raise ToolInputError(f'--shape must be two positive sizes H W, got {args.shape}')
    for module in ('onnx', 'onnxruntime'):
        import_optional(module)  # before the model is built
    cfg = load_config(args.config, args.cfg_options, 'none')
    pipeline = build_test_pipeline(cfg)
    shape = tuple(args.shape) if args.shape else None
    if args.images:
        images = check_images(args, pipeline, shape)
        shape = shape or images[0].shape
    else:
        shape = shape or default_shape(pipeline)
        images = check_images(args, pipeline, shape)
    if not args.dynamic_shape:
        wrong = [image for image in images if image.shape != shape]
        if wrong:
            raise ToolInputError(f'{wrong[0].name} resizes to {wrong[0].shape[0]}x{wrong[0].shape[1]} with the test '
                                 f'pipeline, not the export shape {shape[0]}x{shape[1]}: use --dynamic-shape, or '
                                 f'--shape/--images that agree')
    model = load_detector(cfg, None)
    wrapper = build_export_wrapper(model)  # an unsupported model fails before its weights are read
    class_names = load_weights(model, args.checkpoint, cfg)
    if class_names is None:
        found = dataset_classes(cfg)
        class_names = found.classes if found is not None else None
    example = next((image for image in images if image.shape == shape), images[0])
    frozen = export_onnx(wrapper, example.graph_inputs(), args.out, opset=args.opset, dynamic_shape=args.dynamic_shape,
                         class_names=class_names)
    size = 'HxW (dynamic)' if args.dynamic_shape else f'{shape[0]}x{shape[1]}'
    print(f'exported {args.out} (opset {args.opset}, input 1x3x{size}, TorchScript exporter)')
    print('onnx.checker: OK')
    print(f'tracer: {len(frozen)} Python values fixed at export time (shape checks and branches'
          + (': listed below)' if args.verbose else '; --verbose lists them); the comparison below checks the graph'))
    if args.verbose:
        print('\n'.join(f'  {line}' for line in frozen))
    runner = ONNXRuntimeDetector(args.out, cfg)
    rows = check_parity(model, runner, images, top_k=args.top_k)
    print(parity_table(rows))
    failed = [row.name for row in rows if not row.ok]
    if failed:
        print(f'onnxruntime differs from PyTorch on {len(failed)} of {len(rows)} image(s): {", ".join(failed)}')
        return 1
    print(f'onnxruntime matches PyTorch on {len(rows)} image(s) (top {args.top_k}: same labels and order, boxes '
          f'within 1e-3 relative' + (f', mask IoU >= {MASK_MIN_IOU}' if runner.with_masks else '') + ')')
    return 0
