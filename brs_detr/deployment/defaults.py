"""The defaults of the export and of its check that ``tools/deployment/pytorch2onnx.py`` shows in its ``--help``.

Light (no torch, mmdet or onnx): the tool builds its parser from them before the heavy imports
(docs/architecture.md). :mod:`~brs_detr.deployment.exporter` and :mod:`~brs_detr.deployment.parity` use them.
"""

#: Default ONNX opset: GridSample (deformable attention) needs 16; 17 is what onnxruntime, TensorRT >= 8.6 and
#: OpenVINO all read.
DEFAULT_OPSET = 17
MIN_OPSET = 16
#: Defaults of the check: the first TOP_K detections must agree in order and label, boxes within BOX_RTOL
#: relative (of the coordinate, at least 1 pixel), scores within SCORE_ATOL and, for instance segmentation, each
#: binary mask must overlap PyTorch's with an IoU of at least MASK_MIN_IOU.
TOP_K = 10
BOX_RTOL = 1e-3
SCORE_ATOL = 1e-3
MASK_MIN_IOU = 0.99
