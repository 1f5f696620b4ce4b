"""Sorting and searching primitives of the ranking losses: fast, exact replacements of ``torch.sort`` and
``torch.searchsorted`` for the access patterns of the losses (many queries, sorted keys, float keys).

Each returns exactly what the torch function it replaces returns, for any input (ties, values on break points,
large magnitudes, ``-0.0``); only the cost differs:

* :func:`sort_ascending`, :func:`argsort_descending`: torch sorts floating-point tensors on the CPU with a
  comparison sort but integer tensors of at least 32K elements with a radix sort, about 4x faster. A finite float
  maps to an integer with the same order (its IEEE bit pattern, with the magnitude bits of negative numbers
  flipped), so sorting the integers gives the float order. Stable.
* :class:`SortedIndex` (and the one-off :func:`count_sorted`): ``torch.searchsorted(breaks, values, right=...)``
  costs ``log2 K`` dependent random reads per value. Here a uniform grid over the break points' range answers most
  values with one table read and a couple of comparisons with the break points next to the guess; values in the few
  cells that hold more break points fall back to ``searchsorted``.
"""
from typing import Tuple

import torch
from torch import Tensor

#: Cells of the lookup grid per break point (more cells: fewer comparisons, a larger table).
GRID_CELLS_PER_BREAK = 8
#: The grid has at most this many cells per query (its construction costs O(cells); few queries, few cells).
GRID_MAX_CELLS_PER_QUERY = 2
#: Largest lookup grid (int32 entries).
GRID_MAX_CELLS = 1 << 21
#: Below this many queries a plain ``searchsorted`` is cheaper than building the grid.
GRID_MIN_QUERIES = 1 << 12
#: Comparisons with the break points after the table read; values in cells with more break points fall back to
#: ``searchsorted``.
GRID_REFINE_STEPS = 2
#: Bits of a table entry that hold the number of break points in the cell (capped).
_COUNT_BITS = 3

#: Below this many elements torch's CPU sort of integer keys is not a radix sort; floats are sorted directly.
RADIX_SORT_MIN_ELEMENTS = 1 << 15


def _orderable_int(x: Tensor) -> Tensor:
    """Integers with the order of the finite floats ``x``: IEEE bits, magnitude bits flipped when negative."""
    x = x + 0.0  # -0.0 -> +0.0: torch's float sort treats them as equal, so must the integers
    if x.dtype == torch.float64:
        bits, mask = x.view(torch.int64), 0x7FFFFFFFFFFFFFFF
    else:
        bits, mask = x.float().view(torch.int32), 0x7FFFFFFF  # float16/bfloat16 widen exactly
    return torch.where(bits < 0, bits ^ mask, bits)


def sort_ascending(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``torch.sort(x, stable=True)`` of finite floats: values and indices, the same result, faster for large x.

    Args:
        x (Tensor): Finite floats (N,).

    Returns:
        tuple[Tensor, Tensor]: Sorted values (N,) and int64 indices (N,) with ``values = x[indices]``.
    """
    if x.numel() < RADIX_SORT_MIN_ELEMENTS or x.device.type != 'cpu':
        return torch.sort(x, stable=True)
    order = torch.sort(_orderable_int(x), stable=True).indices
    return x.index_select(0, order), order


def argsort_descending(x: Tensor) -> Tensor:
    """``torch.sort(x, descending=True, stable=True).indices`` of finite floats (ties keep their order)."""
    if x.numel() < RADIX_SORT_MIN_ELEMENTS or x.device.type != 'cpu':
        return torch.sort(x, descending=True, stable=True).indices
    return torch.sort(-_orderable_int(x), stable=True).indices  # no overflow: |key| < 2^63 - 1


class SortedIndex:
    """Counts of sorted break points below query values: ``torch.searchsorted(breaks, values, right=...)``,
    identical for any input, faster for many values.

    The grid's cell function ``c(x) = floor(clamp((x - lo) * scale, 0, cells - 1))`` is monotone (each rounded
    float operation is), so break points in cells below a value's cell are smaller than the value and those in cells
    above are larger: only break points in the value's own cell need comparing. A table built from the cells of the
    break points (a ``bincount`` and a cumulative sum) holds, per cell, the number of break points in lower cells
    and how many lie in the cell; up to :data:`GRID_REFINE_STEPS` comparisons with the next break point resolve the
    value; values in cells with more break points (rare, or ties) go through ``searchsorted``. Nothing unverified is
    returned, so rounding cannot change the result. The table is built on the first large query and reused.

    Args:
        breaks (Tensor): Break points sorted ascending (K,), finite.
    """

    def __init__(self, breaks: Tensor) -> None:
        self.breaks = breaks
        self._table = None

    def _build(self, num_values: int) -> None:
        breaks = self.breaks
        num = breaks.numel()
        cells = min(GRID_CELLS_PER_BREAK * num, GRID_MAX_CELLS_PER_QUERY * num_values, GRID_MAX_CELLS)
        lo = breaks[0]
        scale = cells / (breaks[-1] - lo)
        # all break points equal (or a range that overflows): one cell, so every value falls back to searchsorted
        scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
        self._cells, self._lo, self._scale = cells, lo, scale
        in_cell = torch.bincount(self._cell(breaks), minlength=cells)
        below = in_cell.cumsum(0) - in_cell  # break points in lower cells
        cap = (1 << _COUNT_BITS) - 1
        self._table = (below.to(torch.int32) << _COUNT_BITS) | in_cell.clamp(max=cap).to(torch.int32)
        self._padded = torch.cat([breaks, breaks.new_full((1,), float('inf'))])

    def _cell(self, x: Tensor) -> Tensor:
        # the same operations for break points and values (count): the cell function must be one monotone function
        return torch.sub(x, self._lo).mul_(self._scale).clamp_(0, self._cells - 1).to(torch.int32)

    def count(self, values: Tensor, right: bool = True, out_int32: bool = False) -> Tensor:
        """How many break points are ``<= value`` (``right``) or ``< value``.

        Args:
            values (Tensor): Query values (N,), the break points' dtype, finite.
            right (bool): Count break points ``<= value`` (True) or ``< value`` (False).
            out_int32 (bool): Return int32 instead of int64 counts.

        Returns:
            Tensor: Counts (N,) in ``[0, K]``.
        """
        breaks = self.breaks
        if values.numel() < GRID_MIN_QUERIES or breaks.numel() == 0:
            return torch.searchsorted(breaks, values, right=right, out_int32=out_int32)
        if self._table is None:
            self._build(values.numel())
        # few large temporaries, reused in place (each fresh one can cost page faults on every call)
        nxt = torch.sub(values, self._lo).mul_(self._scale).clamp_(0, self._cells - 1)
        cell = nxt.to(torch.int32)
        count = self._table.index_select(0, cell)  # the table entries, shifted below
        cap = (1 << _COUNT_BITS) - 1
        unresolved = torch.nonzero(torch.bitwise_and(count, cap, out=cell) > GRID_REFINE_STEPS).squeeze(1)
        count >>= _COUNT_BITS
        step = torch.empty(values.shape, dtype=torch.bool, device=values.device)
        compare = torch.le if right else torch.lt
        for _ in range(GRID_REFINE_STEPS):
            # a break point of a higher cell is larger than the value, so this never leaves the value's cell
            compare(torch.index_select(self._padded, 0, count, out=nxt), values, out=step)
            count += step
        if unresolved.numel():
            count.index_put_((unresolved,), torch.searchsorted(breaks, values.index_select(0, unresolved),
                                                               right=right).to(count.dtype))
        return count if out_int32 else count.long()


def count_sorted(breaks: Tensor, values: Tensor, right: bool = True, out_int32: bool = False) -> Tensor:
    """``torch.searchsorted(breaks, values, right=right)`` through a :class:`SortedIndex` (one-off queries)."""
    return SortedIndex(breaks).count(values, right=right, out_int32=out_int32)
