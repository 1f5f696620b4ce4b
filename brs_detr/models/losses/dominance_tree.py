"""Offline two-dimensional dominance sums, the two-condition sums of the RS sorting error.

Points ``j`` carry a position ``pos_j`` in a sequence and a rank ``rank_j`` in a key order (both permutations of
``0..P-1``) and weights ``w_j``. The query of position ``p`` with rank bound ``r`` asks for
``sum_j [pos_j < p] [rank_j < r] w_j``: one query per position, several rank bounds each. For the sorting error
the sequence orders the positives by target and the ranks by logit, so a query is "the positives with a higher
target whose logit lies below a threshold".

Structure (a wavelet tree over the positions, stored level by level): at level ``k`` the points are arranged by
(block of ``2^(L-k)`` consecutive positions, rank): the whole rank order at level 0; each block is split by the
next position bit into its left half (bit 0) and right half (bit 1) for the next level, keeping the rank order (a
stable partition: one cumulative sum of the bits, no sort). A query follows the path of ``p`` down the levels and
keeps ``c``, the number of points of its current block with rank below ``r`` (they are the block's first ``c`` in
this arrangement). Where ``p`` lies in the right half, the block's whole left half lies before ``p``: its points
among those first ``c`` are counted by a prefix count of left-half points, and weighed by a prefix sum of
left-half weights; ``c`` then becomes the count in the half that ``p`` enters. The positions in right halves at a
level form a strided view of the queries, so only they gather weights. The descent stops at blocks of
``leaf_size`` positions: the points of ``p``'s leaf block before ``p`` are left to the caller (a dense evaluation of
a few pairs is cheaper than the last levels).

The paths do not depend on the weights, so they are traced once (:meth:`DominanceTree.trace`) and reused for
several weight columns, including columns computed from the results of an earlier one (the sorting error's
gradient spread depends on the sorting errors).

Cost: ``log2(P / leaf_size)`` levels; per level ``O(P)`` integer work for the arrangement and per rank bound, and
one gather, one cumulative sum and one gather of ``O(P)`` per weight column. No sort, no search, no Python loop
over points. Memory: ``O(P log P)`` int32 (two arrays per level and the traced gather slots).
"""
from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor

#: Devices on which float64 weight columns are summed in pairs as complex128 (MPS has neither).
PAIRED_DEVICES = ('cpu', 'cuda')


@dataclass
class DominancePlan:
    """Traced query paths of :meth:`DominanceTree.trace`.

    Attributes:
        counts (Tensor): Number of points with ``pos < p`` and ``rank < r`` outside the leaf block of ``p``
            (T, P), int64, by query position ``p``.
        slots (list[Tensor]): Per level, where the queries in the blocks' right halves read the prefix sums of
            their block's left half (T, blocks, half), int32: the prefix sums of block ``b`` are row ``b`` of a
            ``(blocks, half + 1)`` table, and a query reads the column of its left-half count.
    """
    counts: Tensor
    slots: List[Tensor]


class DominanceTree:
    """Dominance sums over ``P`` points given by their positions in rank order.

    Args:
        pos_by_rank (Tensor): ``pos_by_rank[r]`` is the position of the point of rank ``r``; a permutation of
            ``0..P-1`` (P,), integer.
        leaf_size (int): A power of two; pairs of points in the same block of ``leaf_size`` positions are not
            summed (the caller handles them).
    """

    def __init__(self, pos_by_rank: Tensor, leaf_size: int = 1) -> None:
        if leaf_size < 1 or leaf_size & (leaf_size - 1):
            raise ValueError(f'DominanceTree: leaf_size must be a power of two, got {leaf_size}')
        num = pos_by_rank.numel()
        device = pos_by_rank.device
        int32 = dict(dtype=torch.int32, device=device)
        self.num = num
        self.bits = max(1, (num - 1).bit_length())  # positions 0..num-1 have `bits` bits
        self.levels = max(0, self.bits - (leaf_size.bit_length() - 1))
        # Buffers are allocated once and reused level by level: fresh large temporaries at every level cost page
        # faults on every call.
        # per level: left-half points in the slots before each slot (num + 1,)
        self._left_before = torch.zeros(self.levels, num + 1, **int32)
        # per level: the points of every block's left half in rank order (blocks, half), padded with `num` (a point
        # of weight 0): the left halves are the blocks' left children, contiguous in the next level's arrangement
        sizes = [self.blocks(level) << (self.bits - 1 - level) for level in range(self.levels)]
        flat = torch.empty(sum(sizes), **int32)
        self._left_points = [points.view(self.blocks(level), -1)
                             for level, points in enumerate(torch.split(flat, sizes))]
        # the arrangements, padded with `num` to whole blocks (level 0 is the longest)
        padded = self.blocks(0) << self.bits
        arrangements = torch.full((2, padded), num, **int32)
        arrangements[0, :num] = pos_by_rank
        slot = torch.arange(num, **int32)
        in_right, half_start, target = torch.empty(3, num, **int32)
        target_long = torch.empty(num, dtype=torch.long, device=device)
        for level in range(self.levels):
            shift = self.bits - 1 - level
            half = 1 << shift
            arrangement, following = arrangements[level % 2], arrangements[(level + 1) % 2]
            current = arrangement[:num]
            torch.bitwise_and(torch.bitwise_right_shift(current, shift, out=in_right), 1, out=in_right)
            left_before = self._left_before[level]
            torch.cumsum(in_right, 0, dtype=torch.int32, out=left_before[1:])
            torch.sub(slot + 1, left_before[1:], out=left_before[1:])  # left-half points up to each slot
            # stable partition of every block: left-half points first, both halves keep the rank order. Every block
            # before the last is full (2h points, h per half), so a block's start has start / 2 left-half points
            # before it, and a point's target is start + (left points before it in the block) in the left half,
            # start + h + (right points before it in the block) in the right half. A block with right-half points
            # has a full left half (the last block too), so both are start / 2 + below + [right] (slot + h - 2 below)
            # with `below` the left-half points before the slot.
            below = left_before[:-1]
            torch.bitwise_left_shift(torch.bitwise_right_shift(slot, shift + 1, out=half_start), shift,
                                     out=half_start)  # start / 2
            torch.add(slot, half, out=target).sub_(below, alpha=2).mul_(in_right).add_(below).add_(half_start)
            following[:num].scatter_(0, target_long.copy_(target), current)
            blocks = self.blocks(level)
            self._left_points[level].copy_(following[:blocks << (shift + 1)].view(blocks, 2, half)[:, 0])

    def blocks(self, level: int) -> int:
        """Blocks of ``2^(bits - level)`` positions covering the positions ``0..P-1``."""
        return -(-self.num >> (self.bits - level))

    def trace(self, ranks: Tensor) -> DominancePlan:
        """Trace the queries of every position ``p`` (prefix ``pos < p``) with the rank bounds ``ranks[:, p]``.

        Args:
            ranks (Tensor): Rank bounds (T, P), integers in ``[0, P]``, by query position.

        Returns:
            DominancePlan: The counts and the gather slots for :meth:`sums`.
        """
        rows = ranks.shape[0]
        num, device = self.num, ranks.device
        int32 = dict(dtype=torch.int32, device=device)
        padded = self.blocks(0) << self.bits  # queries padded to whole top-level blocks
        position = torch.arange(padded, **int32)
        # c: points of the current block with rank < r, in two buffers (this level's and the next). The padding
        # queries (rank bound 0) keep c = 0 inside the last real block; blocks beyond it are cut off level by level
        # (they never hold a real query)
        insides = torch.zeros(2, rows * padded, **int32)  # each level's (rows, size) contiguous in one of them
        insides[0].view(rows, padded)[:, :num] = ranks
        size_before = padded
        count = torch.zeros(rows, padded, **int32)
        half_start, row_start = torch.empty(2, padded, **int32)
        index = torch.empty(rows * padded, **int32)
        # the slots of all levels in one buffer: (rows, blocks, half) per level
        sizes = [rows * (self.blocks(level) << (self.bits - 1 - level)) for level in range(self.levels)]
        slots = list(torch.split(torch.empty(sum(sizes), **int32), sizes))
        for level in range(self.levels):
            shift = self.bits - 1 - level
            half = 1 << shift
            blocks = self.blocks(level)
            size = blocks * 2 * half
            inside = insides[level % 2, :rows * size_before].view(rows, size_before)[:, :size]
            left_below = insides[(level + 1) % 2, :rows * size].view(rows, size)
            size_before = size
            # the block of position p at this level starts at (p >> (shift + 1)) << (shift + 1); half of it: h_start
            h_start = torch.bitwise_left_shift(torch.bitwise_right_shift(position[:size], shift + 1,
                                                                         out=half_start[:size]), shift,
                                               out=half_start[:size])
            idx = torch.add(inside, h_start, alpha=2, out=index[:rows * size].view(rows, size))  # start + c
            torch.index_select(self._left_before[level], 0, idx.view(-1), out=left_below.view(-1))
            left_below.sub_(h_start)
            # the right halves of the blocks: strided views (rows, blocks, half)
            lb_right = left_below.view(rows, blocks, 2, half)[:, :, 1]
            inside_right = inside.view(rows, blocks, 2, half)[:, :, 1]
            count[:, :size].view(rows, blocks, 2, half)[:, :, 1] += lb_right
            # queries in right halves read the prefix sum of their block's left half at its first left_below points:
            # row `block`, column left_below of the (blocks, half + 1) prefix sums of :meth:`sums`: block * (h + 1)
            rows_start = torch.bitwise_right_shift(position[:size], shift + 1, out=row_start[:size]).add_(h_start)
            torch.add(lb_right, rows_start.view(blocks, 2, half)[:, 1], out=slots[level].view(rows, blocks, half))
            lb_right.neg_().add_(inside_right)  # right halves continue with c - left_below, left ones with it
            slots[level] = slots[level].view(rows, blocks, half)
        return DominancePlan(count[:, :num].long(), slots)

    def sums(self, plan: DominancePlan, weights: Tensor) -> Tensor:
        """``sum_j [pos_j < p] [rank_j < r] w_j`` over the points outside the leaf block of ``p``.

        Args:
            plan (DominancePlan): Traced queries (T rows of P).
            weights (Tensor): Weight columns of the points by position (C, P), floating point.

        Returns:
            Tensor: The sums (C, T, P) in the weights' dtype, by query position.
        """
        rows, num = plan.counts.shape
        cols = weights.shape[0]
        out = weights.new_empty(cols, rows, num)
        # float64 columns travel in pairs as the real and imaginary parts of complex128 numbers: complex addition
        # adds the parts separately (bitwise the same sums), and one pass over the levels serves two columns
        paired = weights.dtype == torch.float64 and weights.device.type in PAIRED_DEVICES
        col = 0
        while col < cols:
            if paired and col + 1 < cols:
                both = self._column_sums(plan, torch.complex(weights[col], weights[col + 1]))
                out[col], out[col + 1] = both.real, both.imag
                col += 2
            else:
                out[col] = self._column_sums(plan, weights[col])
                col += 1
        return out

    def _column_sums(self, plan: DominancePlan, weights: Tensor) -> Tensor:
        """:meth:`sums` of one column (P,) (real or complex); (T, P)."""
        rows, num = plan.counts.shape
        out = weights.new_zeros(rows, self.blocks(0) << self.bits)
        source = torch.cat([weights, weights.new_zeros(1)])  # position `num` weighs nothing
        # reused level by level: the prefix-sum table and the values read from it
        table_buffer = weights.new_empty(max((p.numel() + p.shape[0] for p in self._left_points), default=0))
        values_buffer = weights.new_empty(max((s.numel() for s in plan.slots), default=0))
        for left_points, slots in zip(self._left_points, plan.slots):
            blocks, half = left_points.shape
            # exclusive prefix sums of every block's left-half weights in rank order, a zero column first
            table = table_buffer[:blocks * (half + 1)].view(blocks, half + 1)
            table[:, 0] = 0
            torch.cumsum(source.index_select(0, left_points.view(-1)).view(blocks, half), 1, out=table[:, 1:])
            values = torch.index_select(table.view(-1), 0, slots.view(-1), out=values_buffer[:slots.numel()])
            out.narrow(1, 0, blocks * 2 * half).view(rows, blocks, 2, half)[:, :, 1] += values.view(slots.shape)
        return out[:, :num]
