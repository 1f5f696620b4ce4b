"""Run a model exported by ``tools/deployment/pytorch2onnx.py`` with onnxruntime."""
from __future__ import annotations

import json
import os.path as osp
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from brs_detr.apis.cli import ToolInputError
from .dependencies import import_optional
from .exporter import CLASSES_METADATA_KEY, INPUT_NAMES, MASK_OUTPUT_NAMES, OUTPUT_NAMES
from .inputs import ResizedImage, build_test_pipeline, load_resized

#: onnxruntime execution providers per torch device type.
PROVIDERS = {'cpu': ['CPUExecutionProvider'], 'cuda': ['CUDAExecutionProvider', 'CPUExecutionProvider']}


class ONNXRuntimeDetector:
    """An exported detector in an onnxruntime session, fed by the config's test pipeline.

    Args:
        onnx_file (str): The ``.onnx`` file (inputs ``image``, ``scale_factor``; outputs ``boxes``, ``scores``,
            ``labels``, and ``masks`` for instance segmentation models).
        cfg (Config): The config the model was exported from (its test pipeline resizes the images).
        device (str): ``'cpu'`` or ``'cuda'``/``'cuda:N'`` (needs onnxruntime-gpu).
        num_threads (int, optional): onnxruntime's intra-op threads (default: torch's thread count, so that
            PyTorch and ONNX timings use the same cores).

    Raises:
        ToolInputError: The file is missing, was not exported by pytorch2onnx, or CUDA is not available to
            onnxruntime.
        MissingDependencyError: onnxruntime is not installed.
    """

    def __init__(self, onnx_file: str, cfg: Config, device: str = 'cpu', num_threads: Optional[int] = None) -> None:
        ort = import_optional('onnxruntime')
        if not osp.isfile(onnx_file):
            raise ToolInputError(f'ONNX file not found: {onnx_file}')
        device_type = torch.device(device).type
        if device_type not in PROVIDERS:
            raise ToolInputError(f'--device {device}: onnxruntime runs on cpu or cuda')
        if PROVIDERS[device_type][0] not in ort.get_available_providers():
            raise ToolInputError(f'--device {device}: this onnxruntime has no {PROVIDERS[device_type][0]} '
                                 f'(available: {", ".join(ort.get_available_providers())}; CUDA needs onnxruntime-gpu)')
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(onnx_file, options, providers=PROVIDERS[device_type])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise ToolInputError(f'onnxruntime cannot load {onnx_file}: {error}') from error
        inputs = self.session.get_inputs()
        names = tuple(node.name for node in inputs)
        outputs = tuple(node.name for node in self.session.get_outputs())
        if names != INPUT_NAMES or outputs not in (OUTPUT_NAMES, MASK_OUTPUT_NAMES):
            raise ToolInputError(f'{onnx_file} has inputs {names} and outputs {outputs}: not a model exported by '
                                 f'tools/deployment/pytorch2onnx.py (inputs {INPUT_NAMES}, outputs {OUTPUT_NAMES} '
                                 f'or {MASK_OUTPUT_NAMES})')
        self.with_masks = outputs == MASK_OUTPUT_NAMES
        names = self.session.get_modelmeta().custom_metadata_map.get(CLASSES_METADATA_KEY)
        #: The class names of the labels, stored by the export (None: a file without them).
        self.class_names: Optional[List[str]] = json.loads(names) if names else None
        height, width = inputs[0].shape[2:]
        self.static_shape = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.onnx_file = onnx_file
        self.pipeline = build_test_pipeline(cfg)

    def run(self, image: ResizedImage) -> Tuple[np.ndarray, ...]:
        """boxes (N, 4) in original pixels, scores (N,), labels (N,) of one resized image, and for a mask model
        masks (N, H0, W0) bool in the original image.

        Raises:
            ToolInputError: The model has a static input size and the image resizes to another one.
        """
        if self.static_shape is not None and image.shape != self.static_shape:
            raise ToolInputError(f'{image.name}: resized to {image.shape[0]}x{image.shape[1]} by the test pipeline, '
                                 f'but {self.onnx_file} was exported for {self.static_shape[0]}x{self.static_shape[1]} '
                                 f'inputs only; export with --dynamic-shape')
        pixels, scale_factor = image.graph_inputs()
        return tuple(self.session.run(None, {INPUT_NAMES[0]: pixels.numpy(), INPUT_NAMES[1]: scale_factor.numpy()}))

    def predict(self, image: Union[str, np.ndarray, ResizedImage]) -> InstanceData:
        """Detections of an image file, a BGR array or a :class:`ResizedImage`, as ``predict`` returns them."""
        if not isinstance(image, ResizedImage):
            image = load_resized(self.pipeline, image)
        return to_instances(*self.run(image))


def to_instances(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 masks: Optional[np.ndarray] = None) -> InstanceData:
    """mmdet's prediction structure (``bboxes``, ``scores``, ``labels`` and, for mask models, ``masks`` (N, H0, W0)
    bool, as tensors) of the graph's outputs."""
    instances = InstanceData()
    instances.bboxes = torch.from_numpy(boxes)
    instances.scores = torch.from_numpy(scores)
    instances.labels = torch.from_numpy(labels)
    if masks is not None:
        instances.masks = torch.from_numpy(masks)
    return instances
