"""The assignment an auxiliary head hands to the query head of Co-DETR."""
from typing import NamedTuple, Optional

from torch import Tensor


class PositiveCoords(NamedTuple):
    """Anchors/proposals of an auxiliary head with their assignment.

    Attributes:
        coords (Tensor): (bs, N, 4) anchors or proposals, absolute
            (x1, y1, x2, y2) in the input image.
        labels (Tensor): (bs, N) assigned class, ``num_classes`` for
            background.
        targets (Tensor): (bs, N, 4) assigned ground-truth boxes, absolute
            (x1, y1, x2, y2) (zeros for background).
        feats (Tensor, optional): (bs, N, C) features of each coordinate
            (pooled RoI features of the RoI head). None for dense heads: the
            query head then takes the features at the anchor locations.
        head_type (str): ``'dense'`` or ``'rcnn'``.
    """
    coords: Tensor
    labels: Tensor
    targets: Tensor
    feats: Optional[Tensor]
    head_type: str
