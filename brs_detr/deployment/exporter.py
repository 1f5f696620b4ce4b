"""ONNX export with the TorchScript exporter, checked by ``onnx.checker``.

Why the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) and not torch 2.13's default dynamo
exporter: tracing runs mmdet's eager Python code once, so the graph is exactly what ``predict`` computes; autograd
Functions carry their ONNX symbolic (the NMS of :mod:`~brs_detr.deployment.nms`); dynamic image sizes come from
traced tensor shapes. The dynamo exporter needs ``torch.export`` to capture mmdet's code, which reads sizes from
tensors (``spatial_shapes``) and branches on data, and it needs onnxscript (another dependency). torch warns that
the TorchScript exporter is deprecated (a DeprecationWarning attributed to :func:`export_onnx`, its caller); that
warning is one of the known warnings the tools and the tests ignore (brs_detr/known_warnings.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import re
import tempfile
import warnings
from typing import Any, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import torch
from torch import Tensor, nn

from .defaults import DEFAULT_OPSET, MIN_OPSET
from .dependencies import import_optional
from .errors import UnsupportedExportError
from .msda import tensor_msda
from .nms import UnsupportedNMSError, exportable_nms
from .roi_align import UnsupportedRoIAlignError, exportable_roi_align
from .roi_extractor import exportable_roi_extractor
from .symbolics import fixed_symbolics

INPUT_NAMES = ('image', 'scale_factor')
OUTPUT_NAMES = ('boxes', 'scores', 'labels')
#: The extra output of instance segmentation models: (N, H0, W0) bool masks in the original image.
MASK_OUTPUT_NAMES = OUTPUT_NAMES + ('masks', )
#: Key of the model metadata holding the class names of the labels (a JSON list).
CLASSES_METADATA_KEY = 'classes'
#: Names of the dynamic axes.
HEIGHT, WIDTH, NUM_DETECTIONS = 'height', 'width', 'num_detections'
ORIGINAL_HEIGHT, ORIGINAL_WIDTH = 'original_height', 'original_width'
#: ONNX domains of the standard operators.
STANDARD_DOMAINS = ('', 'ai.onnx')
#: The operator named by torch's "not supported" export errors.
UNSUPPORTED_OPERATOR = re.compile(r"operator '([^']+)'|(prim::PythonOp|aten::\w+|mmcv::\w+)")


@contextlib.contextmanager
def export_context() -> Iterator[None]:
    """What an export needs swapped in while tracing.

    * mmcv's deformable attention computes in tensors (:func:`~brs_detr.deployment.msda.tensor_msda`);
    * mmcv's NMS gets an ONNX symbolic (:func:`~brs_detr.deployment.nms.exportable_nms`), and so does its RoIAlign,
      one that agrees with its kernel at opset >= 16 (:func:`~brs_detr.deployment.roi_align.exportable_roi_align`);
    * mmdet's ``SingleRoIExtractor`` pools every FPN level, with or without RoIs
      (:func:`~brs_detr.deployment.roi_extractor.exportable_roi_extractor`);
    * ``torch.onnx.is_in_onnx_export()`` reads False for mmdet's code: mmdet 3.3's ONNX branches are leftovers of
      mmdet 2 (they import ``mmdet.core``, which no longer exists, and pad NMS inputs with dummy boxes for TensorRT);
      the eager branches are the code ``predict`` runs, and they trace.
    """
    with tensor_msda(), exportable_nms(), exportable_roi_align(), exportable_roi_extractor(), \
            mock.patch.object(torch.onnx, 'is_in_onnx_export', lambda: False):
        yield


def export_onnx(wrapper: nn.Module, example: Tuple[Tensor, Tensor], path: str, opset: int = DEFAULT_OPSET,
                dynamic_shape: bool = False, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Export ``wrapper`` (``(image, scale_factor) -> (boxes, scores, labels[, masks])``) to ``path`` and check it.

    The outputs are named by ``wrapper.output_names`` (default :data:`OUTPUT_NAMES`; :data:`MASK_OUTPUT_NAMES` for
    instance segmentation).

    The file is written atomically (a temporary file in the same folder, checked, then renamed).

    Args:
        wrapper (nn.Module): From :func:`~brs_detr.deployment.build_export_wrapper`, on the CPU.
        example (tuple[Tensor, Tensor]): An image (1, 3, H, W) and its scale factor (2,).
        path (str): The ``.onnx`` file to write.
        opset (int): ONNX opset (>= 16).
        dynamic_shape (bool): Export H and W as dynamic axes (else the graph takes only H x W inputs).
        class_names (Sequence[str], optional): The names of the labels the graph outputs (the checkpoint's), stored
            as the model's metadata :data:`CLASSES_METADATA_KEY` (a JSON list), where ``demo/image_demo.py --onnx``
            reads them.

    Returns:
        list[str]: The tracer's warnings about Python values frozen into the graph (``file:line: message``): data
        dependent branches the graph will not re-evaluate.

    Raises:
        UnsupportedExportError: An operator without ONNX exporter (named), or a bad opset.
        MissingDependencyError: onnx is not installed.
    """
    onnx = import_optional('onnx')
    if opset < MIN_OPSET:
        raise UnsupportedExportError(f'--opset {opset}: deformable attention and the exported graphs need ONNX '
                                     f'GridSample, opset >= {MIN_OPSET}')
    output_names = tuple(getattr(wrapper, 'output_names', OUTPUT_NAMES))
    dynamic_axes = {name: {0: NUM_DETECTIONS} for name in output_names}
    if output_names == MASK_OUTPUT_NAMES:
        dynamic_axes[MASK_OUTPUT_NAMES[-1]].update({1: ORIGINAL_HEIGHT, 2: ORIGINAL_WIDTH})
    if dynamic_shape:
        dynamic_axes[INPUT_NAMES[0]] = {2: HEIGHT, 3: WIDTH}
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    os.close(handle)
    try:
        with export_context(), fixed_symbolics(opset), collect_tracer_warnings() as caught, torch.no_grad():
            try:
                torch.onnx.export(wrapper, example, temporary, dynamo=False, opset_version=opset,
                                  input_names=list(INPUT_NAMES), output_names=list(output_names),
                                  dynamic_axes=dynamic_axes)
            except (UnsupportedNMSError, UnsupportedRoIAlignError) as error:
                raise UnsupportedExportError(str(error)) from error
            except (torch.onnx.errors.OnnxExporterError, RuntimeError) as error:
                raise UnsupportedExportError(_export_failure(error)) from error
        exported = onnx.load(temporary)
        check_standard_operators(exported)
        if class_names is not None:
            onnx.helper.set_model_props(exported, {CLASSES_METADATA_KEY: json.dumps(list(class_names))})
            onnx.save(exported, temporary)
        onnx.checker.check_model(temporary, full_check=True)
        os.replace(temporary, path)
    finally:
        if osp.exists(temporary):
            os.unlink(temporary)
    return frozen_values(caught)


@contextlib.contextmanager
def collect_tracer_warnings() -> Iterator[List[warnings.WarningMessage]]:
    """Collect the tracer's warnings (``torch.jit.TracerWarning``: a Python value or branch taken from a tensor, also
    from brs_detr's own code) in the yielded list instead of showing them; every other warning goes through the
    warning filters as usual (the known third-party ones are ignored, brs_detr/known_warnings.py)."""
    caught: List[warnings.WarningMessage] = []
    with warnings.catch_warnings():
        warnings.filterwarnings('always', category=torch.jit.TracerWarning)  # every frozen value, even repeated
        show = warnings.showwarning

        def collect(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, torch.jit.TracerWarning):
                caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = collect
        yield caught


def check_standard_operators(model: Any) -> None:
    """Raise :class:`UnsupportedExportError` naming the nodes (module path and operator) outside the standard ONNX
    domain: mmcv's compiled ops (deformable convolution, ...) export to their own ``mmcv`` domain, which
    onnxruntime cannot run without MMDeploy's custom-op library."""
    custom = [f'{node.name or node.op_type} ({node.domain}::{node.op_type})' for node in model.graph.node
              if node.domain not in STANDARD_DOMAINS]
    if custom:
        raise UnsupportedExportError(f'the graph needs operators outside the ONNX standard, which onnxruntime cannot '
                                     f'run: {", ".join(custom[:5])}' + (f' and {len(custom) - 5} more'
                                                                        if len(custom) > 5 else ''))


def _export_failure(error: BaseException) -> str:
    """One line naming the operator torch could not export."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    match = UNSUPPORTED_OPERATOR.search(text)
    operator = next((group for group in match.groups() if group), None) if match else None
    return (f'ONNX export failed' + (f' at operator {operator}' if operator else '') +
            f' (no ONNX exporter for it at this opset?): {first}')


def frozen_values(caught: Sequence[warnings.WarningMessage]) -> List[str]:
    """The tracer warnings among ``caught`` (a Python value or branch taken from a tensor), deduplicated."""
    found = []
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            line = f'{warning.filename}:{warning.lineno}: {str(warning.message).splitlines()[0]}'
            if line not in found:
                found.append(line)
    return found
