"""Exportable inference of single-stage detectors with a dense head (ATSS, PAA, RetinaNet, ... and the
rank-based heads of brs-detr)."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn

from mmdet.models.detectors import SingleStageDetector

from .preprocessing import InGraphPreprocessor


class DenseDetectorExportWrapper(nn.Module):
    """``(image, scale_factor) -> (boxes, scores, labels)`` of a :class:`SingleStageDetector`, computed by the
    detector's own head code.

    The graph: normalization and padding (:class:`InGraphPreprocessor`), backbone, neck, head, then the head's own
    ``predict_by_feat`` (score threshold, ``nms_pre`` top-k per level, box decoding clamped to the traced image
    size, score factors, class-aware NMS, ``max_per_img``) traced as PyTorch runs it: the export swaps in an NMS with
    an ONNX exporter (:mod:`brs_detr.deployment.nms`) and the eager code paths of mmdet
    (:func:`brs_detr.deployment.exporter.export_context`).

    What differs from ``predict``: the boxes are divided by the resize factor after NMS (``predict`` divides before
    it). The traced code cannot take the factor from the image metas (mmdet turns it into a constant tensor), so it
    runs with ``rescale=False`` and the factor is an input of the graph. IoU, and so NMS, is invariant to scaling
    both axes by the same factor; a keep-ratio resize scales them by factors equal to within one pixel of rounding,
    which can flip an NMS decision only for a pair of boxes whose IoU is within about 1e-3 of the threshold.

    Args:
        detector (SingleStageDetector): The detector, in eval mode.
    """

    def __init__(self, detector: SingleStageDetector) -> None:
        super().__init__()
        self.detector = detector
        self.preprocessor = InGraphPreprocessor(detector.data_preprocessor)

    def forward(self, image: Tensor, scale_factor: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Detect objects in one image.

        Args:
            image (Tensor): (1, 3, H, W) float BGR pixel values of the image resized by the test pipeline.
            scale_factor (Tensor): (2,) float ``(w_scale, h_scale)``: resized size / original size.

        Returns:
            tuple[Tensor, Tensor, Tensor]: boxes (N, 4) x1 y1 x2 y2 in original image pixels, scores (N,),
            labels (N,) int64.
        """
        inputs, _ = self.preprocessor(image)
        head = self.detector.bbox_head
        img_meta = dict(img_shape=tuple(image.shape[-2:]), pad_shape=tuple(inputs.shape[-2:]),
                        batch_input_shape=tuple(inputs.shape[-2:]))
        results = head.predict_by_feat(*head(self.detector.extract_feat(inputs)), batch_img_metas=[img_meta],
                                       rescale=False)[0]
        boxes = results.bboxes / scale_factor.to(results.bboxes.dtype).repeat(2)
        return boxes, results.scores, results.labels
