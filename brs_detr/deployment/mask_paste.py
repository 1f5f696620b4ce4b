"""Paste the fixed-size masks of a mask head into the image, in tensor operations (for the exported graph).

mmdet's ``FCNMaskHead._predict_by_feat_single`` pastes on the CPU one mask at a time, inside its box widened by one
pixel (``_do_paste_mask`` with ``skip_empty=True``): a Python loop over the detections and a crop whose bounds are
Python integers, which tracing would fix to the export example. :func:`paste_masks` computes the same pixels for all
detections at once: each mask is sampled at every image pixel centre (``grid_sample`` with the box mapped to
[-1, 1], as ``_do_paste_mask``), then everything outside the box widened by one pixel (floor/ceil, clipped to the
image, as mmdet's crop) is set to zero, and the result is thresholded. Memory: (N, H, W) floats and an (N, H, W, 2)
sampling grid for N detections in an H x W image (mmdet's GPU path needs the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: How far beyond its box mmdet's CPU paste writes a mask (``_do_paste_mask``: ``floor(x0) - 1`` to
#: ``ceil(x1) + 1``), in pixels.
PASTE_MARGIN = 1


def _pixel_grid(starts: Tensor, ends: Tensor, size: Tensor) -> Tensor:
    """(N, size) normalized positions of the pixel centres ``0.5, 1.5, ...`` in ``[starts, ends]`` (-1 to 1).

    A zero-size box gives infinities, which mmdet replaces by 0; so does this.
    """
    centres = torch.arange(size, device=starts.device).to(torch.float32) + 0.5
    grid = (centres[None, :] - starts[:, None]) / (ends[:, None] - starts[:, None]) * 2 - 1
    return torch.where(torch.isinf(grid), torch.zeros_like(grid), grid)


def _inside_crop(starts: Tensor, ends: Tensor, size: Tensor) -> Tensor:
    """(N, size) bool: the pixels mmdet's paste writes, ``max(floor(start) - 1, 0) <= i < min(ceil(end) + 1, size)``."""
    index = torch.arange(size, device=starts.device)
    first = torch.clamp(starts.floor() - PASTE_MARGIN, min=0).to(torch.int32)
    stop = torch.minimum(ends.ceil() + PASTE_MARGIN, size.to(ends.dtype)).to(torch.int32)
    return (index[None, :] >= first[:, None]) & (index[None, :] < stop[:, None])


def paste_masks(mask_probs: Tensor, boxes: Tensor, height: Tensor, width: Tensor, threshold: float) -> Tensor:
    """Binary image masks of ``mask_probs`` pasted into their ``boxes``, as mmdet's CPU ``predict`` gives them.

    Args:
        mask_probs (Tensor): (N, h, w) mask probabilities (after the sigmoid) of each detection's class.
        boxes (Tensor): (N, 4) x1 y1 x2 y2 in the pixels of the output image.
        height (Tensor): 0-dim long, the output image height.
        width (Tensor): 0-dim long, the output image width.
        threshold (float): ``mask_thr_binary``: a pixel is in the mask when its probability is ``>=`` it.

    Returns:
        Tensor: (N, height, width) bool.
    """
    x0, y0, x1, y1 = boxes.float().unbind(1)
    grid_x, grid_y = _pixel_grid(x0, x1, width), _pixel_grid(y0, y1, height)
    count = mask_probs.size(0)
    grid = torch.stack([grid_x[:, None, :].expand(count, grid_y.size(1), grid_x.size(1)),
                        grid_y[:, :, None].expand(count, grid_y.size(1), grid_x.size(1))], dim=3)
    pasted = F.grid_sample(mask_probs[:, None].float(), grid, align_corners=False)[:, 0]
    inside = _inside_crop(y0, y1, height)[:, :, None] & _inside_crop(x0, x1, width)[:, None, :]
    return (pasted >= threshold) & inside
