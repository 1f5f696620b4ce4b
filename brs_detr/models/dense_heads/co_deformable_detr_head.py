"""Query head of Co-Deformable-DETR (one-to-one set prediction + customized positive queries)."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from mmdet.models.dense_heads import DeformableDETRHead
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean

from ..task_modules import NonFiniteMatchingCost
from .co_positive_coords import PositiveCoords


@MODELS.register_module()
class CoDeformableDETRHead(DeformableDETRHead):
    """Query head of Co-Deformable-DETR (Zong et al., ICCV 2023, Sec. 3.3).

    Unchanged from :class:`DeformableDETRHead` for the one-to-one branch
    (Hungarian matching per decoder layer plus the binary loss of the encoder
    proposals; keys ``loss_cls``, ``d{i}.loss_cls``, ``enc_loss_cls``...).
    Added: the *customized positive queries*. Each auxiliary head (ATSS, RoI
    head) hands over its assigned anchors/proposals (:class:`PositiveCoords`);
    :meth:`get_aux_targets` keeps up to ``max_pos_coords`` positives per image
    (randomly subsampled), pads every image to the same number with the
    head's own negatives, and :meth:`loss_aux` applies the usual focal, L1 and
    GIoU losses to the decoder outputs of those queries against the auxiliary
    head's assignment (no Hungarian matching), weighted by ``lambda_1``
    (Eq. 6 of the Co-DETR paper).

    Args:
        max_pos_coords (int): Most positive queries per image and auxiliary
            head. Defaults to 300.
        min_pos_coords (int): Fewest queries per image (padded with
            negatives) so that a batch without positives still runs the
            decoder. Defaults to 9.
        lambda_1 (float): Weight of the positive-query losses. Defaults to 1.
        aux_sampling_seed (int, optional): Seed of the generator that
            subsamples positives and negatives. None draws it once from
            torch's global generator (seeded by the runner's ``randomness``).
        **kwargs: Arguments of :class:`DeformableDETRHead`.
    """

    def __init__(self,
                 *args,
                 max_pos_coords: int = 300,
                 min_pos_coords: int = 9,
                 lambda_1: float = 1.0,
                 aux_sampling_seed: Optional[int] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if min_pos_coords < 1 or max_pos_coords < min_pos_coords:
            raise ValueError(
                f'{type(self).__name__}: need 1 <= min_pos_coords '
                f'({min_pos_coords}) <= max_pos_coords ({max_pos_coords})')
        self.max_pos_coords = max_pos_coords
        self.min_pos_coords = min_pos_coords
        self.lambda_1 = lambda_1
        self.aux_sampling_seed = aux_sampling_seed
        self._generators: Dict[str, torch.Generator] = {}

    # ------------------------------------------------------------------
    # randomness
    def _generator(self, device: torch.device) -> torch.Generator:
        """Return the seeded generator of the positive-query subsampling on
        ``device`` (one per device, created on first use)."""
        key = str(device)
        if key not in self._generators:
            seed = self.aux_sampling_seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1, )).item())
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            self._generators[key] = generator
        return self._generators[key]

    def _random_subset(self, indices: Tensor, num: int) -> Tensor:
        """``num`` randomly chosen entries of the 1-D tensor ``indices``."""
        order = torch.randperm(
            indices.numel(),
            generator=self._generator(indices.device),
            device=indices.device)
        return indices[order[:num]]

    # ------------------------------------------------------------------
    # one-to-one matching
    def _get_targets_single(self, cls_score: Tensor, bbox_pred: Tensor,
                            gt_instances, img_meta: dict) -> tuple:
        """:meth:`DETRHead._get_targets_single`; a non-finite matching cost
        (``Float32HungarianAssigner``) is reported with this head's name."""
        try:
            return super()._get_targets_single(cls_score, bbox_pred,
                                               gt_instances, img_meta)
        except NonFiniteMatchingCost as error:
            raise NonFiniteMatchingCost(
                f'{type(self).__name__}, one-to-one matching of '
                f'{cls_score.shape[0]} queries (a decoder layer or the '
                f'encoder proposals): {error}') from None

    # ------------------------------------------------------------------
    # positive queries
    def get_aux_targets(self, pos_coords: PositiveCoords,
                        batch_img_metas: List[dict],
                        mlvl_feats: Tuple[Tensor]) -> Dict[str, Tensor]:
        """Build the positive queries of one auxiliary head.

        Args:
            pos_coords (PositiveCoords): Assignment of the auxiliary head:
                ``coords`` (bs, N, 4) and ``targets`` (bs, N, 4) as absolute
                (x1, y1, x2, y2), ``labels`` (bs, N) with ``num_classes`` for
                background, ``feats`` (bs, N, C) or None (then taken from
                ``mlvl_feats`` at the anchor locations).
            batch_img_metas (list[dict]): Image metas (``img_shape``).
            mlvl_feats (tuple[Tensor]): Feature maps the auxiliary head ran
                on, each (bs, C, H, W); used when ``pos_coords.feats`` is None.

        Returns:
            dict[str, Tensor]: ``coords`` (bs, Q, 4) normalized (cx, cy, w, h)
            in [0, 1], ``labels`` (bs, Q), ``label_weights`` (bs, Q),
            ``bbox_targets`` (bs, Q, 4) normalized (cx, cy, w, h),
            ``bbox_weights`` (bs, Q, 4), ``feats`` (bs, Q, C), with Q the
            number of positives of the richest image clipped to
            [min_pos_coords, max_pos_coords].
        """
        coords, labels, targets = (pos_coords.coords, pos_coords.labels,
                                   pos_coords.targets)
        num_imgs = len(coords)
        if pos_coords.feats is None:
            channels = mlvl_feats[0].shape[1]
            flat_feats = torch.cat(
                [feat.flatten(2) for feat in mlvl_feats], dim=2).transpose(
                    1, 2)  # (bs, num_locations, C)
            num_locations = flat_feats.shape[1]
            if coords.shape[1] % num_locations != 0:
                raise ValueError(
                    f'{type(self).__name__}: {coords.shape[1]} anchors are '
                    f'not a multiple of the {num_locations} feature locations')
            anchors_per_location = coords.shape[1] // num_locations
            feats = flat_feats.repeat_interleave(anchors_per_location, dim=1)
        else:
            feats = pos_coords.feats
            channels = feats.shape[-1]

        is_pos = (labels >= 0) & (labels < self.num_classes)
        num_queries = int(is_pos.sum(dim=1).max().item()) if num_imgs else 0
        num_queries = max(self.min_pos_coords,
                          min(self.max_pos_coords, num_queries))

        label_weights = coords.new_ones((num_imgs, num_queries))
        bbox_weights = coords.new_zeros((num_imgs, num_queries, 4))
        out_coords, out_labels, out_targets, out_feats = [], [], [], []
        for img_id in range(num_imgs):
            img_h, img_w = batch_img_metas[img_id]['img_shape'][:2]
            factor = coords.new_tensor([img_w, img_h, img_w, img_h])
            pos_inds = is_pos[img_id].nonzero().squeeze(1)
            if pos_inds.numel() > num_queries:
                pos_inds = self._random_subset(pos_inds, num_queries)
            num_pad = num_queries - pos_inds.numel()
            keep = pos_inds
            if num_pad > 0:
                neg_inds = (labels[img_id] == self.num_classes).nonzero(
                ).squeeze(1)
                if neg_inds.numel() < num_pad:
                    raise RuntimeError(
                        f'{type(self).__name__}: {neg_inds.numel()} '
                        f'negatives cannot pad {num_pad} positive queries')
                keep = torch.cat(
                    [pos_inds, self._random_subset(neg_inds, num_pad)])
            bbox_weights[img_id, :pos_inds.numel()] = 1.0
            out_coords.append(
                bbox_xyxy_to_cxcywh(coords[img_id, keep] / factor))
            out_labels.append(labels[img_id, keep])
            out_targets.append(
                bbox_xyxy_to_cxcywh(targets[img_id, keep] / factor))
            out_feats.append(feats[img_id, keep].reshape(-1, channels))
        return dict(
            coords=torch.stack(out_coords),
            labels=torch.stack(out_labels),
            label_weights=label_weights,
            bbox_targets=torch.stack(out_targets),
            bbox_weights=bbox_weights,
            feats=torch.stack(out_feats))

    def loss_aux(self, hidden_states: Tensor, references: List[Tensor],
                 aux_targets: Dict[str, Tensor],
                 batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Losses of the positive queries of one auxiliary head.

        Args:
            hidden_states (Tensor): Decoder outputs of the positive queries,
                (num_layers, bs, Q, dim).
            references (list[Tensor]): Initial and per-layer references,
                num_layers + 1 tensors of shape (bs, Q, 4).
            aux_targets (dict[str, Tensor]): Output of
                :meth:`get_aux_targets`.
            batch_img_metas (list[dict]): Image metas.

        Returns:
            dict[str, Tensor]: ``loss_cls_aux``, ``loss_bbox_aux``,
            ``loss_iou_aux`` of the last layer and ``d{i}.loss_*_aux`` of the
            others.
        """
        all_cls_scores, all_bbox_preds = self(hidden_states, references)
        num_layers = len(all_cls_scores)
        losses_cls, losses_bbox, losses_iou = multi_apply(
            self.loss_by_feat_single_aux, all_cls_scores, all_bbox_preds,
            [aux_targets] * num_layers, [batch_img_metas] * num_layers)
        loss_dict = dict(
            loss_cls_aux=losses_cls[-1],
            loss_bbox_aux=losses_bbox[-1],
            loss_iou_aux=losses_iou[-1])
        for layer_id in range(num_layers - 1):
            loss_dict[f'd{layer_id}.loss_cls_aux'] = losses_cls[layer_id]
            loss_dict[f'd{layer_id}.loss_bbox_aux'] = losses_bbox[layer_id]
            loss_dict[f'd{layer_id}.loss_iou_aux'] = losses_iou[layer_id]
        return loss_dict

    def loss_by_feat_single_aux(
            self, cls_scores: Tensor, bbox_preds: Tensor,
            aux_targets: Dict[str, Tensor],
            batch_img_metas: List[dict]) -> Tuple[Tensor, Tensor, Tensor]:
        """Loss of one decoder layer on the positive queries.

        Same normalization as :meth:`DETRHead.loss_by_feat_single` (class loss
        averaged over the positives, synchronized across GPUs; box losses
        averaged over the positives), with the targets given by the
        auxiliary head instead of Hungarian matching.

        Args:
            cls_scores (Tensor): (bs, Q, cls_out_channels) logits.
            bbox_preds (Tensor): (bs, Q, 4) normalized (cx, cy, w, h).
            aux_targets (dict[str, Tensor]): See :meth:`get_aux_targets`.
            batch_img_metas (list[dict]): Image metas.

        Returns:
            tuple[Tensor]: ``loss_cls``, ``loss_bbox``, ``loss_iou``, each
            multiplied by ``lambda_1``.
        """
        labels = aux_targets['labels'].reshape(-1)
        label_weights = aux_targets['label_weights'].reshape(-1)
        bbox_targets = aux_targets['bbox_targets'].reshape(-1, 4)
        bbox_weights = aux_targets['bbox_weights'].reshape(-1, 4)

        num_total_pos = ((labels >= 0) & (labels < self.num_classes)).sum()
        num_total_neg = labels.numel() - num_total_pos
        cls_avg_factor = (num_total_pos * 1.0 +
                          num_total_neg * self.bg_cls_weight).float()
        if self.sync_cls_avg_factor:
            cls_avg_factor = reduce_mean(cls_avg_factor)
        cls_avg_factor = cls_avg_factor.clamp(min=1)
        loss_cls = self.loss_cls(
            cls_scores.reshape(-1, self.cls_out_channels),
            labels,
            label_weights,
            avg_factor=cls_avg_factor)

        box_avg_factor = reduce_mean(num_total_pos.float()).clamp(min=1)
        factors = torch.cat([
            bbox_preds.new_tensor(
                [meta['img_shape'][1], meta['img_shape'][0]] *
                2).expand(bbox_preds.shape[1], 4) for meta in batch_img_metas
        ])
        bbox_preds = bbox_preds.reshape(-1, 4)
        loss_iou = self.loss_iou(
            bbox_cxcywh_to_xyxy(bbox_preds) * factors,
            bbox_cxcywh_to_xyxy(bbox_targets) * factors,
            bbox_weights,
            avg_factor=box_avg_factor)
        loss_bbox = self.loss_bbox(
            bbox_preds, bbox_targets, bbox_weights, avg_factor=box_avg_factor)
        return (loss_cls * self.lambda_1, loss_bbox * self.lambda_1,
                loss_iou * self.lambda_1)
