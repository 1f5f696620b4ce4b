"""Co-Deformable-DETR: Deformable-DETR with collaborative hybrid assignments."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmengine.model import ModuleList

from mmdet.models.detectors import DeformableDETR
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType

from ..layers import (CoDeformableDetrTransformerDecoder,
                      CoDeformableDetrTransformerEncoder)

EVAL_MODULES = ('detr', 'one-stage', 'two-stage')


def _as_list(cfg: Union[None, dict, Sequence], length: int) -> list:
    """A per-head list of configs of ``length`` entries (None padded)."""
    if cfg is None:
        return [None] * length
    if isinstance(cfg, dict):
        cfg = [cfg]
    cfg = list(cfg)
    return cfg + [None] * (length - len(cfg))


def _with_suffix(losses: dict, suffix: int) -> dict:
    """Append the head index to every key, as the original Co-DETR does."""
    return {f'{key}{suffix}': value for key, value in losses.items()}


@MODELS.register_module()
class CoDETR(DeformableDETR):
    """Co-Deformable-DETR (Zong et al., "DETRs with Collaborative Hybrid
    Assignments Training", ICCV 2023) on mmdet 3.x.

    What changes with respect to :class:`DeformableDETR` (two-stage, box
    refinement):

    * *Mixed selection*: the content queries are learned
      (``query_embedding``, num_queries x dim); only the positional queries
      come from the top-k encoder proposals.
    * *Look forward twice* in the decoder
      (:class:`CoDeformableDetrTransformerDecoder`).
    * Activation checkpointing of the encoder and decoder layers
      (``encoder=dict(num_cp=...)``, ``decoder=dict(num_cp=...)``: the
      number of leading layers; off by default) without fairscale, exact and
      DDP-safe (:class:`CoDeformableDetrTransformerEncoder`).
    * The encoder memory, reshaped back into the 4 input levels plus one
      stride-2 level (``downsample``: 3x3 conv s2 + GroupNorm), feeds the
      auxiliary one-to-many heads: an RPN + RoI head (``rpn_head``,
      ``roi_head``) and dense heads such as ATSS (``aux_bbox_head``).
    * *Customized positive queries*: the assignment of each auxiliary head is
      turned into an extra query set (per-head positional projection
      ``aux_pos_trans``/``aux_pos_trans_norm``, feature projection
      ``pos_feats_trans``/``pos_feats_norm`` and head embedding
      ``head_pos_embed``), decoded by the same decoder and supervised by the
      query head's ``loss_aux``.
    * At test time only the query head runs (top-k over queries x classes, no
      NMS) unless ``eval_module`` selects an auxiliary head.

    ``train_cfg``/``test_cfg`` are lists as in the original: index 0 for the
    query head, 1 for the RPN + first RoI head (``rpn``, ``rpn_proposal``,
    ``rcnn``), then one entry per further RoI head and per dense head.

    Args:
        mixed_selection (bool): Learned content queries. Defaults to True.
        num_co_heads (int): Number of auxiliary heads that hand over positive
            queries (RoI heads first, then dense heads). Defaults to 2.
        with_pos_coord (bool): Train the customized positive queries.
            Defaults to True.
        head_pos_embed_dims (int): Width of ``head_pos_embed``. The released
            models use 1 (an upstream slip, one scalar broadcast over the
            query positions); ``embed_dims`` is the intended variant.
            Defaults to 1.
        rpn_head (dict, optional): RPN config.
        roi_head (list[dict], optional): RoI head configs.
        aux_bbox_head (list[dict], optional): Dense auxiliary head configs
            (``bbox_head`` list of the original config).
        eval_module (str): ``'detr'`` (query head), ``'one-stage'``
            (``aux_bbox_head[eval_index]``) or ``'two-stage'``
            (``rpn_head`` + ``roi_head[eval_index]``). Defaults to 'detr'.
        eval_index (int): Which auxiliary head to evaluate. Defaults to 0.
        train_cfg (list[dict], optional): Per-head training configs.
        test_cfg (list[dict], optional): Per-head testing configs.
        **kwargs: Arguments of :class:`DeformableDETR` (backbone, neck,
            encoder, decoder, bbox_head = the query head, ...).
    """

    def __init__(self,
                 *args,
                 mixed_selection: bool = True,
                 num_co_heads: int = 2,
                 with_pos_coord: bool = True,
                 head_pos_embed_dims: int = 1,
                 rpn_head: OptConfigType = None,
                 roi_head: Optional[List[ConfigType]] = None,
                 aux_bbox_head: Optional[List[ConfigType]] = None,
                 eval_module: str = 'detr',
                 eval_index: int = 0,
                 train_cfg: Union[None, dict, List[dict]] = None,
                 test_cfg: Union[None, dict, List[dict]] = None,
                 **kwargs) -> None:
        if eval_module not in EVAL_MODULES:
            raise ValueError(f'CoDETR: eval_module must be one of '
                             f'{EVAL_MODULES}, got {eval_module!r}')
        self.mixed_selection = mixed_selection
        self.num_co_heads = num_co_heads
        self.with_pos_coord = with_pos_coord
        self.head_pos_embed_dims = head_pos_embed_dims
        roi_head = [cfg for cfg in (roi_head or []) if cfg is not None]
        aux_bbox_head = [
            cfg for cfg in (aux_bbox_head or []) if cfg is not None
        ]
        num_cfgs = 2 + len(roi_head) + len(aux_bbox_head)
        train_cfgs = _as_list(train_cfg, num_cfgs)
        test_cfgs = _as_list(test_cfg, num_cfgs)
        super().__init__(
            *args, train_cfg=train_cfgs[0], test_cfg=test_cfgs[0], **kwargs)
        self.train_cfg = train_cfgs
        self.test_cfg = test_cfgs
        self.eval_module = eval_module
        self.eval_index = eval_index

        # auxiliary heads: configs at 1 (rpn + first roi head), then others
        if rpn_head is not None:
            rpn_head = copy.deepcopy(rpn_head)
            rpn_head.update(
                train_cfg=train_cfgs[1]['rpn']
                if train_cfgs[1] is not None else None,
                test_cfg=test_cfgs[1]['rpn']
                if test_cfgs[1] is not None else None)
            self.rpn_head = MODELS.build(rpn_head)
        self.roi_head = ModuleList()  # mmengine's: init_weights reaches it
        for idx, cfg in enumerate(roi_head):
            cfg = copy.deepcopy(cfg)
            cfg.update(
                train_cfg=train_cfgs[1 + idx]['rcnn']
                if train_cfgs[1 + idx] is not None else None,
                test_cfg=test_cfgs[1 + idx]['rcnn']
                if test_cfgs[1 + idx] is not None else None)
            self.roi_head.append(MODELS.build(cfg))
        self.aux_bbox_head = ModuleList()
        first_dense = 1 + len(roi_head)
        for idx, cfg in enumerate(aux_bbox_head):
            cfg = copy.deepcopy(cfg)
            cfg.update(
                train_cfg=train_cfgs[first_dense + idx],
                test_cfg=test_cfgs[first_dense + idx])
            self.aux_bbox_head.append(MODELS.build(cfg))
        num_pos_heads = len(self.roi_head) + len(self.aux_bbox_head)
        if with_pos_coord and num_pos_heads > num_co_heads:
            raise ValueError(
                f'CoDETR: {num_pos_heads} auxiliary heads hand over positive '
                f'queries but num_co_heads={num_co_heads}')

    # ------------------------------------------------------------------
    # layers
    def _init_layers(self) -> None:
        """Build the Deformable-DETR layers, then swap in the look-forward-
        twice decoder and add the Co-DETR layers."""
        decoder_cfg = copy.deepcopy(self.decoder)
        self.decoder = {
            key: value
            for key, value in decoder_cfg.items()
            if key not in ('look_forward_twice', 'inverse_sigmoid_eps',
                           'num_cp')
        }
        encoder_cfg = copy.deepcopy(self.encoder)
        # mmdet's encoder would hand num_cp to fairscale; ours applies it
        self.encoder = {
            key: value
            for key, value in encoder_cfg.items() if key != 'num_cp'
        }
        super()._init_layers()
        self.decoder = CoDeformableDetrTransformerDecoder(**decoder_cfg)
        # the same layers with the checkpointing forward: built aside the
        # global RNG (so every later init draws what it drew before) and
        # given the weights mmdet's encoder was built with
        with torch.random.fork_rng(devices=[]):
            encoder = CoDeformableDetrTransformerEncoder(**encoder_cfg)
        encoder.load_state_dict(self.encoder.state_dict())
        self.encoder = encoder
        if self.as_two_stage and self.mixed_selection:
            self.query_embedding = nn.Embedding(self.num_queries,
                                                self.embed_dims)
        if self.with_pos_coord and self.num_co_heads > 0:
            dims = self.embed_dims
            self.head_pos_embed = nn.Embedding(self.num_co_heads,
                                               self.head_pos_embed_dims)
            self.aux_pos_trans = nn.ModuleList(
                nn.Linear(dims * 2, dims * 2)
                for _ in range(self.num_co_heads))
            self.aux_pos_trans_norm = nn.ModuleList(
                nn.LayerNorm(dims * 2) for _ in range(self.num_co_heads))
            self.pos_feats_trans = nn.ModuleList(
                nn.Linear(dims, dims) for _ in range(self.num_co_heads))
            self.pos_feats_norm = nn.ModuleList(
                nn.LayerNorm(dims) for _ in range(self.num_co_heads))
        self.downsample = nn.Sequential(
            nn.Conv2d(
                self.embed_dims,
                self.embed_dims,
                kernel_size=3,
                stride=2,
                padding=1),
            nn.GroupNorm(32, self.embed_dims))

    def init_weights(self) -> None:
        """Deformable-DETR initialization plus Xavier-uniform for the
        positive-query projections (as the original transformer does for
        every matrix it owns)."""
        super().init_weights()
        if self.with_pos_coord and self.num_co_heads > 0:
            modules = [self.head_pos_embed, *self.aux_pos_trans,
                       *self.pos_feats_trans]
            for module in modules:
                nn.init.xavier_uniform_(module.weight)

    @property
    def with_rpn(self) -> bool:
        """Whether the detector has an RPN."""
        return getattr(self, 'rpn_head', None) is not None

    # BaseDetector's versions assume a single ``roi_head`` module
    @property
    def with_bbox(self) -> bool:
        """Always True: the query head predicts boxes."""
        return True

    @property
    def with_mask(self) -> bool:
        """Always False: bbox-only model."""
        return False

    @property
    def with_shared_head(self) -> bool:
        """Whether the first RoI head has a shared head."""
        return len(self.roi_head) > 0 and self.roi_head[0].with_shared_head

    # ------------------------------------------------------------------
    # transformer
    def get_proposal_pos_embed(self,
                               proposals: Tensor,
                               num_pos_feats: Optional[int] = None,
                               temperature: int = 10000) -> Tensor:
        """Sine embedding of unnormalized boxes, (bs, n, 4) -> (bs, n,
        4 * num_pos_feats); ``num_pos_feats`` defaults to ``embed_dims // 2``
        (as in the original; mmdet's static version fixes it to 128)."""
        if num_pos_feats is None:
            num_pos_feats = self.embed_dims // 2
        return DeformableDETR.get_proposal_pos_embed(proposals, num_pos_feats,
                                                     temperature)

    def pre_decoder(self, memory: Tensor, memory_mask: Optional[Tensor],
                    spatial_shapes: Tensor) -> Tuple[Dict, Dict]:
        """Two-stage query selection with *mixed selection*: positional
        queries and reference boxes from the top-k encoder proposals, content
        queries from ``query_embedding`` (DINO Sec. 3.4)."""
        decoder_inputs_dict, head_inputs_dict = super().pre_decoder(
            memory, memory_mask, spatial_shapes)
        if self.as_two_stage and self.mixed_selection:
            decoder_inputs_dict['query'] = self.query_embedding.weight[
                None].expand(memory.size(0), -1, -1)
        return decoder_inputs_dict, head_inputs_dict

    def forward_encoder_only(
            self, img_feats: Tuple[Tensor],
            batch_data_samples: SampleList) -> Tuple[Dict, Dict]:
        """Run the encoder.

        Returns:
            tuple[dict, dict]: ``encoder_outputs_dict`` (``memory`` (bs,
            sum(HW), dim), ``memory_mask``, ``spatial_shapes``) and
            ``decoder_inputs_dict`` (mask, shapes, level starts, valid
            ratios).
        """
        encoder_inputs_dict, decoder_inputs_dict = self.pre_transformer(
            img_feats, batch_data_samples)
        encoder_outputs_dict = self.forward_encoder(**encoder_inputs_dict)
        return encoder_outputs_dict, decoder_inputs_dict

    def memory_to_feature_maps(self, memory: Tensor,
                               img_feats: Tuple[Tensor]) -> Tuple[Tensor]:
        """Reshape the encoder memory into the input levels and add one
        stride-2 level for the auxiliary heads.

        Args:
            memory (Tensor): (bs, sum(H_l * W_l), dim).
            img_feats (tuple[Tensor]): Neck outputs, giving the level shapes.

        Returns:
            tuple[Tensor]: num_levels + 1 maps of shape (bs, dim, H, W).
        """
        maps = []
        start = 0
        for feat in img_feats:
            batch_size, _, height, width = feat.shape
            end = start + height * width
            # contiguous: the slice-and-transpose view has other strides, and
            # mmcv's RoIAlign reads its input as contiguous memory (with a
            # view it pools the wrong features for every image but the first)
            maps.append(memory[:, start:end].transpose(1, 2).reshape(
                batch_size, -1, height, width).contiguous())
            start = end
        maps.append(self.downsample(maps[-1]))
        return tuple(maps)

    def forward_aux_decoder(self, aux_targets: Dict[str, Tensor],
                            head_idx: int, memory: Tensor,
                            memory_mask: Optional[Tensor],
                            spatial_shapes: Tensor, level_start_index: Tensor,
                            valid_ratios: Tensor) -> Dict:
        """Decode the customized positive queries of one auxiliary head.

        Args:
            aux_targets (dict[str, Tensor]): From
                :meth:`CoDeformableDETRHead.get_aux_targets`: ``coords``
                (bs, Q, 4) normalized (cx, cy, w, h) and ``feats`` (bs, Q,
                dim).
            head_idx (int): Index of the auxiliary head (selects its
                projections).
            memory, memory_mask, spatial_shapes, level_start_index,
                valid_ratios: As in :meth:`forward_decoder`.

        Returns:
            dict: ``hidden_states`` (num_layers, bs, Q, dim) and
            ``references`` (num_layers + 1 tensors of (bs, Q, 4)).
        """
        coords = aux_targets['coords']
        pos_embed = self.get_proposal_pos_embed(
            inverse_sigmoid(coords, self.decoder.inverse_sigmoid_eps))
        pos_trans_out = self.aux_pos_trans_norm[head_idx](
            self.aux_pos_trans[head_idx](pos_embed))
        query_pos, query = torch.split(pos_trans_out, self.embed_dims, dim=2)
        query = query + self.pos_feats_norm[head_idx](
            self.pos_feats_trans[head_idx](aux_targets['feats']))
        query_pos = query_pos + self.head_pos_embed.weight[head_idx]
        return self.forward_decoder(
            query=query,
            query_pos=query_pos,
            memory=memory,
            memory_mask=memory_mask,
            reference_points=coords,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios)

    # ------------------------------------------------------------------
    # training
    def loss(self, batch_inputs: Tensor,
             batch_data_samples: SampleList) -> dict:
        """Losses of the query head, the auxiliary heads and the positive
        queries.

        Keys: those of :class:`DeformableDETRHead` (``loss_cls``,
        ``d{i}.loss_cls``, ``enc_loss_cls``...), ``loss_rpn_cls``/
        ``loss_rpn_bbox``, the RoI and dense head losses with the head index
        appended (``loss_cls0``, ``loss_bbox0``, ``acc0``, ``loss_cls1``,
        ``loss_centerness1``...), and the positive-query losses with the head
        index appended (``loss_cls_aux0``, ``d{i}.loss_iou_aux1``...).
        """
        img_feats = self.extract_feat(batch_inputs)
        encoder_outputs_dict, decoder_inputs_dict = \
            self.forward_encoder_only(img_feats, batch_data_samples)
        tmp_dec_in, head_inputs_dict = self.pre_decoder(
            **encoder_outputs_dict)
        decoder_inputs_dict.update(tmp_dec_in)
        head_inputs_dict.update(self.forward_decoder(**decoder_inputs_dict))
        losses = self.bbox_head.loss(
            **head_inputs_dict, batch_data_samples=batch_data_samples)

        aux_feats = self.memory_to_feature_maps(
            encoder_outputs_dict['memory'], img_feats)
        positive_coords = []
        if len(self.roi_head) > 0:
            if not self.with_rpn:
                raise ValueError('CoDETR: roi_head needs an rpn_head')
            proposal_cfg = self.train_cfg[1].get('rpn_proposal',
                                                 self.test_cfg[1]['rpn'])
            rpn_data_samples = copy.deepcopy(batch_data_samples)
            for data_sample in rpn_data_samples:
                data_sample.gt_instances.labels = torch.zeros_like(
                    data_sample.gt_instances.labels)
            rpn_losses, rpn_results_list = self.rpn_head.loss_and_predict(
                aux_feats, rpn_data_samples, proposal_cfg=proposal_cfg)
            losses.update(rpn_losses)
            for idx, roi_head in enumerate(self.roi_head):
                roi_losses = roi_head.loss(aux_feats,
                                           copy.deepcopy(rpn_results_list),
                                           batch_data_samples)
                positive_coords.append(roi_losses.pop('pos_coords', None))
                losses.update(_with_suffix(roi_losses, idx))
        for idx, head in enumerate(self.aux_bbox_head):
            head_losses = head.loss(aux_feats, batch_data_samples)
            positive_coords.append(head_losses.pop('pos_coords', None))
            losses.update(_with_suffix(head_losses, idx + len(self.roi_head)))

        if self.with_pos_coord:
            batch_img_metas = [
                data_sample.metainfo for data_sample in batch_data_samples
            ]
            for head_idx, pos_coords in enumerate(positive_coords):
                if pos_coords is None:
                    raise ValueError(
                        f'CoDETR: auxiliary head {head_idx} returned no '
                        f'pos_coords; use CoStandardRoIHead / CoATSSHead or '
                        f'set with_pos_coord=False')
                aux_targets = self.bbox_head.get_aux_targets(
                    pos_coords, batch_img_metas, aux_feats)
                aux_outputs = self.forward_aux_decoder(
                    aux_targets, head_idx, encoder_outputs_dict['memory'],
                    decoder_inputs_dict['memory_mask'],
                    decoder_inputs_dict['spatial_shapes'],
                    decoder_inputs_dict['level_start_index'],
                    decoder_inputs_dict['valid_ratios'])
                aux_losses = self.bbox_head.loss_aux(
                    aux_outputs['hidden_states'], aux_outputs['references'],
                    aux_targets, batch_img_metas)
                losses.update(_with_suffix(aux_losses, head_idx))
        return losses

    # ------------------------------------------------------------------
    # testing
    def predict(self,
                batch_inputs: Tensor,
                batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Predict with the module chosen by ``eval_module``: the query head
        (default; top-k over queries x classes, no NMS), a dense auxiliary
        head or the RPN + RoI head (both on the encoder memory)."""
        if self.eval_module == 'detr':
            return super().predict(batch_inputs, batch_data_samples, rescale)
        img_feats = self.extract_feat(batch_inputs)
        encoder_outputs_dict, _ = self.forward_encoder_only(
            img_feats, batch_data_samples)
        aux_feats = self.memory_to_feature_maps(
            encoder_outputs_dict['memory'], img_feats)
        if self.eval_module == 'one-stage':
            if self.eval_index >= len(self.aux_bbox_head):
                raise ValueError(f'CoDETR: eval_index {self.eval_index} but '
                                 f'{len(self.aux_bbox_head)} dense heads')
            results_list = self.aux_bbox_head[self.eval_index].predict(
                aux_feats, batch_data_samples, rescale=rescale)
        else:
            if self.eval_index >= len(self.roi_head) or not self.with_rpn:
                raise ValueError(f'CoDETR: eval_index {self.eval_index} but '
                                 f'{len(self.roi_head)} RoI heads')
            rpn_results_list = self.rpn_head.predict(
                aux_feats, batch_data_samples, rescale=False)
            results_list = self.roi_head[self.eval_index].predict(
                aux_feats,
                rpn_results_list,
                batch_data_samples,
                rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results_list)
