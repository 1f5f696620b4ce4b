"""Multi-scale deformable attention in plain tensor operations, traceable with dynamic feature-map sizes.

mmcv's ``MultiScaleDeformableAttention`` runs its compiled CUDA kernel on GPU (no ONNX exporter) and
``multi_scale_deformable_attn_pytorch`` on CPU. The latter splits the values with Python integers
(``value.split([H * W for H, W in spatial_shapes])``), which the ONNX tracer records as constants: the exported
graph would only accept the feature-map sizes of the example image. :func:`multi_scale_deformable_attn_tensor`
computes the same thing (Deformable DETR, Zhu et al. 2021, Eq. 3: per head, level and point, bilinear sampling at
``reference + offset`` weighted by the attention weights) with every level bound taken from tensors, so the
exported graph follows the input size. ``tests/test_deployment.py`` checks it against mmcv's op (float64) and a
brute-force bilinear reference before it is used for export.

:func:`tensor_msda` swaps it into mmcv's module for the duration of an export.
"""
from __future__ import annotations

import contextlib
from typing import Iterator
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor


def multi_scale_deformable_attn_tensor(value: Tensor, value_spatial_shapes: Tensor, sampling_locations: Tensor,
                                       attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention (the signature of mmcv's ``multi_scale_deformable_attn_pytorch``).

    Args:
        value (Tensor): (bs, num_keys, num_heads, head_dims), the levels flattened one after the other.
        value_spatial_shapes (Tensor): (num_levels, 2) long, (H, W) of each level; ``sum(H * W) == num_keys``.
        sampling_locations (Tensor): (bs, num_queries, num_heads, num_levels, num_points, 2), normalized (x, y) in
            [0, 1] (top-left corner of the first pixel to bottom-right corner of the last).
        attention_weights (Tensor): (bs, num_queries, num_heads, num_levels, num_points).

    Returns:
        Tensor: (bs, num_queries, num_heads * head_dims).
    """
    bs, _, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    level_sizes = value_spatial_shapes[:, 0] * value_spatial_shapes[:, 1]
    level_ends = level_sizes.cumsum(0)
    level_starts = level_ends - level_sizes
    # grid_sample's coordinates: -1 and 1 are the outer edges of the border pixels (align_corners=False)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level in range(num_levels):
        height, width = value_spatial_shapes[level, 0], value_spatial_shapes[level, 1]
        # (bs, H*W, heads, dims) -> (bs * heads, dims, H, W)
        level_value = value[:, level_starts[level]:level_ends[level]].flatten(2).transpose(1, 2).reshape(
            bs * num_heads, head_dims, height, width)
        # (bs, queries, heads, points, 2) -> (bs * heads, queries, points, 2)
        level_grid = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (bs * heads, dims, queries, points)
        sampled.append(
            F.grid_sample(level_value, level_grid, mode='bilinear', padding_mode='zeros', align_corners=False))
    # (bs, queries, heads, levels, points) -> (bs * heads, 1, queries, levels * points)
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (bs * heads, dims, queries)
    return output.view(bs, num_heads * head_dims, num_queries).transpose(1, 2).contiguous()


@contextlib.contextmanager
def tensor_msda() -> Iterator[None]:
    """Within the block, mmcv's ``MultiScaleDeformableAttention`` computes with
    :func:`multi_scale_deformable_attn_tensor` on every device (its CUDA kernel has no ONNX exporter).

    Only the sampling core changes; the projections of the module (value, offsets, weights, output) are its own.
    """
    from mmcv.ops import multi_scale_deform_attn as msda_module

    with mock.patch.object(msda_module, 'multi_scale_deformable_attn_pytorch', multi_scale_deformable_attn_tensor), \
            mock.patch.object(msda_module, 'IS_CUDA_AVAILABLE', False), \
            mock.patch.object(msda_module, 'IS_MLU_AVAILABLE', False):
        yield
