"""Deformable-DETR decoder with the optional *look forward twice* of DINO."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mmdet.models.layers import DeformableDetrTransformerDecoder
from mmdet.models.layers.transformer import inverse_sigmoid

from .activation_checkpoint import check_num_cp, run_layer


class CoDeformableDetrTransformerDecoder(DeformableDetrTransformerDecoder):
    """Decoder of Co-Deformable-DETR.

    Identical to :class:`mmdet.models.layers.DeformableDetrTransformerDecoder`
    except for *look forward twice* (DINO, Sec. 3.5; used by Co-DETR): with
    ``look_forward_twice=True`` the intermediate reference returned for layer
    ``l`` is the refined box *before* detaching, so that the box loss of layer
    ``l + 1`` (whose prediction is ``reg_branch(h) + inverse_sigmoid(ref_l)``)
    also sends gradients into the regression branch of layer ``l``. The
    reference used as input of the next layer stays detached, as in
    Deformable-DETR.

    Added: ``num_cp`` activation checkpointing of the first layers, as
    :class:`CoDeformableDetrTransformerEncoder` does for the encoder (exact;
    the positive-query passes run the same checkpointed layers).

    Args:
        look_forward_twice (bool): Return the undetached refined references.
            Defaults to True.
        inverse_sigmoid_eps (float): ``eps`` of the inverse sigmoid used to
            refine the references. Defaults to 1e-5 (Deformable-DETR).
        num_cp (int): Number of leading layers whose activations are
            recomputed in backward; -1 (default) or 0 for none.
        **kwargs: Arguments of :class:`DeformableDetrTransformerDecoder`
            (``num_layers``, ``layer_cfg``, ``return_intermediate``...).
    """

    def __init__(self,
                 *args,
                 look_forward_twice: bool = True,
                 inverse_sigmoid_eps: float = 1e-5,
                 num_cp: int = -1,
                 **kwargs) -> None:
        self.look_forward_twice = look_forward_twice
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        super().__init__(*args, **kwargs)
        self.num_cp = check_num_cp(num_cp, self.num_layers,
                                   type(self).__name__)

    def forward(self,
                query: Tensor,
                query_pos: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor],
                reference_points: Tensor,
                spatial_shapes: Tensor,
                level_start_index: Tensor,
                valid_ratios: Tensor,
                reg_branches: Optional[nn.ModuleList] = None,
                **kwargs) -> Tuple[Tensor, Tensor]:
        """Run the decoder layers.

        Args:
            query (Tensor): Content queries, (bs, num_queries, dim).
            query_pos (Tensor): Positional queries, (bs, num_queries, dim).
            value (Tensor): Encoder memory, (bs, num_value, dim).
            key_padding_mask (Tensor | None): Padding mask of the memory,
                (bs, num_value), True at padded positions.
            reference_points (Tensor): Initial references in [0, 1],
                (bs, num_queries, 4) as (cx, cy, w, h) or (bs, num_queries, 2).
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            level_start_index (Tensor): (num_levels, ).
            valid_ratios (Tensor): (bs, num_levels, 2).
            reg_branches (nn.ModuleList, optional): Box refinement branches,
                one per layer. Defaults to None (no refinement).
            **kwargs: Passed to every layer (e.g. ``self_attn_mask``).

        Returns:
            tuple[Tensor, Tensor]: With ``return_intermediate`` the hidden
            states (num_layers, bs, num_queries, dim) and the references after
            each layer (num_layers, bs, num_queries, 4); otherwise those of the
            last layer only.
        """
        output = query
        intermediate = []
        intermediate_reference_points = []
        for layer_id, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                reference_points_input = reference_points[:, :, None] * \
                    torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                reference_points_input = \
                    reference_points[:, :, None] * valid_ratios[:, None]
            output = run_layer(
                layer,
                layer_id < self.num_cp,
                query=output,
                query_pos=query_pos,
                value=value,
                key_padding_mask=key_padding_mask,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                valid_ratios=valid_ratios,
                reference_points=reference_points_input,
                **kwargs)

            new_reference_points = reference_points
            if reg_branches is not None:
                delta = reg_branches[layer_id](output)
                unact = inverse_sigmoid(reference_points,
                                        self.inverse_sigmoid_eps)
                if reference_points.shape[-1] == 4:
                    new_reference_points = (delta + unact).sigmoid()
                else:
                    new_reference_points = torch.cat(
                        [delta[..., :2] + unact, delta[..., 2:]],
                        dim=-1).sigmoid()
                reference_points = new_reference_points.detach()

            if self.return_intermediate:
                intermediate.append(output)
                intermediate_reference_points.append(
                    new_reference_points
                    if self.look_forward_twice else reference_points)

        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(
                intermediate_reference_points)
        return output, reference_points
