"""The inference demo on an exported model: ``demo/image_demo.py ... --onnx model.onnx``."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

from mmengine.config import ConfigDict
from torch import nn

from mmdet.structures import DetDataSample

from brs_detr.apis.det_inferencer import PALETTE_FROM_MODEL, BRSDetInferencer
from .inputs import ResizedImage
from .ort_runner import ONNXRuntimeDetector


class ONNXDetInferencer(BRSDetInferencer):
    """:class:`~brs_detr.apis.BRSDetInferencer` whose detections come from an exported model in onnxruntime.

    What changed: :meth:`forward` runs the ONNX graph on each image the config's test pipeline prepared (the same
    pipeline, inputs and outputs as the PyTorch demo, so the drawing and the saved predictions are made the same
    way); the PyTorch model is built only for its class names and never runs, so no weights are loaded. The class
    names are the ones the export stored in the ONNX file (the checkpoint's, as the PyTorch demo uses them), else the
    config's.

    Args:
        model (str): The config file the model was exported from.
        onnx_file (str): The exported model (``tools/deployment/pytorch2onnx.py``).
        device (str, optional): ``cpu`` or ``cuda`` for onnxruntime (None: cpu).
        palette: As for :class:`BRSDetInferencer`.
        show_progress (bool): Show a progress bar.
        cfg_options (dict, optional): Config keys to override.
    """

    def __init__(self,
                 model: Union[str, ConfigDict],
                 onnx_file: str,
                 device: Optional[str] = None,
                 palette: Union[str, Sequence[tuple]] = PALETTE_FROM_MODEL,
                 show_progress: bool = True,
                 cfg_options: Optional[dict] = None) -> None:
        super().__init__(model=model, weights=None, device='cpu', palette=palette, show_progress=show_progress,
                         cfg_options=cfg_options)
        self.runner = ONNXRuntimeDetector(onnx_file, self.cfg, device=device or 'cpu')
        if self.runner.class_names is not None:  # the checkpoint's names, stored by the export
            self.model.dataset_meta = self._dataset_meta(
                self.model, dict(meta=dict(dataset_meta=dict(classes=self.runner.class_names))), self.cfg)
            self.visualizer.dataset_meta = self.model.dataset_meta

    def _load_weights_to_model(self, model: nn.Module, checkpoint: Optional[dict], cfg: Optional[ConfigDict]) -> None:
        """Only the class names and palette: the weights are in the ONNX file."""
        model.dataset_meta = self._dataset_meta(model, None, cfg)

    def forward(self, inputs: dict, **kwargs) -> List[DetDataSample]:
        """Detections of a collated batch (``inputs``: resized uint8 images and their data samples) by onnxruntime,
        one image at a time."""
        predictions = []
        for pixels, sample in zip(inputs['inputs'], inputs['data_samples']):
            image = ResizedImage(name=sample.metainfo.get('img_path') or 'array', pixels=pixels,
                                 scale_factor=tuple(float(s) for s in sample.scale_factor),
                                 ori_shape=tuple(sample.ori_shape))
            sample.pred_instances = self.runner.predict(image)
            predictions.append(sample)
        return predictions
