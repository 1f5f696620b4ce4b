"""ATSS auxiliary head of Co-DETR (one-to-many assignment on the encoder memory)."""
from typing import List

import torch
from torch import Tensor

from mmdet.models.dense_heads import ATSSHead
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS
from mmdet.utils import InstanceList, OptInstanceList, reduce_mean

from .co_positive_coords import PositiveCoords


@MODELS.register_module()
class CoATSSHead(ATSSHead):
    """ATSS head that also returns its assignment as positive coordinates.

    Losses (focal, GIoU weighted by the centerness target, centerness CE) and
    their normalization are those of :class:`ATSSHead`; the only change is an
    extra ``'pos_coords'`` entry (:class:`PositiveCoords` with every anchor of
    every image, its label and assigned box) in the dict returned by
    :meth:`loss_by_feat`, which :class:`CoDETR` pops and turns into customized
    positive queries (Co-DETR, Sec. 3.3).
    """

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     centernesses: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """Compute the ATSS losses and collect the assignment.

        Args:
            cls_scores (list[Tensor]): Per level (bs, A * num_classes, H, W).
            bbox_preds (list[Tensor]): Per level (bs, A * 4, H, W).
            centernesses (list[Tensor]): Per level (bs, A, H, W).
            batch_gt_instances (list[InstanceData]): ``bboxes``, ``labels``.
            batch_img_metas (list[dict]): Image metas.
            batch_gt_instances_ignore (list[InstanceData], optional): Ignored
                boxes.

        Returns:
            dict: ``loss_cls``, ``loss_bbox``, ``loss_centerness`` (lists over
            levels) and ``pos_coords`` (:class:`PositiveCoords`).
        """
        featmap_sizes = [featmap.size()[-2:] for featmap in bbox_preds]
        device = cls_scores[0].device
        anchor_list, valid_flag_list = self.get_anchors(
            featmap_sizes, batch_img_metas, device=device)
        (anchor_list, labels_list, label_weights_list, bbox_targets_list,
         _, avg_factor) = self.get_targets(
             anchor_list,
             valid_flag_list,
             batch_gt_instances,
             batch_img_metas,
             batch_gt_instances_ignore=batch_gt_instances_ignore)
        avg_factor = reduce_mean(
            torch.tensor(avg_factor, dtype=torch.float, device=device)).item()
        losses_cls, losses_bbox, loss_centerness, bbox_avg_factor = \
            multi_apply(
                self.loss_by_feat_single,
                anchor_list,
                cls_scores,
                bbox_preds,
                centernesses,
                labels_list,
                label_weights_list,
                bbox_targets_list,
                avg_factor=avg_factor)
        bbox_avg_factor = reduce_mean(sum(bbox_avg_factor)).clamp_(min=1)
        losses_bbox = [loss / bbox_avg_factor for loss in losses_bbox]

        # per-level (bs, n_lvl, ...) lists back to per-image (bs, N, ...)
        pos_coords = PositiveCoords(
            coords=torch.cat(anchor_list, dim=1),
            labels=torch.cat(labels_list, dim=1),
            targets=torch.cat(bbox_targets_list, dim=1),
            feats=None,
            head_type='dense')
        return dict(
            loss_cls=losses_cls,
            loss_bbox=losses_bbox,
            loss_centerness=loss_centerness,
            pos_coords=pos_coords)
