"""ATSS head trained with a ranking-based loss (RS, BRS, AP or BAP) (BRS paper Sec. 6.1)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.cnn import Scale
from torch import Tensor

from mmdet.models.dense_heads import ATSSHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import InstanceList, OptConfigType, OptInstanceList

from .rank_based_loss_mixin import RankBasedLossMixin

@MODELS.register_module()
class RankBasedATSSHead(RankBasedLossMixin, ATSSHead):
    """ATSS head whose classifier is trained with a ranking-based loss (RS-ATSS / BRS-ATSS / AP / BAP).

    What changes with respect to :class:`ATSSHead` and why:

    * No centerness branch and no centerness parameters: ranking losses with IoU targets already rank
      well-localised boxes first (RS loss, Sec. 4), and the released BRS-DETR checkpoint has no such layer.
      ``forward`` returns ``(cls_scores, bbox_preds)``; prediction uses the class probabilities alone.
    * Sigmoid classifier with ``num_classes`` outputs (ranking losses are one-vs-all).
    * ``loss_cls`` is a ranking loss (``RankSortLoss``, ``BucketedRankSortLoss``, ``APLoss``,
      ``BucketedAPLoss``) applied once to all valid anchors x classes of the local batch, with IoU targets
      computed by the same ``bbox_coder`` that decodes the predictions (RS/BRS) or 1 (AP/BAP).
    * The GIoU box loss is weighted per positive by its detached maximum class probability, normalised by
      the sum of these weights and value-matched to the ranking loss (Eq. 17), so ``loss_bbox`` has the
      value of ``loss_rank + loss_sort``; its ``loss_weight`` must stay 1. The head's overall weight is
      ``loss_cls.loss_weight``.
    * Loss keys: ``loss_rank``, ``loss_sort`` (RS/BRS only), ``loss_bbox``.

    Args:
        num_classes (int): Number of foreground classes.
        in_channels (int): Input channels.
        loss_cls (dict): Ranking-loss config. Defaults to BRS with ``delta=0.5``.
        loss_bbox (dict): Box-loss config. Defaults to GIoU.
        use_iou_targets (bool, optional): IoU (True) or binary (False) positive targets; ``None`` infers it
            from the loss (IoU for RS/BRS, binary for AP/BAP).
        value_matched_bbox (bool): Rescale the box loss to the ranking loss value (Eq. 17). Defaults to True.
        min_positive_target (float): Smallest IoU target of a positive. Defaults to 1e-6.
        loss_centerness (None): Must be None (accepted so configs can remove ATSS's entry by setting it to
            None).
        **kwargs: Arguments of :class:`ATSSHead`.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 loss_cls: dict = dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0),
                 loss_bbox: dict = dict(type='GIoULoss', loss_weight=1.0),
                 use_iou_targets: Optional[bool] = None,
                 value_matched_bbox: bool = True,
                 min_positive_target: float = 1e-6,
                 loss_centerness: OptConfigType = None,
                 **kwargs) -> None:
        if loss_centerness is not None:
            raise ValueError(f'{type(self).__name__} has no centerness branch; set loss_centerness=None '
                             f'(got {loss_centerness})')
        if not kwargs.get('reg_decoded_bbox', True):
            raise ValueError(f'{type(self).__name__}: reg_decoded_bbox must be True (the box loss compares '
                             f'decoded boxes)')
        # ATSSHead builds a centerness loss it will not use; a parameter-free placeholder, removed below
        super().__init__(num_classes=num_classes, in_channels=in_channels, loss_cls=loss_cls,
                         loss_bbox=loss_bbox,
                         loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                         **kwargs)
        del self.loss_centerness
        self._init_rank_based_loss(use_iou_targets, value_matched_bbox, min_positive_target)

    def _init_layers(self) -> None:
        """ATSS layers without ``atss_centerness``; the classifier has ``num_classes`` sigmoid outputs."""
        self.use_sigmoid_cls = True  # ranking losses are one-vs-all: no background column
        self.cls_out_channels = self.num_classes
        super()._init_layers()
        del self.atss_centerness

    def forward(self, x: Tuple[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Forward all levels.

        Args:
            x (tuple[Tensor]): Features, each (N, in_channels, H, W).

        Returns:
            tuple: ``cls_scores`` (list of (N, A * num_classes, H, W)) and ``bbox_preds`` (list of
            (N, A * 4, H, W)); no centerness.
        """
        cls_scores, bbox_preds = [], []
        for feat, scale in zip(x, self.scales):
            cls_score, bbox_pred = self.forward_single(feat, scale)
            cls_scores.append(cls_score)
            bbox_preds.append(bbox_pred)
        return cls_scores, bbox_preds

    def forward_single(self, x: Tensor, scale: Scale) -> Sequence[Tensor]:
        """Forward one level: ATSS's towers and predictors, without centerness.

        Args:
            x (Tensor): Features (N, in_channels, H, W).
            scale (Scale): Learnable scale of the box deltas of this level.

        Returns:
            tuple[Tensor, Tensor]: ``cls_score`` (N, A * num_classes, H, W), ``bbox_pred`` (N, A * 4, H, W).
        """
        cls_feat, reg_feat = x, x
        for cls_conv in self.cls_convs:
            cls_feat = cls_conv(cls_feat)
        for reg_conv in self.reg_convs:
            reg_feat = reg_conv(reg_feat)
        cls_score = self.atss_cls(cls_feat)
        bbox_pred = scale(self.atss_reg(reg_feat)).float()
        return cls_score, bbox_pred

    def batch_anchors(self, cls_scores: List[Tensor], batch_img_metas: List[dict]) -> Tuple[list, list]:
        """Anchors and valid flags of every image for these feature maps.

        Raises:
            ValueError: the number of feature levels differs from the anchor generator's.
        """
        featmap_sizes = [featmap.size()[-2:] for featmap in cls_scores]
        if len(featmap_sizes) != self.prior_generator.num_levels:
            raise ValueError(f'{type(self).__name__}: got {len(featmap_sizes)} feature levels, the anchor '
                             f'generator has {self.prior_generator.num_levels}')
        return self.get_anchors(featmap_sizes, batch_img_metas, device=cls_scores[0].device)

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """Ranking loss over all valid anchors of the batch and the value-matched GIoU loss.

        Args:
            cls_scores (list[Tensor]): Per level (N, A * num_classes, H, W).
            bbox_preds (list[Tensor]): Per level (N, A * 4, H, W).
            batch_gt_instances (list[InstanceData]): ``bboxes`` (G, 4) and ``labels`` (G,) per image.
            batch_img_metas (list[dict]): Image metas.
            batch_gt_instances_ignore (list[InstanceData], optional): Ignored boxes.

        Returns:
            dict[str, Tensor]: ``loss_rank``, ``loss_sort`` (RS/BRS), ``loss_bbox``.
        """
        anchor_list, valid_flag_list = self.batch_anchors(cls_scores, batch_img_metas)
        (anchors_list, labels_list, label_weights_list, bbox_targets_list, _,
         _) = self.get_targets(anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
                               batch_gt_instances_ignore=batch_gt_instances_ignore)

        # every per-level tensor is (N, n_level, ...) in (H, W, A) order; flatten to (N * n_total, ...)
        cls_logits = torch.cat([s.permute(0, 2, 3, 1).reshape(s.size(0), -1, self.cls_out_channels)
                                for s in cls_scores], dim=1).reshape(-1, self.cls_out_channels)
        deltas = torch.cat([p.permute(0, 2, 3, 1).reshape(p.size(0), -1, 4) for p in bbox_preds],
                           dim=1).reshape(-1, 4)
        anchors = torch.cat(anchors_list, dim=1).reshape(-1, 4)
        labels = torch.cat(labels_list, dim=1).reshape(-1)
        valid = torch.cat(label_weights_list, dim=1).reshape(-1) > 0
        gt_bboxes = torch.cat(bbox_targets_list, dim=1).reshape(-1, 4)

        pos_mask = (labels >= 0) & (labels < self.num_classes)
        pos_decoded = get_box_tensor(self.bbox_coder.decode(anchors[pos_mask], deltas[pos_mask]))
        pos_gt = gt_bboxes[pos_mask]  # reg_decoded_bbox: the targets are the assigned gt boxes
        return self.rank_based_loss(cls_logits, labels, valid, pos_decoded, pos_gt, pos_decoded, pos_gt)
