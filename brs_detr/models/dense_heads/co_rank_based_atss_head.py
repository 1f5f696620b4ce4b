"""Rank-based ATSS auxiliary head of BRS-DETR (BRS paper Sec. 5 on top of Co-DETR's ATSS branch)."""
from typing import Dict, List, Optional

import torch
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.utils import InstanceList, OptInstanceList

from .co_positive_coords import PositiveCoords
from .rank_based_atss_head import RankBasedATSSHead


@MODELS.register_module()
class CoRankBasedATSSHead(RankBasedATSSHead):
    """:class:`RankBasedATSSHead` that also hands its assignment to the query head of :class:`CoDETR`.

    Losses, layers and prediction are those of :class:`RankBasedATSSHead` unchanged (sigmoid classifier trained
    with RS/BRS/AP/BAP over all anchors, no centerness branch, score-weighted GIoU value-matched to the ranking
    loss). The only change, the same as :class:`CoATSSHead` makes to :class:`ATSSHead`: :meth:`loss_by_feat` adds
    a ``'pos_coords'`` entry (:class:`PositiveCoords`: every anchor of every image, its assigned label,
    ``num_classes`` for background, and its assigned ground-truth box) which :class:`CoDETR` pops and turns into
    customized positive queries (Co-DETR Sec. 3.3). In BRS-DETR the positive queries of this head are thus the
    anchors ATSS assigns for the ranking loss.

    The assignment is not recomputed: the ATSS targets that :meth:`RankBasedATSSHead.loss_by_feat` computes
    through :meth:`get_targets` are captured during that call and reused.

    In BRS-DETR the head's weight is ``loss_cls.loss_weight`` (5.0 in the released settings); ``loss_bbox`` is
    value-matched to the ranking loss and its ``loss_weight`` must stay 1.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._captured_targets: Optional[list] = None

    def get_targets(self, *args, **kwargs) -> tuple:
        """:meth:`ATSSHead.get_targets`, recording its result while :meth:`loss_by_feat` runs."""
        targets = super().get_targets(*args, **kwargs)
        if self._captured_targets is not None:
            self._captured_targets.append(targets)
        return targets

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, object]:
        """Rank-based ATSS losses plus the assignment for the positive queries.

        Args:
            cls_scores (list[Tensor]): Per level (bs, A * num_classes, H, W).
            bbox_preds (list[Tensor]): Per level (bs, A * 4, H, W).
            batch_gt_instances (list[InstanceData]): ``bboxes`` (G, 4) and ``labels`` (G,) per image.
            batch_img_metas (list[dict]): Image metas.
            batch_gt_instances_ignore (list[InstanceData], optional): Ignored boxes.

        Returns:
            dict: ``loss_rank``, ``loss_sort`` (RS/BRS), ``loss_bbox`` (scalars) and ``pos_coords``
            (:class:`PositiveCoords` with ``coords`` and ``targets`` (bs, N, 4) absolute xyxy, ``labels``
            (bs, N), N the anchors of all levels, ``feats=None``, ``head_type='dense'``).
        """
        captured: list = []
        self._captured_targets = captured
        try:
            losses = super().loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                                          batch_gt_instances_ignore=batch_gt_instances_ignore)
        finally:
            self._captured_targets = None
        if len(captured) != 1:
            raise RuntimeError(f'{type(self).__name__}: expected one target assignment per loss call, got '
                               f'{len(captured)}')
        # per-level (bs, n_lvl, ...) lists, as ATSSHead.get_targets returns them
        anchors_list, labels_list, _, bbox_targets_list, _, _ = captured[0]
        losses['pos_coords'] = PositiveCoords(
            coords=torch.cat(anchors_list, dim=1),
            labels=torch.cat(labels_list, dim=1),
            targets=torch.cat(bbox_targets_list, dim=1),
            feats=None,
            head_type='dense')
        return losses
