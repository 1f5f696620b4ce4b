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
  read off prefix sums of ``w`` and ``w * v`` with two ``searchsorted`` calls (:func:`step_sums`).
* Negatives are aggregated into intervals of the real line without sorting them: an interval index is the
  insertion position among a small sorted set of break points (``searchsorted``), interval sizes and sums are
  ``bincount`` / ``index_add``.

  - Bucketed losses (BRS, BAP, Sec. 4.1): the break points are the positive logits, giving the ``|P| + 1``
    buckets of Eq. 12 represented by their mean logit (the prototype).
  - Exact losses: the break points are ``s_i - delta`` and ``s_i + delta`` of every positive. Between two
    consecutive break points ``H(n - s_i)`` is linear in ``n`` for every positive, so the interval mean
    reproduces the exact ``N_FP`` with no approximation; each negative's gradient is evaluated at its own
    logit. Both cost ``O(N_rel log P)``.
  - Pairwise: the textbook ``O(|P| |N|)`` computation in bounded-memory blocks (the cost profile of the
    published AP/RS losses), kept as a reference implementation and for speed comparisons.

* The sorting error needs sums with two conditions (target order and logit relation); it is computed over
  the ``|P| x |P|`` positive pairs in row blocks of bounded size.

Ties: a negative whose logit equals a positive logit belongs to the bucket *above* that positive (it is
counted as ranked above it, consistent with ``H(0) = 1`` for ``delta = 0``), which makes Theorem 1 exact.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

#: Aggregation strategies for the negatives.
NEGATIVE_METHODS = ('bucketed', 'exact', 'pairwise')


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
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


@dataclass
class SortedKeys:
    """Keys sorted ascending with prefix sums of their weights, for :func:`step_sums`.

    Attributes:
        keys (Tensor): Sorted keys ``v``, shape (K,).
        cum_w (Tensor): Prefix sums of the weights, shape (K + 1,).
        cum_wv (Tensor): Prefix sums of ``weights * keys``, shape (K + 1,).
    """
    keys: Tensor
    cum_w: Tensor
    cum_wv: Tensor

    @classmethod
    def build(cls, keys: Tensor, weights: Tensor) -> 'SortedKeys':
        """Build from keys that are already sorted ascending and their weights (both shape (K,))."""
        return cls(keys, _prefix(weights), _prefix(weights * keys))


def step_sums(table: SortedKeys, queries: Tensor, delta: float, upper: bool) -> Tensor:
    """Weighted sums of the smoothed step against sorted keys, in ``O(log K)`` per query.

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
    cum_w, cum_wv = table.cum_w, table.cum_wv
    total = cum_w[-1]
    if delta == 0:
        if upper:  # v >= q
            return total - cum_w[torch.searchsorted(table.keys, queries, right=False)]
        return cum_w[torch.searchsorted(table.keys, queries, right=True)]  # v <= q
    # keys[:lo] <= q - delta (H(v - q) = 0), keys[hi:] >= q + delta (H(v - q) = 1); the window between is
    # linear. H is continuous, so on which side a key equal to a window end falls does not matter.
    lo = torch.searchsorted(table.keys, queries - delta, right=True)
    hi = torch.searchsorted(table.keys, queries + delta, right=False)
    hi = torch.maximum(hi, lo)
    win_w = cum_w[hi] - cum_w[lo]
    win_wv = cum_wv[hi] - cum_wv[lo]
    inv = 1.0 / (2 * delta)
    if upper:
        return (total - cum_w[hi]) + (win_wv - queries * win_w) * inv + 0.5 * win_w
    return cum_w[lo] + (queries * win_w - win_wv) * inv + 0.5 * win_w


#: Cells of the lookup grid per break point in :func:`count_at_or_below` (more cells: fewer fallbacks).
GRID_CELLS_PER_BREAK = 64
#: Largest lookup grid.
GRID_MAX_CELLS = 1 << 20
#: Below this many queries a plain ``searchsorted`` is cheaper than building the grid.
GRID_MIN_QUERIES = 1 << 14


def count_at_or_below(breaks: Tensor, values: Tensor) -> Tensor:
    """``torch.searchsorted(breaks, values, right=True)`` (how many break points are ``<= value``), faster for
    many values and few break points.

    A binary search per value costs ``log2 K`` dependent random reads; here a uniform grid over the break points'
    range gives a guess per value with one gather, every guess is verified against its two neighbouring break
    points, and only values whose guess is wrong (cells that contain a break point) go through ``searchsorted``.
    The result is identical to ``searchsorted`` for any input, rounding included, because nothing unverified is
    returned.

    Args:
        breaks (Tensor): Break points sorted ascending (K,).
        values (Tensor): Query values (N,), same dtype.

    Returns:
        Tensor: int64 counts (N,) in ``[0, K]``.
    """
    num = breaks.numel()
    if values.numel() < GRID_MIN_QUERIES or num == 0:
        return torch.searchsorted(breaks, values, right=True)
    cells = int(min(GRID_MAX_CELLS, GRID_CELLS_PER_BREAK * num))
    lo, hi = breaks[0], breaks[-1]
    scale = cells / (hi - lo)
    if not bool(torch.isfinite(scale)):  # all break points equal
        return torch.searchsorted(breaks, values, right=True)
    edges = lo + torch.arange(cells, dtype=breaks.dtype, device=breaks.device) / scale
    table = torch.searchsorted(breaks, edges, right=True)  # guess for each cell: breaks <= its lower edge
    cell = ((values - lo) * scale).clamp_(0, cells - 1).long()
    guess = table.index_select(0, cell)
    padded = torch.cat([breaks.new_full((1,), -float('inf')), breaks, breaks.new_full((1,), float('inf'))])
    right = (padded.index_select(0, guess) <= values) & (values < padded.index_select(0, guess + 1))
    wrong = torch.nonzero(~right).squeeze(1)
    if wrong.numel():
        guess.index_put_((wrong,), torch.searchsorted(breaks, values.index_select(0, wrong), right=True))
    return guess


@dataclass
class Intervals:
    """Negatives aggregated into the intervals between consecutive break points.

    Attributes:
        index (Tensor): Interval of each negative, shape (N,), values in ``[0, K]``.
        table (SortedKeys): Interval means as keys (non-decreasing) weighted by interval sizes.
    """
    index: Tensor
    table: SortedKeys


def aggregate_intervals(neg: Tensor, breaks: Tensor, lower_bound: Tensor) -> Intervals:
    """Group negatives by the intervals of sorted break points and represent each by its mean.

    Interval ``k`` holds the negatives with ``breaks[k-1] <= n < breaks[k]`` (``searchsorted`` with
    ``right=True``: a negative equal to a break point goes to the interval above it). Means are clamped into
    their interval, so a prototype never crosses a break point through rounding (the threshold crash of the
    published code cannot happen). Empty intervals get weight zero and a key on their lower end so the keys stay
    sorted. Work on the (many) negatives stays in their dtype; the (few) interval statistics are float64.

    Args:
        neg (Tensor): Negative logits (N,).
        breaks (Tensor): Break points sorted ascending (K,), same dtype as ``neg``.
        lower_bound (Tensor): Scalar key for an empty first interval (the relevance threshold).

    Returns:
        Intervals: Interval index per negative and the (K + 1,) weighted table of interval means (float64).
    """
    acc = torch.float64 if neg.device.type != 'mps' else torch.float32
    num = breaks.numel() + 1
    index = count_at_or_below(breaks, neg)
    sizes = torch.zeros(num, dtype=neg.dtype, device=neg.device).index_add_(0, index, neg.new_ones(1).expand_as(neg))
    sums = torch.zeros(num, dtype=neg.dtype, device=neg.device).index_add_(0, index, neg)
    sizes, sums = sizes.to(acc), sums.to(acc)
    edges = torch.cat([lower_bound.reshape(1).to(breaks), breaks])
    lower = edges.to(acc)
    # largest value of the dtype strictly below the next break point
    upper = torch.nextafter(torch.cat([breaks, breaks.new_full((1,), float('inf'))]),
                            breaks.new_full((1,), -float('inf'))).to(acc)
    means = torch.where(sizes > 0, sums / sizes.clamp_min(1), lower)
    means = torch.minimum(torch.maximum(means, lower), torch.maximum(upper, lower))
    # Keys must be non-decreasing for searchsorted; the clamp keeps every mean inside its interval, and
    # cummax (over K + 1 values) guards degenerate intervals between tied break points.
    means = torch.cummax(means, 0).values
    return Intervals(index, SortedKeys.build(means, sizes))


@dataclass
class RankingStats:
    """Per-positive ranking statistics, positives in ascending logit order.

    Attributes:
        rank_pos (Tensor): ``rank+(i)``, shape (P,).
        num_fp (Tensor): ``N_FP(i)``, shape (P,).
    """
    rank_pos: Tensor
    num_fp: Tensor


class NegativeRanker:
    """Computes ``N_FP`` of every positive and spreads per-positive weights back onto the negatives.

    Args:
        pos_sorted (Tensor): Positive logits sorted ascending (P,), float64 (accumulation dtype).
        neg (Tensor): Relevant negative logits (N,), in the logits' dtype (float32 or float64).
        threshold (Tensor): Relevance threshold ``min(pos) - delta`` (scalar).
        delta (float): Smoothing of ``H``.
        method (str): ``'bucketed'``, ``'exact'`` or ``'pairwise'``.
        block_elements (int): Largest number of pairwise elements held at once (``'pairwise'``).
    """

    def __init__(self, pos_sorted: Tensor, neg: Tensor, threshold: Tensor, delta: float, method: str,
                 block_elements: int) -> None:
        if method not in NEGATIVE_METHODS:
            raise ValueError(f'unknown negative aggregation method {method!r}, expected one of {NEGATIVE_METHODS}')
        self.pos_sorted, self.neg, self.delta, self.method = pos_sorted, neg, delta, method
        self.block_elements = block_elements
        self.intervals: Optional[Intervals] = None
        pos_breaks = pos_sorted.to(neg.dtype)  # comparisons with the negatives happen in their dtype
        if method == 'bucketed':
            self.intervals = aggregate_intervals(neg, pos_breaks, threshold)
        elif method == 'exact':
            breaks = pos_breaks if delta == 0 else torch.sort(
                torch.cat([pos_breaks - delta, pos_breaks + delta])).values
            self.intervals = aggregate_intervals(neg, breaks, threshold)

    def _row_blocks(self, num_rows: int, num_cols: int):
        step = max(1, self.block_elements // max(num_cols, 1))
        for start in range(0, num_rows, step):
            yield slice(start, min(start + step, num_rows))

    def false_positives(self) -> Tensor:
        """``N_FP(i) = sum_n H(n - s_i)`` for every positive (ascending order), shape (P,)."""
        if self.intervals is not None:
            return step_sums(self.intervals.table, self.pos_sorted, self.delta, upper=True)
        num_fp = torch.empty_like(self.pos_sorted)
        pos = self.pos_sorted.to(self.neg.dtype)
        for rows in self._row_blocks(pos.numel(), self.neg.numel()):
            diff = self.neg[None, :] - pos[rows, None]
            num_fp[rows] = smoothed_step(diff, self.delta).sum(1, dtype=num_fp.dtype)
        return num_fp

    def spread(self, weights: Tensor) -> Tensor:
        """Gradient of every negative: ``g(n) = sum_i weights_i H(n - s_i)``.

        For buckets, ``g`` is evaluated at the prototype and copied to the members (Sec. 4.2).

        Args:
            weights (Tensor): Per-positive weights in ascending logit order (P,), float64.

        Returns:
            Tensor: Per-negative gradients (N,) in the negatives' dtype.
        """
        if self.method == 'pairwise':
            grad = torch.zeros_like(self.neg)
            pos = self.pos_sorted.to(self.neg.dtype)
            weights = weights.to(self.neg.dtype)
            for rows in self._row_blocks(pos.numel(), self.neg.numel()):
                diff = self.neg[None, :] - pos[rows, None]
                grad += weights[rows] @ smoothed_step(diff, self.delta)
            return grad
        table = SortedKeys.build(self.pos_sorted, weights)
        keys = self.intervals.table.keys
        per_interval = step_sums(table, keys, self.delta, upper=False).to(self.neg.dtype)
        value = per_interval.index_select(0, self.intervals.index)
        if self.method == 'bucketed' or self.delta == 0:  # bucket prototype / constant between break points
            return value
        # Exact: between two consecutive break points s_i +- delta, g(n) is linear in n for every positive, so
        # g(n) = g(m_k) + slope_k (n - m_k) with the interval's mean m_k; slope_k = sum of the weights of the
        # positives whose window contains the interval, / (2 delta) (right derivative; irrelevant where n = m_k).
        lo = torch.searchsorted(table.keys, keys - self.delta, right=True)
        hi = torch.searchsorted(table.keys, keys + self.delta, right=True)
        slope = ((table.cum_w[hi] - table.cum_w[lo]) / (2 * self.delta)).to(self.neg.dtype)
        index = self.intervals.index
        return value + slope.index_select(0, index) * (self.neg - keys.to(self.neg.dtype).index_select(0, index))


def positive_ranks(pos_sorted: Tensor, delta: float) -> Tensor:
    """``rank+(i) = sum_{j in P} H(s_j - s_i)`` (the positive itself included), shape (P,)."""
    table = SortedKeys.build(pos_sorted, torch.ones_like(pos_sorted))
    return step_sums(table, pos_sorted, delta, upper=True)


def _windowed(cum_w: Tensor, cum_wv: Tensor, lo: Tensor, hi: Tensor, start: Tensor, end: Tensor,
              queries: Tensor, delta: float, upper: bool, dim: int) -> Tensor:
    """Step sums over index ranges given the window indices (a batched variant of :func:`step_sums`).

    Keys with index in ``[start, lo)`` lie at or below ``q - delta``, ``[lo, hi)`` inside the window and
    ``[hi, end)`` at or above ``q + delta``. ``cum_w`` / ``cum_wv`` are prefix sums along ``dim`` (with a
    trailing dimension of weight columns); index tensors have the shape of the result and are gathered along
    ``dim``; ``queries`` broadcasts against the result.
    """
    def take(cum: Tensor, idx: Tensor) -> Tensor:
        return torch.gather(cum, dim, idx)

    if delta == 0:  # lo == hi: the split point; upper counts [hi, end), lower [start, lo)
        if upper:
            return take(cum_w, end) - take(cum_w, hi)
        return take(cum_w, lo) - take(cum_w, start)
    win_w = take(cum_w, hi) - take(cum_w, lo)
    win_wv = take(cum_wv, hi) - take(cum_wv, lo)
    inv = 1.0 / (2 * delta)
    if upper:
        return (take(cum_w, end) - take(cum_w, hi)) + (win_wv - queries * win_w) * inv + 0.5 * win_w
    return (take(cum_w, lo) - take(cum_w, start)) + (queries * win_w - win_wv) * inv + 0.5 * win_w


def _window_indices(keys: Tensor, queries: Tensor, delta: float) -> Tuple[Tensor, Tensor]:
    """``lo``/``hi`` of :func:`_windowed` for (batched) sorted ``keys`` and ``queries``."""
    if delta == 0:  # upper: keys >= q from hi; lower: keys <= q before lo
        return (torch.searchsorted(keys, queries, right=True), torch.searchsorted(keys, queries, right=False))
    lo = torch.searchsorted(keys, queries - delta, right=True)
    hi = torch.searchsorted(keys, queries + delta, right=False)
    return lo, torch.maximum(hi, lo)


def _earlier_sums(keys: Tensor, weights: Tensor, delta: float, upper: bool) -> Tensor:
    """For every position ``k``: ``sum_{j < k} w_j H(+-(v_j - v_k))`` by divide and conquer over positions.

    At each of the ``log2 P`` levels the sequence is cut into blocks of ``2h``; within each block the left half
    is sorted by key and the right half's elements query it with batched ``searchsorted`` on prefix sums. Every
    pair ``j < k`` meets exactly once, at the level where they fall into different halves of one block:
    ``O(P log^2 P)`` time, ``O(P)`` memory, ``log2 P`` Python iterations.

    Args:
        keys (Tensor): Values ``v`` in sequence order (P,).
        weights (Tensor): Weights ``w`` (P, C): C weight columns share the sorts and searches.
        delta (float): Smoothing of ``H``.
        upper (bool): ``H(v_j - v_k)`` (True) or ``H(v_k - v_j)`` (False).

    Returns:
        Tensor: The sums, shape (P, C).
    """
    num, cols = weights.shape
    size = 1 << max(0, (num - 1).bit_length())
    pad_key = keys.max() + 2 * delta + 1  # above every window; weight 0 anyway
    keys = torch.cat([keys, pad_key.expand(size - num)])
    weights = torch.cat([weights, weights.new_zeros(size - num, cols)])
    out = torch.zeros_like(weights)
    half = 1
    while half < size:
        blocks = size // (2 * half)
        k = keys.view(blocks, 2, half)
        w = weights.view(blocks, 2, half, cols)
        left_keys, order = torch.sort(k[:, 0], dim=1)
        left_w = torch.gather(w[:, 0], 1, order[..., None].expand(-1, -1, cols))  # (blocks, half, C)
        zero = left_w.new_zeros(blocks, 1, cols)
        cum_w = torch.cat([zero, left_w.cumsum(1)], 1)  # (blocks, half + 1, C)
        cum_wv = torch.cat([zero, (left_w * left_keys[..., None]).cumsum(1)], 1)
        queries = k[:, 1].contiguous()  # (blocks, half)
        lo, hi = _window_indices(left_keys, queries, delta)
        shape = (blocks, half, cols)
        start = torch.zeros(shape, dtype=lo.dtype, device=lo.device)
        end = torch.full(shape, half, dtype=lo.dtype, device=lo.device)
        sums = _windowed(cum_w, cum_wv, lo[..., None].expand(shape), hi[..., None].expand(shape), start, end,
                         queries[..., None], delta, upper, dim=1)  # (blocks, half, C)
        out.view(blocks, 2, half, cols)[:, 1] += sums
        half *= 2
    return out[:num]


def sorting_error_and_grad(pos: Tensor, targets: Tensor, delta: float, eps: float) -> Tuple[Tensor, Tensor]:
    """Sorting errors ``l_S`` (Eq. 10-11) and their identity-update gradients, exactly, in ``O(P log^2 P)``.

    The target term and the sorting pmf need sums with two conditions, the target order and the logit relation:

    * ``A(i) = sum_j [t_j >= t_i] H(x_ij)`` and ``B(i) = sum_j [t_j >= t_i] H(x_ij)(1 - t_j)``,
    * the spread ``G(j) = sum_i [t_i > t_j] H(x_ij) l_S(i) / D(i)`` with ``D(i) = sum_j [t_j < t_i] H(x_ij)``.

    Positives are ordered by target (descending, ties by logit ascending); the pairs ``j`` before ``i`` in that
    order come from :func:`_earlier_sums`; pairs inside a group of equal targets are corrected with prefix sums
    over the group (``[t_j >= t_i]`` includes them, ``[t_i > t_j]`` excludes them).

    Args:
        pos (Tensor): Positive logits (P,), float64.
        targets (Tensor): Their continuous targets (P,) in (0, 1].
        delta (float): Smoothing of ``H``.
        eps (float): A positive spreads its sorting error only when ``D(i) > eps``.

    Returns:
        tuple[Tensor, Tensor]: ``l_S`` per positive (P,) and the un-normalised gradient (P,) (to be divided by
        ``|P|``), which sums to zero.
    """
    num = pos.numel()
    # order: target descending, then logit ascending (so equal-target groups are sorted by logit)
    by_logit = torch.sort(pos, stable=True).indices
    order = by_logit[torch.sort(targets[by_logit], descending=True, stable=True).indices]
    v, t = pos[order], targets[order]
    one_minus_t = 1 - t
    self_step = float(smoothed_step(torch.zeros(()), delta))

    # unrestricted sums over all positives: rank+(i) and sum_j H(x_ij)(1 - t_j)
    by_v, by_v_order = torch.sort(v)
    table = SortedKeys.build(by_v, torch.ones_like(by_v))
    rank_pos = step_sums(table, v, delta, upper=True)
    table = SortedKeys.build(by_v, one_minus_t[by_v_order])
    current_num = step_sums(table, v, delta, upper=True)

    # groups of equal targets: contiguous in this order, sorted by logit inside
    new_group = torch.ones(num, dtype=torch.bool, device=pos.device)
    new_group[1:] = t[1:] != t[:-1]
    group = new_group.cumsum(0) - 1
    group_start = torch.nonzero(new_group).squeeze(1)
    group_end = torch.cat([group_start[1:], group_start.new_full((1,), num)])
    start, end = group_start[group], group_end[group]
    positions = torch.arange(num, device=pos.device)
    # exact segment-restricted searches: keys (group, logit rank) as int64
    logit_rank = torch.searchsorted(by_v, v, right=False)
    composite = group * (num + 1) + logit_rank

    def in_group_lookup(query: Tensor, right: bool) -> Tensor:
        """Global position bounding the elements of each query's own group with logit <= query (right=True)
        or < query (right=False). ``logit_rank_j = #(logits < v_j)``, so ``v_j <= x`` iff
        ``logit_rank_j <= #(logits <= x) - 1`` and ``v_j < x`` iff ``logit_rank_j < #(logits < x)``."""
        rank = torch.searchsorted(by_v, query, right=right) - (1 if right else 0)
        return torch.searchsorted(composite, group * (num + 1) + rank, right=right)

    ones = torch.ones_like(v)
    weights = torch.stack([ones, one_minus_t], 1)  # (P, 2)
    earlier = _earlier_sums(v, weights, delta, upper=True)  # j before i: t_j >= t_i
    cum_w = torch.stack([_prefix(ones), _prefix(one_minus_t)], 1)  # (P + 1, 2)
    cum_wv = torch.stack([_prefix(v), _prefix(one_minus_t * v)], 1)
    # same group, after i (logit >= v_i): upper sums over positions (i, end)
    if delta == 0:
        lo = hi = positions + 1
    else:
        lo = torch.maximum(in_group_lookup(v - delta, right=True), positions + 1)
        hi = torch.maximum(in_group_lookup(v + delta, right=False), lo)
    shape = (num, 2)
    after = _windowed(cum_w, cum_wv, lo[:, None].expand(shape), hi[:, None].expand(shape),
                      (positions + 1)[:, None].expand(shape), end[:, None].expand(shape), v[:, None], delta,
                      upper=True, dim=0)  # (P, 2)
    restricted = earlier + after + self_step * weights
    rank_target, target_num = restricted[:, 0], restricted[:, 1]

    error = current_num / rank_pos - target_num / rank_target
    denom = rank_pos - rank_target
    active = denom > eps
    spread = torch.where(active, error / denom.clamp_min(eps), torch.zeros_like(error))

    # G(j): i before j in the order minus i in the same group before j (logit <= v_j)
    g_earlier = _earlier_sums(v, spread[:, None], delta, upper=False)[:, 0]
    cum_s = _prefix(spread)
    cum_sv = _prefix(spread * v)
    if delta == 0:
        lo = hi = positions
    else:
        lo = torch.minimum(torch.maximum(in_group_lookup(v - delta, right=True), start), positions)
        hi = torch.minimum(in_group_lookup(v + delta, right=False), positions)
        hi = torch.maximum(hi, lo)
    g_same = _windowed(cum_s, cum_sv, lo, hi, start, positions, v, delta, upper=False, dim=0)
    grad_sorted = g_earlier - g_same - torch.where(active, error, torch.zeros_like(error))

    error_out = torch.empty_like(error).scatter_(0, order, error)
    grad_out = torch.empty_like(grad_sorted).scatter_(0, order, grad_sorted)
    return error_out, grad_out


def sorting_error_and_grad_pairwise(pos: Tensor, targets: Tensor, delta: float, block_elements: int,
                                    eps: float) -> Tuple[Tensor, Tensor]:
    """Same as :func:`sorting_error_and_grad` over the ``|P| x |P|`` pairs in row blocks (``O(P^2)`` time,
    bounded memory): the cost profile of the published RS loss, used by ``method='pairwise'``."""
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
