"""Deformable-DETR encoder with activation checkpointing that needs no fairscale and suits DDP."""
from mmengine.model import ModuleList
from torch import Tensor

from mmdet.models.layers import DeformableDetrTransformerEncoder, DeformableDetrTransformerEncoderLayer
from mmdet.utils import ConfigType, OptConfigType

from .activation_checkpoint import check_num_cp, run_layer


class CoDeformableDetrTransformerEncoder(DeformableDetrTransformerEncoder):
    """Encoder of Co-Deformable-DETR: :class:`DeformableDetrTransformerEncoder` with its ``num_cp`` implemented by
    non-reentrant ``torch.utils.checkpoint``.

    What changes and why: mmdet's ``num_cp`` wraps the first ``num_cp`` layers with fairscale's
    ``checkpoint_wrapper`` (an extra dependency, reentrant checkpointing, which breaks DDP when a module runs twice
    per iteration). Here the same first ``num_cp`` layers recompute their activations in backward through
    :func:`~.activation_checkpoint.run_layer`; the layers are not wrapped, so parameter names and checkpoints are
    unchanged, and the result is exactly that without checkpointing. Memory: each checkpointed layer keeps only its
    input instead of its attention and FFN activations (the encoder runs over every feature location, so this is
    most of the transformer's activation memory at 1333x800).

    Args:
        num_layers (int): Number of encoder layers.
        layer_cfg (dict): Config of every layer.
        num_cp (int): Number of leading layers to checkpoint; ``-1`` (default) or ``0`` for none, ``num_layers`` for
            all (the original Co-DETR's ``with_cp=6``).
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self, num_layers: int, layer_cfg: ConfigType, num_cp: int = -1,
                 init_cfg: OptConfigType = None) -> None:
        check_num_cp(num_cp, num_layers, type(self).__name__)  # before mmdet's bare assert
        super().__init__(num_layers=num_layers, layer_cfg=layer_cfg, num_cp=num_cp, init_cfg=init_cfg)

    def _init_layers(self) -> None:
        """The encoder layers, unwrapped; ``num_cp`` is applied in :meth:`forward`."""
        self.num_cp = max(self.num_cp, 0)
        self.layers = ModuleList([DeformableDetrTransformerEncoderLayer(**self.layer_cfg)
                                  for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor, **kwargs) -> Tensor:
        """:meth:`DeformableDetrTransformerEncoder.forward`, the first ``num_cp`` layers checkpointed.

        Args:
            query (Tensor): Flattened features (bs, num_value, dim).
            query_pos (Tensor): Their positional encodings (bs, num_value, dim).
            key_padding_mask (Tensor): (bs, num_value), True at padding.
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            level_start_index (Tensor): (num_levels,).
            valid_ratios (Tensor): (bs, num_levels, 2).

        Returns:
            Tensor: The memory (bs, num_value, dim).
        """
        reference_points = self.get_encoder_reference_points(spatial_shapes, valid_ratios, device=query.device)
        for index, layer in enumerate(self.layers):
            query = run_layer(layer, index < self.num_cp, query=query, query_pos=query_pos,
                              key_padding_mask=key_padding_mask, spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios,
                              reference_points=reference_points, **kwargs)
        return query
