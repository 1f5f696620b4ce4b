"""Exportable inference of Deformable-DETR-family detectors (Co-Deformable-DETR, BRS-DETR): the query head only."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.models.detectors import DeformableDETR
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy

from .errors import UnsupportedExportError
from .preprocessing import InGraphPreprocessor


class DETRExportWrapper(nn.Module):
    """``(image, scale_factor) -> (boxes, scores, labels)`` of a :class:`DeformableDETR` (and subclasses such as
    :class:`~brs_detr.models.detectors.CoDETR`), as its ``predict`` computes them for one image.

    The graph: normalization and padding (:class:`InGraphPreprocessor`), backbone and neck, the deformable encoder,
    the two-stage query selection and the decoder of the detector (its own methods), the query head, then the query
    head's post-processing (mmdet's ``DETRHead._predict_by_feat_single``): top-k over queries x classes of the
    sigmoid scores (``test_cfg.max_per_img``), label = index mod classes, box = the query's (cx, cy, w, h) scaled to
    the image and clamped to it, divided by the resize factor. No NMS (set prediction). The auxiliary heads of
    Co-DETR do not run (``eval_module='detr'``, as at test time).

    What differs from mmdet's own code, and why: :meth:`pre_transformer` builds the padding mask from the traced
    image size. mmdet's ``DeformableDETR.pre_transformer`` takes the sizes from the data samples (Python integers,
    frozen into the graph) and, under ONNX export, drops the padding mask altogether, which changes every result
    of a padded image. With the mask built here the graph equals ``predict`` with and without padding.

    Args:
        detector (DeformableDETR): The detector, in eval mode.

    Raises:
        UnsupportedExportError: Another ``eval_module`` than ``'detr'``, or a softmax classifier without the
            background column convention.
    """

    def __init__(self, detector: DeformableDETR) -> None:
        super().__init__()
        eval_module = getattr(detector, 'eval_module', 'detr')
        if eval_module != 'detr':
            raise UnsupportedExportError(f'{type(detector).__name__} with eval_module={eval_module!r}: only the query '
                                         f'head (eval_module="detr") is exported')
        self.detector = detector
        self.preprocessor = InGraphPreprocessor(detector.data_preprocessor)
        head = detector.bbox_head
        self.num_classes = head.num_classes
        self.use_sigmoid = bool(head.loss_cls.use_sigmoid)
        self.max_per_img = (head.test_cfg or {}).get('max_per_img', detector.num_queries)

    def pre_transformer(self, mlvl_feats: Tuple[Tensor, ...], padded_size: Tensor,
                        image_size: Tensor) -> Tuple[Dict, Dict]:
        """mmdet's ``DeformableDETR.pre_transformer`` for one image, with the padding mask from tensors.

        Args:
            mlvl_feats (tuple[Tensor]): Neck outputs, each (1, C, H_l, W_l).
            padded_size (Tensor): (2,) long, the padded network input size.
            image_size (Tensor): (2,) long, the image size inside it.

        Returns:
            tuple[dict, dict]: The keyword arguments of ``forward_encoder`` and (part of) ``forward_decoder``.
        """
        detector = self.detector
        rows = torch.arange(padded_size[0], device=image_size.device)
        cols = torch.arange(padded_size[1], device=image_size.device)
        # 1 on padding, 0 on the image (DETR's convention), as mmdet builds it
        mask = ((rows[:, None] >= image_size[0]) | (cols[None, :] >= image_size[1])).to(mlvl_feats[0].dtype)
        flat_feats: List[Tensor] = []
        flat_pos: List[Tensor] = []
        flat_masks: List[Tensor] = []
        level_masks: List[Tensor] = []
        spatial_shapes: List[Tensor] = []
        for level, feat in enumerate(mlvl_feats):
            level_mask = F.interpolate(mask[None, None], size=feat.shape[-2:]).to(torch.bool)[0]  # (1, H_l, W_l)
            pos_embed = detector.positional_encoding(level_mask)
            level_masks.append(level_mask)
            spatial_shapes.append(torch._shape_as_tensor(feat)[2:].to(feat.device))
            flat_feats.append(feat.flatten(2).permute(0, 2, 1))
            flat_pos.append(pos_embed.flatten(2).permute(0, 2, 1) + detector.level_embed[level].view(1, 1, -1))
            flat_masks.append(level_mask.flatten(1))
        spatial_shapes_tensor = torch.cat(spatial_shapes).view(-1, 2)
        level_start_index = torch.cat((spatial_shapes_tensor.new_zeros((1, )),
                                       spatial_shapes_tensor.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([detector.get_valid_ratio(m) for m in level_masks], 1)
        memory_mask = torch.cat(flat_masks, 1)
        shared = dict(spatial_shapes=spatial_shapes_tensor, level_start_index=level_start_index,
                      valid_ratios=valid_ratios)
        encoder_inputs = dict(feat=torch.cat(flat_feats, 1), feat_mask=memory_mask, feat_pos=torch.cat(flat_pos, 1),
                              **shared)
        decoder_inputs = dict(memory_mask=memory_mask, **shared)
        return encoder_inputs, decoder_inputs

    def postprocess(self, cls_score: Tensor, bbox_pred: Tensor, image_size: Tensor,
                    scale_factor: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """mmdet's ``DETRHead._predict_by_feat_single`` with ``rescale=True``, sizes as tensors.

        Args:
            cls_score (Tensor): (num_queries, C) logits of the last decoder layer.
            bbox_pred (Tensor): (num_queries, 4) normalized (cx, cy, w, h).
            image_size (Tensor): (2,) long ``(H, W)`` of the resized image.
            scale_factor (Tensor): (2,) float ``(w_scale, h_scale)`` of the resize.

        Returns:
            tuple[Tensor, Tensor, Tensor]: boxes (N, 4) x1 y1 x2 y2 in original image pixels, scores (N,),
            labels (N,) int64.
        """
        if self.use_sigmoid:
            scores, indexes = cls_score.sigmoid().view(-1).topk(self.max_per_img)
            labels = indexes % self.num_classes
            bbox_pred = bbox_pred[indexes // self.num_classes]
        else:
            scores, labels = F.softmax(cls_score, dim=-1)[..., :-1].max(-1)
            scores, bbox_index = scores.topk(self.max_per_img)
            bbox_pred, labels = bbox_pred[bbox_index], labels[bbox_index]
        size_xyxy = image_size.flip(0).repeat(2).to(bbox_pred.dtype)  # (W, H, W, H)
        boxes = bbox_cxcywh_to_xyxy(bbox_pred) * size_xyxy
        boxes = torch.minimum(boxes.clamp(min=0), size_xyxy)
        return boxes / scale_factor.to(boxes.dtype).repeat(2), scores, labels

    def forward(self, image: Tensor, scale_factor: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Detect objects in one image.

        Args:
            image (Tensor): (1, 3, H, W) float BGR pixel values of the image resized by the test pipeline.
            scale_factor (Tensor): (2,) float ``(w_scale, h_scale)``: resized size / original size.

        Returns:
            tuple[Tensor, Tensor, Tensor]: boxes (N, 4), scores (N,), labels (N,), see :meth:`postprocess`.
        """
        detector = self.detector
        inputs, image_size = self.preprocessor(image)
        mlvl_feats = detector.extract_feat(inputs)
        encoder_inputs, decoder_inputs = self.pre_transformer(mlvl_feats, torch._shape_as_tensor(inputs)[2:],
                                                              image_size)
        encoder_outputs = detector.forward_encoder(**encoder_inputs)
        query_inputs, head_inputs = detector.pre_decoder(**encoder_outputs)
        decoder_inputs.update(query_inputs)
        head_inputs.update(detector.forward_decoder(**decoder_inputs))
        all_cls_scores, all_bbox_preds = detector.bbox_head(head_inputs['hidden_states'], head_inputs['references'])
        return self.postprocess(all_cls_scores[-1][0], all_bbox_preds[-1][0], image_size, scale_factor)
