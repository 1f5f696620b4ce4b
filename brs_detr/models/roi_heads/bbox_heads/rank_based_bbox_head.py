"""RoI box head trained with a ranking-based loss (BRS paper Sec. 6.1; RS loss, Oksuz et al., 2021)."""
from typing import Dict, Optional

import torch
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.layers import multiclass_nms
from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor

from ...dense_heads.rank_based_loss_mixin import RankBasedLossMixin


@MODELS.register_module()
class RankBasedConvFCBBoxHead(RankBasedLossMixin, ConvFCBBoxHead):
    """ConvFC box head with a sigmoid classifier trained by a ranking-based loss.

    What changes with respect to :class:`ConvFCBBoxHead` and why:

    * ``fc_cls`` has ``num_classes`` outputs and no background column: ranking losses are one-vs-all
      (the released BRS-DETR checkpoint's ``fc_cls`` is (80, 1024)).
    * No sampling: the RoI head is meant to receive all proposals (see ``configs/rank_based``); every RoI
      of the local batch enters one ranking-loss call, RoIs x classes flattened. Positive targets are the
      IoU of the predicted box (decoded with this head's ``bbox_coder``, using the gt class's regression
      unless ``reg_class_agnostic``) with its assigned ground truth for RS/BRS, 1 for AP/BAP.
    * The box loss (GIoU with ``reg_decoded_bbox=True``, or L1 on deltas) is weighted per positive by its
      detached maximum class probability, normalised by the sum of the weights and value-matched to the
      ranking loss (Eq. 17). The head's weight is ``loss_cls.loss_weight``.
    * Loss keys: ``loss_rank``, ``loss_sort`` (RS/BRS only), ``loss_bbox``; no ``acc`` (there is no
      background column to take an arg-max over).
    * Prediction uses sigmoid scores; a zero background column is appended so mmdet's ``multiclass_nms``
      (which drops the last column) and ``StandardRoIHead.predict_bbox`` work unchanged.

    Args:
        use_iou_targets (bool, optional): IoU (True) or binary (False) targets; ``None`` infers it from the
            loss (IoU for RS/BRS, binary for AP/BAP).
        value_matched_bbox (bool): Rescale the box loss to the ranking loss value. Defaults to True.
        min_positive_target (float): Smallest IoU target of a positive. Defaults to 1e-6.
        *args, **kwargs: Arguments of :class:`ConvFCBBoxHead`; ``loss_cls`` must be a ranking loss.
    """

    def __init__(self,
                 *args,
                 use_iou_targets: Optional[bool] = None,
                 value_matched_bbox: bool = True,
                 min_positive_target: float = 1e-6,
                 **kwargs) -> None:
        kwargs.setdefault('loss_cls', dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0))
        kwargs.setdefault('loss_bbox', dict(type='GIoULoss', loss_weight=1.0))
        kwargs.setdefault('reg_decoded_bbox', True)
        super().__init__(*args, **kwargs)
        if self.with_cls:
            cls_predictor_cfg = self.cls_predictor_cfg.copy()
            cls_predictor_cfg.update(in_features=self.cls_last_dim, out_features=self.num_classes)
            self.fc_cls = MODELS.build(cls_predictor_cfg)  # replaces the (num_classes + 1)-way classifier
        else:
            raise ValueError(f'{type(self).__name__} needs its classifier (with_cls=True)')
        if not self.with_reg:
            raise ValueError(f'{type(self).__name__} needs its regressor (with_reg=True)')
        self._init_rank_based_loss(use_iou_targets, value_matched_bbox, min_positive_target)

    def loss(self,
             cls_score: Tensor,
             bbox_pred: Tensor,
             rois: Tensor,
             labels: Tensor,
             label_weights: Tensor,
             bbox_targets: Tensor,
             bbox_weights: Tensor,
             reduction_override: Optional[str] = None) -> Dict[str, Tensor]:
        """Ranking loss over all RoIs x classes of the batch and the value-matched box loss.

        Args:
            cls_score (Tensor): Logits (K, num_classes).
            bbox_pred (Tensor): Deltas (K, 4) if class-agnostic, else (K, num_classes * 4).
            rois (Tensor): (K, 5) as (img_id, x1, y1, x2, y2).
            labels (Tensor): Assigned classes (K,), ``num_classes`` for background.
            label_weights (Tensor): (K,); RoIs with weight 0 are ignored.
            bbox_targets (Tensor): Assigned gt boxes (K, 4) (``reg_decoded_bbox``) or encoded deltas.
            bbox_weights (Tensor): Unused (every positive gets its score weight).
            reduction_override (str, optional): Not supported (the losses are reduced over the whole batch).

        Returns:
            dict[str, Tensor]: ``loss_rank``, ``loss_sort`` (RS/BRS), ``loss_bbox``.
        """
        if reduction_override is not None:
            raise ValueError(f'{type(self).__name__}: reduction_override is not supported by ranking losses')
        if cls_score.size(-1) != self.num_classes:
            raise ValueError(f'{type(self).__name__}: expected cls_score with {self.num_classes} columns (no '
                             f'background), got shape {tuple(cls_score.shape)}')
        pos_mask = (labels >= 0) & (labels < self.num_classes)
        reg_dim = self.bbox_coder.encode_size
        if self.reg_class_agnostic:
            pos_deltas = bbox_pred.view(bbox_pred.size(0), reg_dim)[pos_mask]
        else:
            pos_deltas = bbox_pred.view(bbox_pred.size(0), -1, reg_dim)[pos_mask, labels[pos_mask]]
        pos_rois = rois[pos_mask, 1:]
        pos_targets = bbox_targets[pos_mask]
        pos_decoded = get_box_tensor(self.bbox_coder.decode(pos_rois, pos_deltas))
        if self.reg_decoded_bbox:
            pos_gt = get_box_tensor(pos_targets)
            loss_preds, loss_targets = pos_decoded, pos_gt
        else:
            # targets are encoded deltas: decoding them with the same coder gives the assigned gt boxes
            pos_gt = get_box_tensor(self.bbox_coder.decode(pos_rois, pos_targets))
            loss_preds, loss_targets = pos_deltas, pos_targets
        return self.rank_based_loss(cls_score, labels, label_weights > 0, pos_decoded, pos_gt, loss_preds,
                                    loss_targets)

    def _predict_by_feat_single(self,
                                roi: Tensor,
                                cls_score: Tensor,
                                bbox_pred: Tensor,
                                img_meta: dict,
                                rescale: bool = False,
                                rcnn_test_cfg: Optional[ConfigDict] = None) -> InstanceData:
        """Decode the boxes of one image and run per-class NMS on sigmoid scores.

        The box decoding and rescaling of :class:`BBoxHead` are reused (its no-NMS path); only the scores
        change: sigmoid probabilities (num_rois, num_classes) plus a zero background column, the layout
        ``multiclass_nms`` and mmdet's test-time augmentation merging expect.

        Args:
            roi (Tensor): (num_rois, 5) as (img_id, x1, y1, x2, y2).
            cls_score (Tensor): Logits (num_rois, num_classes).
            bbox_pred (Tensor): Deltas (num_rois, 4) or (num_rois, num_classes * 4).
            img_meta (dict): Image meta.
            rescale (bool): Return boxes in original image space.
            rcnn_test_cfg (ConfigDict, optional): ``score_thr``, ``nms``, ``max_per_img``; ``None`` returns the
                raw boxes and scores (augmented test).

        Returns:
            InstanceData: ``bboxes`` (n, 4), ``scores`` (n,), ``labels`` (n,) after NMS, or raw ``bboxes``
            (num_rois, num_classes * 4 or 4) and ``scores`` (num_rois, num_classes + 1) without a config.
        """
        if roi.shape[0] == 0:
            return super()._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale, rcnn_test_cfg)
        results = super()._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale,
                                                  rcnn_test_cfg=None)
        scores = cls_score.sigmoid()
        scores = torch.cat([scores, scores.new_zeros(scores.size(0), 1)], dim=1)
        if rcnn_test_cfg is None:
            results.scores = scores
            return results
        box_dim = results.bboxes.size(-1) // (1 if self.reg_class_agnostic else self.num_classes)
        det_bboxes, det_labels = multiclass_nms(results.bboxes, scores, rcnn_test_cfg.score_thr,
                                                rcnn_test_cfg.nms, rcnn_test_cfg.max_per_img, box_dim=box_dim)
        final = InstanceData()
        final.bboxes = det_bboxes[:, :-1]
        final.scores = det_bboxes[:, -1]
        final.labels = det_labels
        return final


@MODELS.register_module()
class RankBasedShared2FCBBoxHead(RankBasedConvFCBBoxHead):
    """:class:`RankBasedConvFCBBoxHead` with two shared fully connected layers, the layout of mmdet's
    :class:`Shared2FCBBoxHead` (Faster R-CNN, and the RoI head of BRS-DETR).

    Args:
        fc_out_channels (int): Width of the shared fcs. Defaults to 1024.
        *args, **kwargs: Arguments of :class:`RankBasedConvFCBBoxHead`.
    """

    def __init__(self, fc_out_channels: int = 1024, *args, **kwargs) -> None:
        super().__init__(
            *args,
            num_shared_convs=0,
            num_shared_fcs=2,
            num_cls_convs=0,
            num_cls_fcs=0,
            num_reg_convs=0,
            num_reg_fcs=0,
            fc_out_channels=fc_out_channels,
            **kwargs)
