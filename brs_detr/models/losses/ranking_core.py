"""Vectorised core of the ranking-based losses (AP, RS and their bucketed versions).

Notation (BRS paper, Yavuz et al. ECCV 2024): ``s`` are logits, ``P`` the positives, ``N`` the negatives,
``x_ij = s_j - s_i`` and ``H`` the smoothed step of Eq. 2, ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``
(the hard step ``[x >= 0]`` when ``delta == 0``). For a positive ``i``:

* ``rank+(i) = sum_{j in P} H(x_ij)``, ``N_FP(i) = sum_{n in N} H(x_in)``, ``l_R(i) = N_FP(i) / rank(i)``.
* sorting error (RS, Eq. 10-11): ``l_S(i) = c(i) - tau(i)`` with ``c(i) = sum_j H(x_ij)(1 - t_j) / rank+(i)``
  and ``tau(i)`` the same sum restricted to positives with ``t_j >= t_i``, normalised by its own H-sum.

Gradients follow the identity update (Eq. 7-8): the positive ``i`` receives ``-l(i)`` and the error is spread
over the examples ranked above it with the ranking / sorting pmfs; everything is divided by ``|P|``.

How this is made fast (no Python loop over positives, negatives or buckets, no full sort of all logits):

* ``H`` is piecewise linear, so any weighted sum ``sum_j w_j H(v_j - q)`` over keys ``v`` sorted ascending is
  read off prefix sums of ``w`` and ``w * v`` and the window ends ``q -+ delta`` among the keys
  (:func:`step_sums`). Window ends are counted with :class:`~.sorted_search.SortedIndex`, an exact grid lookup
  that replaces ``searchsorted``; the positives' own windows are counted once (:class:`PositiveWindows`) and serve
  ``rank+``, the sorting error's unrestricted sums and its thresholds.
* Negatives are aggregated into intervals of the real line without sorting them: every logit gets an interval
  index (its count of break points below it) and a slot (its interval if it is a relevant negative, else a
  sink); interval sizes and sums are two ``bincount`` calls over all logits, and the negatives' gradients one
  gather from a per-interval table (:class:`NegativeRanker`).

  - Bucketed losses (BRS, BAP, Sec. 4.1): the break points are the positive logits, giving the ``|P| + 1``
    buckets of Eq. 12 represented by their mean logit (the prototype).
  - Exact losses: the break points are ``s_i - delta`` and ``s_i + delta`` of every positive. Between two
    consecutive break points ``H(n - s_i)`` is linear in ``n`` for every positive, so the interval mean
    reproduces the exact ``N_FP`` with no approximation; each negative's gradient is evaluated at its own
    logit. Both cost ``O(M)`` elementwise work plus ``O(P)`` per interval table.
  - Pairwise: the textbook ``O(|P| |N|)`` computation in bounded-memory blocks (the cost profile of the
    published AP/RS losses), kept as a reference implementation and for speed comparisons.

* The sorting error needs sums with two conditions (target order and logit relation): offline dominance sums over
  the positives, ``O(P log P)`` with a level-by-level wavelet tree (:mod:`.dominance_tree`), or ``O(P^2)`` in
  bounded row blocks (small ``P``, ``method='pairwise'``).

Ties: a negative whose logit equals a positive logit belongs to the bucket *above* that positive (it is
counted as ranked above it, consistent with ``H(0) = 1`` for ``delta = 0``), which makes Theorem 1 exact.
"""
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .dominance_tree import DominanceTree
from .sorted_search import SortedIndex, argsort_descending, sort_ascending

#: Aggregation strategies for the negatives.
NEGATIVE_METHODS = ('bucketed', 'exact', 'pairwise')
#: Positions per leaf block of the sorting error's dominance tree: pairs inside a leaf block are evaluated densely
#: (``P * SORT_LEAF_SIZE`` step evaluations), which is cheaper than the tree's last ``log2(SORT_LEAF_SIZE)`` levels.
SORT_LEAF_SIZE = 32


def smoothed_step(x: Tensor, delta: float) -> Tensor:
    """Smoothed step function ``H`` of Eq. 2.

    Args:
        x (Tensor): Difference transforms ``x_ij = s_j - s_i`` of any shape.
        delta (float): Half width of the linear region; ``0`` gives the hard step ``[x >= 0]``.

    Returns:
        Tensor: ``H(x)``, same shape and dtype as ``x``.
    """
    if delta == 0:
        return (x >= 0).to(x.dtype)
    return (x / (2 * delta) + 0.5).clamp(0, 1)


def _prefix(values: Tensor) -> Tensor:
    """Cumulative sum with a leading zero: ``out[k] = sum(values[:k])``, shape ``(K + 1,)``."""
    out = values.new_zeros(values.numel() + 1)
    torch.cumsum(values, 0, out=out[1:])
    return out


def _window_sums(cum_w: Tensor, cum_wv: Tensor, lo: Tensor, hi: Tensor, queries: Tensor, delta: float) -> Tensor:
    """``sum_{k in [lo, hi)} w_k H(+-(v_k - q))`` of keys inside the linear window, from prefix sums.

    Upper direction ``H(v - q)``; the lower one is ``(window weight) - (upper)``. Index tensors are gathered from
    the prefix sums ``cum_w`` / ``cum_wv`` (K + 1,).
    """
    win_w = cum_w.index_select(0, hi) - cum_w.index_select(0, lo)
    win_wv = cum_wv.index_select(0, hi) - cum_wv.index_select(0, lo)
    return (win_wv - queries * win_w) / (2 * delta) + 0.5 * win_w


@dataclass
class SortedKeys:
    """Keys sorted ascending with prefix sums of their weights, for :func:`step_sums`.

    Attributes:
        keys (Tensor): Sorted keys ``v``, shape (K,).
        cum_w (Tensor): Prefix sums of the weights, shape (K + 1,).
        cum_wv (Tensor): Prefix sums of ``weights * keys``, shape (K + 1,).
        index (SortedIndex): Counts of keys below query values.
    """
    keys: Tensor
    cum_w: Tensor
    cum_wv: Tensor
    index: SortedIndex

    @classmethod
    def build(cls, keys: Tensor, weights: Tensor, index: Optional[SortedIndex] = None) -> 'SortedKeys':
        """Build from keys that are already sorted ascending and their weights (both shape (K,)); ``index`` reuses
        the lookup of the same keys."""
        return cls(keys, _prefix(weights), _prefix(weights * keys), index or SortedIndex(keys))


def step_sums(table: SortedKeys, queries: Tensor, delta: float, upper: bool) -> Tensor:
    """Weighted sums of the smoothed step against sorted keys, in ``O(1)`` per query after the lookup.

    With ``upper=True`` returns ``sum_j w_j H(v_j - q)`` (how much weight lies above each query ``q``);
    with ``upper=False`` returns ``sum_j w_j H(q - v_j)`` (how much lies below it).

    Args:
        table (SortedKeys): Sorted keys ``v`` (K,) with the prefix sums of their weights.
        queries (Tensor): Query values ``q``, shape (Q,), same dtype as the keys.
        delta (float): Smoothing of ``H``.
        upper (bool): Direction of the comparison, see above.

    Returns:
        Tensor: The sums, shape (Q,).
    """
    if delta == 0:
        # upper: keys >= q, counted from #(keys < q); lower: keys <= q
        return step_sums_in_window(table, queries, delta, upper, table.index.count(queries, right=not upper))
    # keys[:lo] <= q - delta (H(v - q) = 0), keys[hi:] > q + delta (H(v - q) = 1); the window between is linear.
    # H is continuous, so on which side a key equal to a window end falls does not matter.
    return step_sums_in_window(table, queries, delta, upper, table.index.count(queries - delta, right=True),
                               table.index.count(queries + delta, right=True))


def step_sums_in_window(table: SortedKeys, queries: Tensor, delta: float, upper: bool, lo: Tensor,
                        hi: Optional[Tensor] = None) -> Tensor:
    """:func:`step_sums` with the window ends already counted.

    Args:
        table (SortedKeys): Sorted keys with prefix sums.
        queries (Tensor): Query values (Q,).
        delta (float): Smoothing of ``H``.
        upper (bool): Direction, see :func:`step_sums`.
        lo (Tensor): ``delta > 0``: number of keys ``<= q - delta``; ``delta = 0``: number of keys ``< q`` (upper)
            or ``<= q`` (lower).
        hi (Tensor, optional): ``delta > 0``: number of keys ``<= q + delta``.

    Returns:
        Tensor: The sums (Q,).
    """
    cum_w = table.cum_w
    total = cum_w[-1]
    if delta == 0:
        return total - cum_w.index_select(0, lo) if upper else cum_w.index_select(0, lo)
    window = _window_sums(cum_w, table.cum_wv, lo, hi, queries, delta)
    if upper:
        return (total - cum_w.index_select(0, hi)) + window
    return cum_w.index_select(0, hi) - window


class PositiveWindows:
    """The positive logits sorted ascending and their smoothing windows among themselves.

    For ``delta > 0``, ``lo_i = #{j: v_j <= v_i - delta}`` and ``hi_i = #{j: v_j <= v_i + delta}``: positives of
    rank below ``lo_i`` have ``H(v_j - v_i) = 0``, from ``hi_i`` on ``H = 1``, linear between. For ``delta = 0``,
    ``lo_i = #{j: v_j < v_i}`` and ``hi_i = #{j: v_j <= v_i}`` (the ends of ``i``'s group of tied logits). The
    counts serve ``rank+``, the unrestricted sums of the sorting error and its thresholds.

    Args:
        keys (Tensor): Positive logits sorted ascending (P,), accumulation dtype.
        delta (float): Smoothing of ``H``.
    """

    def __init__(self, keys: Tensor, delta: float) -> None:
        self.keys, self.delta = keys, delta
        self.index = index = SortedIndex(keys)
        if delta == 0:
            self.lo, self.hi = index.count(keys, right=False), index.count(keys, right=True)
        else:
            self.lo, self.hi = index.count(keys - delta, right=True), index.count(keys + delta, right=True)
        self._cum_v = _prefix(keys)

    def upper_sums(self, weights: Optional[Tensor] = None) -> Tensor:
        """``sum_j w_j H(v_j - v_i)`` for every positive (ascending order); ``weights=None`` gives ``rank+``."""
        num = self.keys.numel()
        if weights is None:  # prefix sums of ones are the indices themselves
            cum_w = torch.arange(num + 1, dtype=self.keys.dtype, device=self.keys.device)
            cum_wv = self._cum_v
        else:
            cum_w, cum_wv = _prefix(weights), _prefix(weights * self.keys)
        total = cum_w[-1]
        if self.delta == 0:
            return total - cum_w.index_select(0, self.lo)
        return (total - cum_w.index_select(0, self.hi)) + _window_sums(cum_w, cum_wv, self.lo, self.hi,
                                                                        self.keys, self.delta)


@dataclass
class Intervals:
    """Relevant negatives aggregated into the intervals between consecutive break points.

    Attributes:
        slot (Tensor): Slot of every logit (M,), int32: ``k + 1`` for a relevant negative in interval ``k``, 0 (the
            sink) for anything else.
        table (SortedKeys): Interval means as keys (non-decreasing) weighted by interval sizes, (K + 1,).
    """
    slot: Tensor
    table: SortedKeys


def aggregate_intervals(logits: Tensor, negative: Tensor, breaks: Tensor, threshold: Tensor) -> Intervals:
    """Group the relevant negatives by the intervals of sorted break points and represent each by its mean.

    Interval ``k`` holds the negatives with ``breaks[k-1] <= n < breaks[k]`` (a negative equal to a break point goes
    to the interval above it), interval 0 those from the relevance threshold up. Means are clamped into their
    interval, so a prototype never crosses a break point through rounding (the threshold crash of the published code
    cannot happen). Empty intervals get weight zero and a key on their lower end so the keys stay sorted. Every
    logit is located among the threshold and the break points at once (no mask of relevant negatives, no
    ``nonzero``): logits below the threshold and logits that are not negatives go to a sink slot that every table
    maps to zero.

    Args:
        logits (Tensor): All logits (M,).
        negative (Tensor): Negatives (M,), bool.
        breaks (Tensor): Break points sorted ascending (K,), the logits' dtype, none below the threshold.
        threshold (Tensor): Relevance threshold (scalar): negatives below it take no part.

    Returns:
        Intervals: Slot per logit and the (K + 1,) weighted table of interval means (float64).
    """
    acc = torch.float64 if logits.device.type != 'mps' else torch.float32
    num = breaks.numel() + 1
    edges = torch.cat([threshold.reshape(1).to(breaks), breaks])
    slot = SortedIndex(edges).count(logits, right=True, out_int32=True)  # 0 below the threshold
    slot.mul_(negative)
    sizes = torch.bincount(slot, minlength=num + 1)[1:].to(acc)
    # sums accumulate in the logits' dtype, one interval at a time in logit order (as index_add would)
    sums = torch.bincount(slot, weights=logits, minlength=num + 1)[1:].to(acc)
    lower = edges.to(acc)
    # largest value of the dtype strictly below the next break point
    upper = torch.nextafter(torch.cat([breaks, breaks.new_full((1,), float('inf'))]),
                            breaks.new_full((1,), -float('inf'))).to(acc)
    means = torch.where(sizes > 0, sums / sizes.clamp_min(1), lower)
    means = torch.minimum(torch.maximum(means, lower), torch.maximum(upper, lower))
    # Keys must be non-decreasing for the lookups; the clamp keeps every mean inside its interval, and
    # cummax (over K + 1 values) guards degenerate intervals between tied break points.
    means = torch.cummax(means, 0).values
    return Intervals(slot, SortedKeys.build(means, sizes))


class NegativeRanker:
    """Computes ``N_FP`` of every positive and spreads per-positive weights back onto the negatives.

    Args:
        logits (Tensor): All logits (M,), float32 or float64.
        targets (Tensor): Their targets (M,): ``0`` marks a negative.
        windows (PositiveWindows): Positive logits sorted ascending (P,), float64 (accumulation dtype), with their
            windows; their values are exactly those of the logits' dtype.
        threshold (Tensor): Relevance threshold ``min(pos) - delta`` (scalar, logits' dtype).
        method (str): ``'bucketed'``, ``'exact'`` or ``'pairwise'``.
        block_elements (int): Largest number of pairwise elements held at once (``'pairwise'``).
    """

    def __init__(self, logits: Tensor, targets: Tensor, windows: PositiveWindows, threshold: Tensor, method: str,
                 block_elements: int) -> None:
        if method not in NEGATIVE_METHODS:
            raise ValueError(f'unknown negative aggregation method {method!r}, expected one of {NEGATIVE_METHODS}')
        pos_sorted, delta = windows.keys, windows.delta
        self.logits, self.windows, self.pos_sorted, self.delta, self.method = (logits, windows, pos_sorted, delta,
                                                                                method)
        self.block_elements = block_elements
        self.intervals: Optional[Intervals] = None
        pos_breaks = pos_sorted.to(logits.dtype)  # comparisons with the negatives happen in their dtype
        if method == 'pairwise':
            self.neg_idx = torch.nonzero((logits >= threshold) & (targets == 0)).squeeze(1)
            self.neg = logits.index_select(0, self.neg_idx)
            return
        if method == 'exact' and delta != 0:
            pos_breaks = sort_ascending(torch.cat([pos_breaks - delta, pos_breaks + delta]))[0]
        self.intervals = aggregate_intervals(logits, targets == 0, pos_breaks, threshold)

    def _row_blocks(self, num_rows: int, num_cols: int) -> Iterator[slice]:
        step = max(1, self.block_elements // max(num_cols, 1))
        for start in range(0, num_rows, step):
            yield slice(start, min(start + step, num_rows))

    def false_positives(self) -> Tensor:
        """``N_FP(i) = sum_n H(n - s_i)`` for every positive (ascending order), shape (P,)."""
        if self.method == 'bucketed':
            # bucket b lies in [s_(b-1), s_b): the buckets below the a-th positive hold means < s_(a-1) <= q, those
            # above it means >= s_a > q, so #(means <= q) = a + [m_a <= q] with a = #(positives <= q), which the
            # positives' windows already counted (delta = 0: #(means < s_i) with a = #(positives <= s_i))
            means = self.intervals.table.keys
            windows, queries = self.windows, self.pos_sorted
            if self.delta == 0:
                below = windows.hi + (means.index_select(0, windows.hi) < queries)
                return step_sums_in_window(self.intervals.table, queries, 0, True, below)
            lo = windows.lo + (means.index_select(0, windows.lo) <= queries - self.delta)
            hi = windows.hi + (means.index_select(0, windows.hi) <= queries + self.delta)
            return step_sums_in_window(self.intervals.table, queries, self.delta, True, lo, hi)
        if self.intervals is not None:
            return step_sums(self.intervals.table, self.pos_sorted, self.delta, upper=True)
        num_fp = torch.empty_like(self.pos_sorted)
        pos = self.pos_sorted.to(self.neg.dtype)
        for rows in self._row_blocks(pos.numel(), self.neg.numel()):
            diff = self.neg[None, :] - pos[rows, None]
            num_fp[rows] = smoothed_step(diff, self.delta).sum(1, dtype=num_fp.dtype)
        return num_fp

    def spread(self, weights: Tensor) -> Tensor:
        """Gradient of every logit: ``g(n) = sum_i weights_i H(n - s_i)`` for the relevant negatives, 0 elsewhere.

        For buckets, ``g`` is evaluated at the prototype and copied to the members (Sec. 4.2).

        Args:
            weights (Tensor): Per-positive weights in ascending logit order (P,), float64.

        Returns:
            Tensor: Gradients (M,) in the logits' dtype.
        """
        dtype = self.logits.dtype
        if self.method == 'pairwise':
            grad = torch.zeros_like(self.neg)
            pos = self.pos_sorted.to(dtype)
            weights = weights.to(dtype)
            for rows in self._row_blocks(pos.numel(), self.neg.numel()):
                diff = self.neg[None, :] - pos[rows, None]
                grad += weights[rows] @ smoothed_step(diff, self.delta)
            return torch.zeros_like(self.logits).index_put_((self.neg_idx,), grad)
        table = SortedKeys.build(self.pos_sorted, weights, self.windows.index)
        keys = self.intervals.table.keys
        slot = self.intervals.slot
        zero = keys.new_zeros(1)  # the sink slot 0
        per_interval = torch.cat([zero, step_sums(table, keys, self.delta, upper=False)]).to(dtype)
        value = per_interval.index_select(0, slot)
        if self.method == 'bucketed' or self.delta == 0:  # bucket prototype / constant between break points
            return value
        # Exact: between two consecutive break points s_i +- delta, g(n) is linear in n for every positive, so
        # g(n) = g(m_k) + slope_k (n - m_k) with the interval's mean m_k; slope_k = sum of the weights of the
        # positives whose window contains the interval, / (2 delta) (right derivative; irrelevant where n = m_k).
        lo = table.index.count(keys - self.delta, right=True)
        hi = table.index.count(keys + self.delta, right=True)
        slope = (table.cum_w.index_select(0, hi) - table.cum_w.index_select(0, lo)) / (2 * self.delta)
        slope = torch.cat([zero, slope]).to(dtype)
        key = torch.cat([zero, keys]).to(dtype)
        return value + slope.index_select(0, slot) * (self.logits - key.index_select(0, slot))


class _LeafPairs:
    """Pairs ``b < a`` of a sequence inside the same leaf block of :data:`SORT_LEAF_SIZE` positions, densely.

    Holds ``U[block, a, b] = H(v_b - v_a) [b < a]`` (``(P / leaf, leaf, leaf)``) for the upper sums; the lower sums
    use ``H(v_a - v_b) = 1 - H(v_b - v_a)`` (``delta > 0``) or their own matrix (``delta = 0``, where ties count on
    both sides).

    Args:
        keys (Tensor): Logits in sequence order (P,).
        delta (float): Smoothing of ``H``.
        leaf_size (int): Positions per block.
    """

    def __init__(self, keys: Tensor, delta: float, leaf_size: int) -> None:
        num = keys.numel()
        self.num, self.delta, self.leaf_size = num, delta, leaf_size
        self.blocks = -(-num // leaf_size)
        self.pad = self.blocks * leaf_size - num
        self._keys = torch.cat([keys, keys.new_zeros(self.pad)]).view(self.blocks, leaf_size)
        if delta == 0:
            self.upper_matrix = (self._keys[:, None, :] >= self._keys[:, :, None]).to(keys.dtype).tril_(-1)
        else:
            # H(v_b - v_a) = clamp(v_b / (2 delta) - (v_a / (2 delta) - 1/2), 0, 1), in three passes over the pairs
            scaled = self._keys / (2 * delta)
            self.upper_matrix = (scaled[:, None, :] - (scaled - 0.5)[:, :, None]).clamp_(0, 1).tril_(-1)

    def _columns(self, weights: Tensor) -> Tensor:
        cols = weights.shape[0]
        return torch.cat([weights, weights.new_zeros(cols, self.pad)], 1).view(cols, self.blocks, self.leaf_size)

    def _apply(self, matrix: Tensor, weights: Tensor) -> Tensor:
        out = torch.bmm(matrix, self._columns(weights).permute(1, 2, 0))  # (blocks, leaf, C)
        return out.permute(2, 0, 1).reshape(weights.shape[0], -1)[:, :self.num]

    def upper(self, weights: Tensor) -> Tensor:
        """``sum_{b < a, same block} w_b H(v_b - v_a)`` (C, P) for weight columns (C, P)."""
        return self._apply(self.upper_matrix, weights)

    def lower(self, weights: Tensor) -> Tensor:
        """``sum_{b < a, same block} w_b H(v_a - v_b)`` (C, P) for weight columns (C, P)."""
        if self.delta == 0:
            matrix = (self._keys[:, None, :] <= self._keys[:, :, None]).to(weights.dtype).tril_(-1)
            return self._apply(matrix, weights)
        # sum_{b < a} w_b (1 - H(v_b - v_a)): the block's exclusive prefix sums minus the upper sums
        cols = self._columns(weights)
        before = (cols.cumsum(2) - cols).reshape(weights.shape[0], -1)[:, :self.num]
        return before - self.upper(weights)


class _EqualTargets:
    """Sums over the positives of a sorting-error sequence whose target equals that of position ``i``.

    Equal targets form contiguous groups of the sequence, in logit order inside. Only the members of groups of two
    or more take part (ties are rare with continuous IoU targets): their window ends inside the group come from an
    exact lookup of composite keys ``(group, logit rank)``, which increase along the sequence.

    Args:
        members (Tensor): Positions in groups of two or more (K,), ascending.
        start (Tensor): First position of each position's group (P,).
        end (Tensor): One past the last position of each position's group (P,).
        seq (Tensor): Logit rank of each position (P,).
        v (Tensor): Logits in sequence order (P,).
        win_lo (Tensor): Window ends ``lo`` of :class:`PositiveWindows` in sequence order (P,).
        win_hi (Tensor): Window ends ``hi`` in sequence order (P,).
        delta (float): Smoothing of ``H``.
    """

    def __init__(self, members: Tensor, start: Tensor, end: Tensor, seq: Tensor, v: Tensor, win_lo: Tensor,
                 win_hi: Tensor, delta: float) -> None:
        num = v.numel()
        self.members, self.delta, self.num = members, delta, num
        self.start, self.end = start.index_select(0, members), end.index_select(0, members)
        self.v = v.index_select(0, members)
        # composite keys of the members; a lookup counts members, and the members of a group are consecutive
        group = self.start  # the group's first position identifies it
        scale = num + 1
        composite = SortedIndex((group * scale + seq.index_select(0, members)).to(torch.float64))
        list_index = torch.empty_like(start).index_put_((members,), torch.arange(members.numel(), device=v.device))
        group_first = list_index.index_select(0, self.start)
        lo = composite.count((group * scale + win_lo.index_select(0, members)).to(torch.float64), right=False)
        hi = composite.count((group * scale + win_hi.index_select(0, members)).to(torch.float64), right=False)
        self.lo = self.start + (lo - group_first)  # first position of the group with logit rank >= lo
        self.hi = self.start + (hi - group_first)

    def _scatter(self, values: Tensor) -> Tensor:
        return values.new_zeros(self.num).index_put_((self.members,), values)

    def after(self, cum_w: Tensor, cum_wv: Tensor) -> Tensor:
        """``sum_{j in group, after i} w_j H(v_j - v_i)`` (logits at or above ``v_i``), upper sums over the positions
        ``(i, end)`` from the prefix sums of the weights ``w`` and of ``w v`` in sequence order; (P,)."""
        end = self.end
        after_start = self.members + 1
        if self.delta == 0:
            return self._scatter(cum_w.index_select(0, end) - cum_w.index_select(0, after_start))
        lo = torch.maximum(self.lo, after_start)
        hi = torch.maximum(self.hi, lo)
        return self._scatter(cum_w.index_select(0, end) - cum_w.index_select(0, hi)
                             + _window_sums(cum_w, cum_wv, lo, hi, self.v, self.delta))

    def before(self, cum_w: Tensor, cum_wv: Tensor) -> Tensor:
        """``sum_{j in group, before i} w_j H(v_i - v_j)`` (logits at or below ``v_i``), lower sums over the positions
        ``[start, i)``; (P,)."""
        positions, start = self.members, self.start
        if self.delta == 0:
            return self._scatter(cum_w.index_select(0, positions) - cum_w.index_select(0, start))
        lo = torch.minimum(torch.maximum(self.lo, start), positions)
        hi = torch.maximum(torch.minimum(self.hi, positions), lo)
        window = _window_sums(cum_w, cum_wv, lo, hi, self.v, self.delta)
        return self._scatter(cum_w.index_select(0, hi) - cum_w.index_select(0, start) - window)


def sorting_error_and_grad(windows: PositiveWindows, targets: Tensor, rank_pos: Tensor,
                           eps: float) -> Tuple[Tensor, Tensor]:
    """Sorting errors ``l_S`` (Eq. 10-11) and their identity-update gradients, exactly, in ``O(P log P)``.

    The target term and the sorting pmf need sums with two conditions, the target order and the logit relation:

    * ``A(i) = sum_j [t_j >= t_i] H(x_ij)`` and ``B(i) = sum_j [t_j >= t_i] H(x_ij)(1 - t_j)``,
    * the spread ``G(j) = sum_i [t_i > t_j] H(x_ij) l_S(i) / D(i)`` with ``D(i) = sum_j [t_j < t_i] H(x_ij)``.

    Positives are put in a sequence ordered by target (descending, equal targets in logit order). The pairs with
    ``j`` before ``i`` in the sequence and in an earlier leaf block of :data:`SORT_LEAF_SIZE` positions are
    dominance sums (:class:`~.dominance_tree.DominanceTree`: position before ``i``'s block, logit rank below a window
    end of ``i``), split like :func:`step_sums` into the part above the window, the window (weights and weights
    times logits) and the part below; one traced tree serves ``A``, ``B`` and ``G``. Pairs inside a leaf block are
    evaluated densely (:class:`_LeafPairs`). Pairs inside a group of equal targets are corrected with prefix sums
    over the group (``[t_j >= t_i]`` includes the later members, ``[t_i > t_j]`` excludes the earlier ones), whose
    window ends come from an exact lookup of composite keys ``(group, logit rank)``.

    Args:
        windows (PositiveWindows): Positive logits sorted ascending (P,) with their windows, float64.
        targets (Tensor): Their continuous targets (P,) in (0, 1], same order.
        rank_pos (Tensor): ``rank+`` of every positive (P,) (``windows.upper_sums()``).
        eps (float): A positive spreads its sorting error only when ``D(i) > eps``.

    Returns:
        tuple[Tensor, Tensor]: ``l_S`` per positive (P,) and the un-normalised gradient (P,) (to be divided by
        ``|P|``), which sums to zero, both in ascending logit order.
    """
    delta = windows.delta
    num = windows.keys.numel()
    device = windows.keys.device
    self_step = float(smoothed_step(torch.zeros(()), delta))
    current_num = windows.upper_sums(1 - targets)  # sum_j H(x_ij)(1 - t_j) over all positives

    # Everything below is in sequence order: target descending, equal targets in logit order (a stable sort of
    # the logit order); `seq` holds the logit rank of each sequence position.
    seq = argsort_descending(targets)
    positions = torch.arange(num, device=device)
    pos_of = torch.empty_like(seq).scatter_(0, seq, positions)  # sequence position of each logit rank
    v = windows.keys.index_select(0, seq)
    t = targets.index_select(0, seq)
    omt = 1 - t
    rank_pos = rank_pos.index_select(0, seq)
    current_num = current_num.index_select(0, seq)
    win_lo = windows.lo.index_select(0, seq)
    win_hi = windows.hi.index_select(0, seq)

    # j before i and in an earlier leaf block: the tree (logit rank below lo_i / hi_i); in i's leaf block: dense
    tree = DominanceTree(pos_of, SORT_LEAF_SIZE)
    plan = tree.trace(torch.stack([win_lo, win_hi]))
    leaf = _LeafPairs(v, delta, SORT_LEAF_SIZE)
    leaf_start = (positions // SORT_LEAF_SIZE) * SORT_LEAF_SIZE

    # A and B over the positives before i's leaf block: everything above the window has H = 1
    count_lo, count_hi = plan.counts.to(v.dtype)
    cum_omt = _prefix(omt)
    before = leaf_start.to(v.dtype)
    before_omt = cum_omt.index_select(0, leaf_start)
    if delta == 0:  # H(v_j - v_i) = [v_j >= v_i]: rank at or above lo_i
        (omt_lo, _), = tree.sums(plan, omt[None])
        earlier_rank = before - count_lo
        earlier_num = before_omt - omt_lo
    else:
        (omt_lo, omt_hi), (v_lo, v_hi), (omtv_lo, omtv_hi) = tree.sums(plan, torch.stack([omt, v, omt * v]))
        inv = 1.0 / (2 * delta)
        count_win, omt_win = count_hi - count_lo, omt_hi - omt_lo
        earlier_rank = before - count_hi + ((v_hi - v_lo) - v * count_win) * inv + 0.5 * count_win
        earlier_num = before_omt - omt_hi + ((omtv_hi - omtv_lo) - v * omt_win) * inv + 0.5 * omt_win
    leaf_rank, leaf_num = leaf.upper(torch.stack([torch.ones_like(v), omt]))

    # positives with equal targets: A and B include the later members of i's group, G excludes the earlier ones
    new_group = torch.ones(num, dtype=torch.bool, device=device)
    new_group[1:] = t[1:] != t[:-1]
    start = torch.cummax(torch.where(new_group, positions, 0), 0).values  # first position of the group
    last = torch.ones_like(new_group)
    last[:-1] = new_group[1:]
    end = torch.cummin(torch.where(last, positions + 1, num).flip(0), 0).values.flip(0)  # one past its last
    members = torch.nonzero(end - start > 1).squeeze(1)
    after_rank = after_num = g_same = 0
    if members.numel():
        groups = _EqualTargets(members, start, end, seq, v, win_lo, win_hi, delta)
        after_rank = groups.after(torch.arange(num + 1, dtype=v.dtype, device=device), _prefix(v))
        after_num = groups.after(cum_omt, _prefix(omt * v))
    rank_target = earlier_rank + leaf_rank + after_rank + self_step
    target_num = earlier_num + leaf_num + after_num + self_step * omt

    error = current_num / rank_pos - target_num / rank_target
    denom = rank_pos - rank_target
    active = denom > eps
    spread = torch.where(active, error / denom.clamp_min(eps), torch.zeros_like(error))

    # G(j): i before j in the sequence, minus i in the same group before j (logit <= v_j)
    if delta == 0:
        (_, s_hi), = tree.sums(plan, spread[None])
        g_earlier = s_hi  # H(v_j - v_i) = [v_i <= v_j]: rank below hi_j
    else:
        (s_lo, s_hi), (sv_lo, sv_hi) = tree.sums(plan, torch.stack([spread, spread * v]))
        g_earlier = s_hi - (((sv_hi - sv_lo) - v * (s_hi - s_lo)) / (2 * delta) + 0.5 * (s_hi - s_lo))
    g_leaf, = leaf.lower(spread[None])
    if members.numel():
        g_same = groups.before(_prefix(spread), _prefix(spread * v))
    grad = g_earlier + g_leaf - g_same - torch.where(active, error, torch.zeros_like(error))
    return error.index_select(0, pos_of), grad.index_select(0, pos_of)


def sorting_error_and_grad_pairwise(pos: Tensor, targets: Tensor, delta: float, block_elements: int,
                                    eps: float) -> Tuple[Tensor, Tensor]:
    """Same as :func:`sorting_error_and_grad` over the ``|P| x |P|`` pairs in row blocks (``O(P^2)`` time,
    bounded memory): the cost profile of the published RS loss, used by ``method='pairwise'`` and for few
    positives. Any order of the positives."""
    num = pos.numel()
    error = torch.empty_like(pos)
    grad = torch.zeros_like(pos)
    one_minus_t = 1 - targets
    step = max(1, block_elements // max(num, 1))
    for start in range(0, num, step):
        rows = slice(start, min(start + step, num))
        rel = smoothed_step(pos[None, :] - pos[rows, None], delta)  # H(x_ij), (B, P)
        not_lower = targets[None, :] >= targets[rows, None]  # t_j >= t_i
        rel_not_lower = rel * not_lower
        rank_pos = rel.sum(1)
        rank_target = rel_not_lower.sum(1)
        current = (rel @ one_minus_t) / rank_pos
        target = (rel_not_lower @ one_minus_t) / rank_target
        err = current - target
        error[rows] = err
        missorted = rel - rel_not_lower  # H(x_ij) [t_j < t_i]
        denom = rank_pos - rank_target
        active = denom > eps
        coef = torch.where(active, err / denom.clamp_min(eps), torch.zeros_like(err))
        grad[rows] -= torch.where(active, err, torch.zeros_like(err))
        grad += coef @ missorted
    return error, grad
