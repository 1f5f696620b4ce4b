"""mmdet's ``SingleRoIExtractor`` without its data-dependent branch, for export.

``SingleRoIExtractor.forward`` assigns each RoI to an FPN level (``map_roi_levels``: ``floor(log2(sqrt(area) /
finest_scale))``, clamped) and pools each level's RoIs, but only ``if inds.numel() > 0``: tracing evaluates that
branch once, so a level that got no RoI in the export example is left out of the graph for good, and the RoIs that
land on it at run time keep all-zero features. :func:`single_roi_extractor_forward` is the same computation with
every level always pooled (a level without RoIs pools an empty set) and the results scattered into place by index,
so the graph assigns levels with tensor operations for any input. In PyTorch both give the same features (the
equality is tested in float64); mmdet's ``else`` branch only adds zero to keep unused parameters in the autograd
graph, which inference does not need.

:func:`exportable_roi_extractor` swaps it in for the duration of an export.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple
from unittest import mock

from torch import Tensor

from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor


def single_roi_extractor_forward(self: SingleRoIExtractor, feats: Tuple[Tensor, ...], rois: Tensor,
                                 roi_scale_factor: Optional[float] = None) -> Tensor:
    """``SingleRoIExtractor.forward`` with every level pooled, whatever the number of RoIs assigned to it.

    Args:
        self (SingleRoIExtractor): The extractor.
        feats (tuple[Tensor]): Feature maps, each (N, C, H_l, W_l).
        rois (Tensor): (num_rois, 5): batch index, x1 y1 x2 y2 in input pixels.
        roi_scale_factor (float, optional): Scale of the RoIs around their centre before pooling (after the
            level assignment, as mmdet).

    Returns:
        Tensor: (num_rois, out_channels, out_h, out_w) RoI features.
    """
    rois = rois.type_as(feats[0])
    num_levels = len(feats)
    if num_levels == 1:
        return self.roi_layers[0](feats[0], rois)
    target_levels = self.map_roi_levels(rois, num_levels)
    if roi_scale_factor is not None:
        rois = self.roi_rescale(rois, roi_scale_factor)
    roi_feats = feats[0].new_zeros(rois.size(0), self.out_channels, *self.roi_layers[0].output_size)
    for level in range(num_levels):
        indices = (target_levels == level).nonzero(as_tuple=False).squeeze(1)
        roi_feats = roi_feats.index_put((indices, ), self.roi_layers[level](feats[level], rois[indices]))
    return roi_feats


@contextlib.contextmanager
def exportable_roi_extractor() -> Iterator[None]:
    """Within the block, :class:`SingleRoIExtractor` (and the subclasses that keep its ``forward``) compute with
    :func:`single_roi_extractor_forward`."""
    with mock.patch.object(SingleRoIExtractor, 'forward', single_roi_extractor_forward):
        yield
