"""RoI auxiliary head of Co-DETR (Faster R-CNN branch on the encoder memory)."""
from typing import List, Tuple

import torch
from torch import Tensor

from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import InstanceList

from ..dense_heads.co_positive_coords import PositiveCoords


@MODELS.register_module()
class CoStandardRoIHead(StandardRoIHead):
    """Standard RoI head that also returns its sampled RoIs as positive
    coordinates.

    Losses are those of :class:`StandardRoIHead`. Added: a ``'pos_coords'``
    entry (:class:`PositiveCoords`) in the loss dict with, per image, the
    first ``min(max_proposals, fewest sampled RoIs of an image)`` sampled RoIs
    (positives first), their labels, their assigned boxes and their RoI
    features averaged over the 7x7 grid; :class:`CoDETR` turns them into
    customized positive queries (Co-DETR, Sec. 3.3). Bbox-only (no mask).

    Args:
        max_proposals (int): Cap on the RoIs handed over per image.
            Defaults to 2000.
        **kwargs: Arguments of :class:`StandardRoIHead`.
    """

    def __init__(self, *args, max_proposals: int = 2000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_proposals = max_proposals

    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
             batch_data_samples: List[DetDataSample]) -> dict:
        """Assign and sample proposals, compute the box losses and collect
        the sampled RoIs.

        Args:
            x (tuple[Tensor]): Multi-level features, each (bs, C, H, W).
            rpn_results_list (list[InstanceData]): Proposals (``bboxes``).
            batch_data_samples (list[DetDataSample]): Ground truth.

        Returns:
            dict: ``loss_cls``, ``acc``, ``loss_bbox`` and ``pos_coords``.
        """
        if len(rpn_results_list) != len(batch_data_samples):
            raise ValueError(
                f'{type(self).__name__}: {len(rpn_results_list)} proposal '
                f'lists for {len(batch_data_samples)} images')
        batch_gt_instances, batch_gt_instances_ignore, _ = \
            unpack_gt_instances(batch_data_samples)
        sampling_results = []
        for img_id, rpn_results in enumerate(rpn_results_list):
            rpn_results.priors = rpn_results.pop('bboxes')
            assign_result = self.bbox_assigner.assign(
                rpn_results, batch_gt_instances[img_id],
                batch_gt_instances_ignore[img_id])
            sampling_results.append(
                self.bbox_sampler.sample(
                    assign_result,
                    rpn_results,
                    batch_gt_instances[img_id],
                    feats=[lvl_feat[img_id][None] for lvl_feat in x]))

        rois = bbox2roi([res.priors for res in sampling_results])
        bbox_results = self._bbox_forward(x, rois)
        loss_and_target = self.bbox_head.loss_and_target(
            cls_score=bbox_results['cls_score'],
            bbox_pred=bbox_results['bbox_pred'],
            rois=rois,
            sampling_results=sampling_results,
            rcnn_train_cfg=self.train_cfg)
        losses = dict(loss_and_target['loss_bbox'])
        losses['pos_coords'] = self._positive_coords(
            rois, bbox_results['bbox_feats'],
            loss_and_target['bbox_targets'], len(sampling_results))
        return losses

    def _positive_coords(self, rois: Tensor, bbox_feats: Tensor,
                         bbox_targets: tuple, num_imgs: int) -> PositiveCoords:
        """Gather the sampled RoIs per image (same count for every image).

        Args:
            rois (Tensor): (n, 5) as (img_id, x1, y1, x2, y2), image-major.
            bbox_feats (Tensor): (n, C, 7, 7) RoI features.
            bbox_targets (tuple): ``(labels, label_weights, bbox_targets,
                bbox_weights)`` of :meth:`BBoxHead.get_targets` (concatenated).
            num_imgs (int): Batch size.

        Returns:
            PositiveCoords: tensors of (bs, P, ...).
        """
        labels, _, box_targets, _ = bbox_targets
        img_ids = rois[:, 0].long()
        counts = torch.bincount(img_ids, minlength=num_imgs)
        num_keep = min(self.max_proposals, int(counts.min().item()))
        starts = torch.cumsum(counts, 0) - counts
        index = (starts[:, None] + torch.arange(
            num_keep, device=rois.device)[None]).reshape(-1)
        pooled = bbox_feats.mean(dim=(-2, -1))
        return PositiveCoords(
            coords=rois[index, 1:].reshape(num_imgs, num_keep, 4),
            labels=labels[index].reshape(num_imgs, num_keep),
            targets=box_targets[index].reshape(num_imgs, num_keep, -1),
            feats=pooled[index].reshape(num_imgs, num_keep, -1),
            head_type='rcnn')
