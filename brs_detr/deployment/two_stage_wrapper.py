"""Exportable inference of two-stage detectors: Faster R-CNN, Mask R-CNN, Cascade (Mask) R-CNN and the rank-based
RS/BRS variants of brs-detr."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.models.dense_heads import RPNHead
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

from brs_detr.models.roi_heads.bbox_heads import RankBasedConvFCBBoxHead
from .errors import UnsupportedExportError
from .mask_paste import paste_masks
from .preprocessing import InGraphPreprocessor
from .roi_align import UnsupportedRoIAlignError, check_exportable_roi_layer

#: mmcv's ``batched_nms`` runs one NMS per class above this many boxes: a Python loop over the classes found in the
#: export example, which tracing would unroll for those classes only. The export sets it above any box count, so the
#: graph runs the single NMS on class-offset boxes, which keeps the same boxes.
NO_SPLIT = 2**62
#: The methods of mmdet whose computation the wrapper reproduces: a subclass that overrides one of them computes
#: something else, and is not exported.
REPRODUCED_METHODS = {
    TwoStageDetector: ('predict', ),
    RPNHead: ('predict_by_feat', '_predict_by_feat_single', '_bbox_post_process'),
    StandardRoIHead: ('predict', 'predict_bbox', 'predict_mask'),
    CascadeRoIHead: ('predict', 'predict_bbox', 'predict_mask', '_refine_roi'),
    SingleRoIExtractor: ('forward', ),
    FCNMaskHead: ('predict_by_feat', '_predict_by_feat_single'),
}
#: Box heads whose ``_predict_by_feat_single(..., rcnn_test_cfg=None)`` returns the raw per-class boxes and the
#: (num_rois, num_classes + 1) scores the wrapper post-processes.
RAW_PREDICTIONS = (BBoxHead._predict_by_feat_single, RankBasedConvFCBBoxHead._predict_by_feat_single)
MASK_OUTPUT = 'masks'


def _overridden(module: nn.Module, base: type) -> List[str]:
    """The methods of :data:`REPRODUCED_METHODS` ``[base]`` that ``module``'s class overrides."""
    return [name for name in REPRODUCED_METHODS[base] if getattr(type(module), name) is not getattr(base, name)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, nms_cfg: dict) -> Tuple[Tensor, Tensor]:
    """mmcv's ``batched_nms`` (class-aware NMS of boxes offset per class), without its data-dependent branches.

    The same boxes, offsets and NMS as mmcv's unsplit path; the largest coordinate is taken with a ``-inf``
    appended (by padding: a concatenated constant of that size breaks torch's ONNX shape inference), so that no box
    (nothing passed the score threshold) traces and runs as well instead of failing.

    Args:
        boxes (Tensor): (N, 4).
        scores (Tensor): (N,).
        idxs (Tensor): (N,) long: the class (or level) of each box; boxes of different ones never suppress each
            other (unless ``class_agnostic``).
        nms_cfg (dict): mmcv's: ``type='nms'``, ``iou_threshold``, optionally ``class_agnostic``, ``offset``,
            ``score_threshold``, ``max_num``.

    Returns:
        tuple[Tensor, Tensor]: The kept boxes with their score (K, 5) in descending score order and their indices
        (K,).
    """
    from mmcv.ops import nms

    nms_cfg = dict(nms_cfg)
    nms_type = nms_cfg.pop('type', 'nms')
    if nms_type != 'nms':
        raise UnsupportedExportError(f'NMS type {nms_type!r} is not exported (only "nms": ONNX NonMaxSuppression)')
    nms_cfg.pop('split_thr', None)
    if nms_cfg.pop('class_agnostic', False):
        boxes_for_nms = boxes
    else:
        max_coordinate = F.pad(boxes.reshape(-1), (0, 1), value=float('-inf')).max()
        boxes_for_nms = boxes + (idxs.to(boxes) * (max_coordinate + 1))[:, None]
    dets, keep = nms(boxes_for_nms, scores, **nms_cfg)
    return torch.cat([boxes[keep], dets[:, -1:]], -1), keep


class TwoStageDetectorExportWrapper(nn.Module):
    """``(image, scale_factor) -> (boxes, scores, labels[, masks])`` of a :class:`TwoStageDetector`, as its
    ``predict`` computes them for one image.

    The graph: normalization and padding (:class:`InGraphPreprocessor`), backbone and neck, then

    * **RPN** (:meth:`proposals`, ``RPNHead._predict_by_feat_single`` and ``_bbox_post_process``): per level the
      ``nms_pre`` best anchors (sorted by score only when the level has more, as mmdet), decoded and clipped to the
      image, boxes not larger than ``min_bbox_size`` dropped, NMS per level, the first ``max_per_img``;
    * **RoI head** (:meth:`detect`): the RoI features (mmdet's extractor, with the level assignment of
      :mod:`~brs_detr.deployment.roi_extractor` and the RoIAlign of :mod:`~brs_detr.deployment.roi_align`), the box
      head and its own box decoding; for a cascade, every stage refines the RoIs with its class-wise regression and
      the scores are averaged over the stages (``CascadeRoIHead._refine_roi``); then mmdet's ``multiclass_nms``:
      scores above ``score_thr`` per class, class-aware NMS, ``max_per_img``. As in mmdet, the boxes of a detector
      without masks are scaled to the original image before NMS, those of a mask detector after it;
    * **masks** (:meth:`segment`, Mask R-CNN and Cascade Mask R-CNN): the mask head on the detected boxes (a
      cascade averages the stages' probabilities), the predicted class's mask pasted into the original image and
      thresholded at ``mask_thr_binary``, as ``FCNMaskHead`` does on the CPU (:func:`~.mask_paste.paste_masks`).
      The original size is ``round(resized size / scale_factor)``, which is exact for mmdet's ``Resize``.

    What differs from mmdet's code, and why: the steps are computed here for one image instead of through
    ``predict``, because mmdet splits the RoIs per image with Python lists of counts, loops over detections to
    paste masks and skips empty sets with Python branches, all of which tracing would fix to the export example.
    Every filter is a tensor operation, so the graph is right for any number of proposals and detections (none
    included). The RPN and R-CNN NMS never take mmcv's per-class split path (:data:`NO_SPLIT`).

    Args:
        detector (TwoStageDetector): The detector, in eval mode.

    Raises:
        UnsupportedExportError: A part whose test-time computation is not reproduced here, named (another RPN,
            RoI head, RoI extractor, box or mask head, a RoIAlign setting ONNX computes differently, a negative
            ``mask_thr_binary``).
    """

    def __init__(self, detector: TwoStageDetector) -> None:
        super().__init__()
        name = type(detector).__name__
        roi_head = detector.roi_head
        self.cascade = isinstance(roi_head, CascadeRoIHead)
        roi_base = CascadeRoIHead if self.cascade else StandardRoIHead
        problems = [f'{name}.{method}' for method in _overridden(detector, TwoStageDetector)]
        if not isinstance(detector.rpn_head, RPNHead):
            problems.append(f'rpn_head {type(detector.rpn_head).__name__} (only RPNHead and its subclasses)')
        else:
            problems += [f'{type(detector.rpn_head).__name__}.{method}'
                         for method in _overridden(detector.rpn_head, RPNHead)]
        if not isinstance(roi_head, (StandardRoIHead, CascadeRoIHead)):
            problems.append(f'roi_head {type(roi_head).__name__} (only StandardRoIHead, CascadeRoIHead and their '
                            f'subclasses that keep their predict)')
        else:
            problems += [f'{type(roi_head).__name__}.{method}' for method in _overridden(roi_head, roi_base)]
            problems += self._check_heads(roi_head)
        if problems:
            raise UnsupportedExportError(f'{name} (two-stage): not exported: {"; ".join(problems)}')
        self.detector = detector
        self.preprocessor = InGraphPreprocessor(detector.data_preprocessor)
        self.with_mask = bool(roi_head.with_mask)
        self.output_names = ('boxes', 'scores', 'labels') + ((MASK_OUTPUT, ) if self.with_mask else ())
        self.rpn_cfg = self._no_split(detector.rpn_head.test_cfg)
        self.rcnn_cfg = self._no_split(roi_head.test_cfg)
        last_bbox_head = roi_head.bbox_head[-1] if self.cascade else roi_head.bbox_head
        #: One box per RoI for all classes (else one per class).
        self.class_agnostic = bool(last_bbox_head.reg_class_agnostic)

    @staticmethod
    def _check_heads(roi_head: nn.Module) -> List[str]:
        """What in the RoI head's box and mask branches is not exported, one entry per module."""
        problems = []
        stages = list(roi_head.bbox_head) if isinstance(roi_head.bbox_head, nn.ModuleList) else [roi_head.bbox_head]
        for index, head in enumerate(stages):
            where = f'roi_head.bbox_head[{index}]' if len(stages) > 1 else 'roi_head.bbox_head'
            if type(head)._predict_by_feat_single not in RAW_PREDICTIONS:
                problems.append(f'{where} {type(head).__name__} (its _predict_by_feat_single is not BBoxHead\'s)')
            elif not head.with_reg or head.predict_box_type != 'hbox':
                problems.append(f'{where} {type(head).__name__} without box regression or with '
                                f'predict_box_type={head.predict_box_type!r}')
        extractors = [('bbox_roi_extractor', roi_head.bbox_roi_extractor)]
        if roi_head.with_mask:
            extractors.append(('mask_roi_extractor', roi_head.mask_roi_extractor))
            masks = list(roi_head.mask_head) if isinstance(roi_head.mask_head, nn.ModuleList) else \
                [roi_head.mask_head]
            for head in masks:
                if not isinstance(head, FCNMaskHead) or _overridden(head, FCNMaskHead):
                    problems.append(f'roi_head.mask_head {type(head).__name__} (only FCNMaskHead and subclasses that '
                                    f'keep its predict_by_feat)')
            if roi_head.test_cfg.get('mask_thr_binary', -1) < 0:
                problems.append('test_cfg.rcnn.mask_thr_binary < 0 (probability maps): only binary masks are '
                                'exported')
        for where, extractors_of in extractors:
            for extractor in (extractors_of if isinstance(extractors_of, nn.ModuleList) else [extractors_of]):
                if not isinstance(extractor, SingleRoIExtractor) or _overridden(extractor, SingleRoIExtractor):
                    problems.append(f'roi_head.{where} {type(extractor).__name__} (only SingleRoIExtractor)')
                    continue
                try:
                    for layer in extractor.roi_layers:
                        check_exportable_roi_layer(layer, f'roi_head.{where}')
                except UnsupportedRoIAlignError as error:
                    problems.append(str(error))
        return problems

    @staticmethod
    def _no_split(cfg: Optional[dict]) -> dict:
        """A copy of a test config whose ``nms`` never takes mmcv's per-class split path (:data:`NO_SPLIT`)."""
        cfg = copy.deepcopy(dict(cfg or {}))
        if cfg.get('nms') is not None:
            cfg['nms'] = dict(cfg['nms'], split_thr=NO_SPLIT)
        return cfg

    def proposals(self, feats: Sequence[Tensor], image_size: Tensor) -> Tensor:
        """The RPN's proposals for one image: ``RPNHead._predict_by_feat_single`` and ``_bbox_post_process``.

        Args:
            feats (sequence[Tensor]): Neck outputs, each (1, C, H_l, W_l).
            image_size (Tensor): (2,) long ``(H, W)`` of the resized image (boxes are clipped to it).

        Returns:
            Tensor: (P, 4) proposals x1 y1 x2 y2 in resized-image pixels, by descending objectness.
        """
        rpn = self.detector.rpn_head
        cfg = self.rpn_cfg
        cls_scores, bbox_preds = rpn(feats)
        priors = rpn.prior_generator.grid_priors([score.shape[-2:] for score in cls_scores],
                                                 dtype=cls_scores[0].dtype, device=cls_scores[0].device)
        nms_pre = cfg.get('nms_pre', -1)
        level_scores, level_deltas, level_priors, level_ids = [], [], [], []
        for level, (cls_score, bbox_pred, level_prior) in enumerate(zip(cls_scores, bbox_preds, priors)):
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, rpn.bbox_coder.encode_size)
            logits = cls_score[0].permute(1, 2, 0).reshape(-1, rpn.cls_out_channels)
            scores = logits.sigmoid() if rpn.use_sigmoid_cls else logits.softmax(-1)[:, :-1]
            scores = scores.reshape(-1)
            if nms_pre > 0:
                # mmdet sorts a level only when it has more than nms_pre anchors; it keeps their order otherwise
                ranked, order = scores.sort(descending=True)
                more = torch._shape_as_tensor(scores)[0] > nms_pre
                order = torch.where(more, order, torch.arange(scores.size(0), device=scores.device))[:nms_pre]
                scores, deltas, level_prior = torch.where(more, ranked, scores)[:nms_pre], deltas[order], \
                    level_prior[order]
            level_scores.append(scores)
            level_deltas.append(deltas)
            level_priors.append(level_prior)
            level_ids.append(torch.full_like(scores, level, dtype=torch.long))
        scores = torch.cat(level_scores)
        level_ids = torch.cat(level_ids)
        boxes = rpn.bbox_coder.decode(torch.cat(level_priors), torch.cat(level_deltas),
                                      max_shape=image_size.to(scores.dtype))
        if cfg.get('min_bbox_size', -1) >= 0:
            widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            valid = ((widths > cfg['min_bbox_size']) & (heights > cfg['min_bbox_size'])).nonzero().squeeze(1)
            boxes, scores, level_ids = boxes[valid], scores[valid], level_ids[valid]
        dets, _ = batched_nms(boxes, scores, level_ids, cfg['nms'])
        return dets[:cfg['max_per_img'], :4]

    def classify(self, feats: Sequence[Tensor], proposals: Tensor, image_size: Tensor) -> Tuple[Tensor, Tensor]:
        """Box head(s) on the proposals: per-class boxes and scores before NMS (``predict_bbox`` up to
        ``multiclass_nms``; for a cascade, ``_refine_roi`` and the last stage).

        Returns:
            tuple[Tensor, Tensor]: boxes (P, num_classes * 4) or (P, 4) (class-agnostic) in resized-image pixels,
            scores (P, num_classes + 1) (the last column is the background, or zero for the rank-based heads).
        """
        roi_head = self.detector.roi_head
        rois = torch.cat([torch.zeros_like(proposals[:, :1]), proposals], 1)
        img_meta = dict(img_shape=image_size.to(proposals.dtype))
        if not self.cascade:
            results = roi_head._bbox_forward(feats, rois)
            bbox_head = roi_head.bbox_head
        else:
            stage_scores = []
            for stage in range(roi_head.num_stages):
                results = roi_head._bbox_forward(stage, feats, rois)
                stage_scores.append(results['cls_score'])
                if stage < roi_head.num_stages - 1:
                    bbox_head = roi_head.bbox_head[stage]
                    cls_score = results['cls_score']
                    if bbox_head.custom_activation:
                        cls_score = bbox_head.loss_cls.get_activation(cls_score)
                    refined = bbox_head.regress_by_class(rois[:, 1:], cls_score[:, :-1].argmax(dim=1),
                                                         results['bbox_pred'], img_meta)
                    rois = torch.cat([rois[:, :1], refined], 1)
            results = dict(cls_score=sum(stage_scores) / float(len(stage_scores)), bbox_pred=results['bbox_pred'])
            bbox_head = roi_head.bbox_head[-1]
        raw = bbox_head._predict_by_feat_single(rois, results['cls_score'], results['bbox_pred'], img_meta,
                                                rescale=False, rcnn_test_cfg=None)
        return raw.bboxes, raw.scores

    def detect(self, boxes: Tensor, scores: Tensor, rescale: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """mmdet's ``multiclass_nms`` (no score factors): every class score above ``score_thr`` is a candidate, NMS
        per class, the first ``max_per_img``.

        Args:
            boxes (Tensor): (P, num_classes * 4) or (P, 4).
            scores (Tensor): (P, num_classes + 1).
            rescale (Tensor, optional): (4,) factors the boxes are multiplied by before NMS (None: not scaled).

        Returns:
            tuple[Tensor, Tensor, Tensor]: boxes (N, 4), scores (N,), labels (N,) int64, by descending score.
        """
        cfg = self.rcnn_cfg
        num_classes = scores.size(1) - 1
        if rescale is not None:
            boxes = (boxes.reshape(-1, 4) * rescale).reshape(boxes.shape)
        if self.class_agnostic:
            boxes = boxes[:, None].expand(scores.size(0), num_classes, 4)
        else:
            boxes = boxes.reshape(scores.size(0), -1, 4)
        class_scores = scores[:, :-1]
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(class_scores).reshape(-1)
        boxes, class_scores = boxes.reshape(-1, 4), class_scores.reshape(-1)
        valid = (class_scores > cfg['score_thr']).nonzero().squeeze(1)
        boxes, class_scores, labels = boxes[valid], class_scores[valid], labels[valid]
        dets, keep = batched_nms(boxes, class_scores, labels, cfg['nms'])
        max_num = cfg.get('max_per_img', -1)
        if max_num > 0:
            dets, keep = dets[:max_num], keep[:max_num]
        return dets[:, :4], dets[:, 4], labels[keep]

    def segment(self, feats: Sequence[Tensor], boxes: Tensor, labels: Tensor, scale_factor: Tensor,
                image_size: Tensor) -> Tuple[Tensor, Tensor]:
        """The masks of the detections (``predict_mask`` and ``FCNMaskHead._predict_by_feat_single``).

        Args:
            boxes (Tensor): (N, 4) in resized-image pixels.
            labels (Tensor): (N,) classes.
            scale_factor (Tensor): (2,) ``(w_scale, h_scale)``.
            image_size (Tensor): (2,) long, the resized ``(H, W)``.

        Returns:
            tuple[Tensor, Tensor]: boxes (N, 4) and masks (N, H0, W0) bool, in the original image.
        """
        roi_head = self.detector.roi_head
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], 1)
        if not self.cascade:
            mask_preds = roi_head._mask_forward(feats, rois)['mask_preds'].sigmoid()
            mask_head = roi_head.mask_head
        else:
            mask_preds = torch.stack([roi_head._mask_forward(stage, feats, rois)['mask_preds'].sigmoid()
                                      for stage in range(roi_head.num_stages)]).mean(0)
            mask_head = roi_head.mask_head[-1]
        if mask_head.class_agnostic:
            mask_probs = mask_preds[:, 0]
        else:  # the predicted class's mask (a gather: ONNX's advanced indexing warns about negative indices)
            index = labels[:, None, None, None].expand(-1, 1, mask_preds.size(2), mask_preds.size(3))
            mask_probs = mask_preds.gather(1, index)[:, 0]
        boxes = boxes / scale_factor.to(boxes.dtype).repeat(2)
        original = torch.round(image_size.to(scale_factor.dtype) / scale_factor.flip(0)).to(torch.long)
        return boxes, paste_masks(mask_probs, boxes, original[0], original[1],
                                  float(self.rcnn_cfg['mask_thr_binary']))

    def forward(self, image: Tensor, scale_factor: Tensor) -> Tuple[Tensor, ...]:
        """Detect (and segment) objects in one image.

        Args:
            image (Tensor): (1, 3, H, W) float BGR pixel values of the image resized by the test pipeline.
            scale_factor (Tensor): (2,) float ``(w_scale, h_scale)``: resized size / original size.

        Returns:
            tuple[Tensor, ...]: boxes (N, 4) x1 y1 x2 y2 in original image pixels, scores (N,), labels (N,) int64,
            and for a mask detector masks (N, H0, W0) bool in the original image (H0 x W0).
        """
        inputs, image_size = self.preprocessor(image)
        feats = self.detector.extract_feat(inputs)
        proposals = self.proposals(feats, image_size)
        boxes, scores = self.classify(feats, proposals, image_size)
        if not self.with_mask:
            return self.detect(boxes, scores, (1 / scale_factor.to(boxes.dtype)).repeat(2))
        boxes, scores, labels = self.detect(boxes, scores, None)
        boxes, masks = self.segment(feats, boxes, labels, scale_factor, image_size)
        return boxes, scores, labels, masks
