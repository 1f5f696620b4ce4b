"""The fast primitives of the ranking losses against torch and brute force, forced on small inputs: the grid lookup
(``searchsorted``), the integer-key sorts, the dominance tree, and the tree-based sorting error against the dense
``O(P^2)`` one (float64, ties in logits and targets, delta 0, every leaf size)."""
import pytest
import torch

from brs_detr.models.losses import ranking_core, sorted_search
from brs_detr.models.losses.dominance_tree import DominanceTree


@pytest.mark.parametrize('right', [True, False])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('case', ['random', 'on_breaks', 'duplicate_breaks', 'equal_breaks', 'huge', 'outside',
                                  'signed_zero', 'one_break'])
def test_grid_lookup_equals_searchsorted(dtype, case, right):
    g = torch.Generator().manual_seed(0)
    breaks = torch.randn(300, generator=g, dtype=dtype)
    values = torch.randn(20000, generator=g, dtype=dtype) * 1.5
    if case == 'on_breaks':
        values[::3] = breaks[torch.randint(0, 300, (values[::3].numel(),), generator=g)]
    elif case == 'duplicate_breaks':
        breaks = breaks.round(decimals=1)
        values = values.round(decimals=1)
    elif case == 'equal_breaks':
        breaks = torch.full((5,), 0.25, dtype=dtype)
    elif case == 'huge':  # large magnitude, small range: rounding spans many grid cells
        breaks = 1e4 + breaks * 1e-2
        values = 1e4 + values * 1e-2
        values[::7] = breaks[torch.randint(0, 300, (values[::7].numel(),), generator=g)]
    elif case == 'outside':
        values = values * 100
    elif case == 'signed_zero':
        breaks[:20] = 0.0
        values[::5] = -0.0
        values[1::5] = 0.0
    elif case == 'one_break':
        breaks = breaks[:1]
    breaks = torch.sort(breaks).values
    expected = torch.searchsorted(breaks, values, right=right)
    index = sorted_search.SortedIndex(breaks)
    assert torch.equal(index.count(values, right=right), expected)
    assert torch.equal(index.count(values[:7000], right=not right),  # the same table, the other side
                       torch.searchsorted(breaks, values[:7000], right=not right))
    count32 = sorted_search.count_sorted(breaks, values, right=right, out_int32=True)
    assert count32.dtype == torch.int32 and torch.equal(count32.long(), expected)


@pytest.mark.parametrize('cells_per_break,steps', [(1, 0), (1, 1), (64, 3)])
def test_grid_lookup_fallback_and_refinement(monkeypatch, cells_per_break, steps):
    """Coarse grids send many values to the searchsorted fallback, fine ones resolve them by comparisons: the result
    never changes."""
    monkeypatch.setattr(sorted_search, 'GRID_CELLS_PER_BREAK', cells_per_break)
    monkeypatch.setattr(sorted_search, 'GRID_REFINE_STEPS', steps)
    g = torch.Generator().manual_seed(1)
    breaks = torch.sort(torch.randn(2000, generator=g, dtype=torch.float64).round(decimals=2)).values
    values = torch.randn(30000, generator=g, dtype=torch.float64).round(decimals=2)
    for right in (True, False):
        assert torch.equal(sorted_search.count_sorted(breaks, values, right=right),
                           torch.searchsorted(breaks, values, right=right))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize('size', [1, 1000, 40000])
def test_integer_key_sorts_match_torch_sort(monkeypatch, dtype, size):
    monkeypatch.setattr(sorted_search, 'RADIX_SORT_MIN_ELEMENTS', 0)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(size, generator=g) * 3).round(decimals=1).to(dtype)  # many ties
    x[::11] = 0.0
    x[5::11] = -0.0
    x[7::13] = 6e4 if dtype == torch.float16 else -1e30 if dtype != torch.bfloat16 else -1e30
    values, order = sorted_search.sort_ascending(x)
    expected = torch.sort(x, stable=True)
    assert torch.equal(order, expected.indices) and torch.equal(values, expected.values)
    descending = sorted_search.argsort_descending(x)
    assert torch.equal(descending, torch.sort(x, descending=True, stable=True).indices)


def _brute_force_dominance(pos_by_rank, leaf, ranks, weights):
    num = pos_by_rank.numel()
    rank_of = torch.empty(num, dtype=torch.long)
    rank_of[pos_by_rank] = torch.arange(num)
    position = torch.arange(num)
    before_leaf = position[None, :] < (position // leaf * leaf)[:, None]  # [query p, point j]
    mask = before_leaf[None] & (rank_of[None, None, :] < ranks[:, :, None])  # (T, P, P)
    return mask.sum(2), (mask[None].double() * weights[:, None, None, :]).sum(3)


@pytest.mark.parametrize('leaf', [1, 2, 8, 32])
@pytest.mark.parametrize('num', [1, 2, 3, 31, 32, 33, 100, 257, 600])
def test_dominance_tree_matches_brute_force(leaf, num):
    g = torch.Generator().manual_seed(num)
    pos_by_rank = torch.randperm(num, generator=g)
    ranks = torch.randint(0, num + 1, (3, num), generator=g)
    ranks[0, ::4] = 0
    ranks[1, ::5] = num
    weights = torch.randn(2, num, generator=g, dtype=torch.float64)
    tree = DominanceTree(pos_by_rank, leaf)
    plan = tree.trace(ranks)
    counts, sums = _brute_force_dominance(pos_by_rank, leaf, ranks, weights)
    assert torch.equal(plan.counts, counts)
    torch.testing.assert_close(tree.sums(plan, weights), sums, atol=1e-12, rtol=0)
    torch.testing.assert_close(tree.sums(plan, weights[1:]), sums[1:], atol=1e-12, rtol=0)  # columns independent
    # float32 columns (the accumulation dtype on MPS) are summed one by one instead of in complex pairs
    torch.testing.assert_close(tree.sums(plan, weights.float()), sums.float(), atol=1e-4, rtol=1e-5)


def test_dominance_tree_rejects_leaf_size():
    with pytest.raises(ValueError, match='power of two'):
        DominanceTree(torch.arange(4), leaf_size=3)


def _sorted_problem(seed, num, delta_grid, target_grid):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num, generator=g, dtype=torch.float64)
    targets = 0.1 + 0.9 * torch.rand(num, generator=g, dtype=torch.float64)
    if delta_grid:
        logits = (logits / delta_grid).round() * delta_grid  # ties in logits and at window ends
    if target_grid:
        targets = (targets / target_grid).ceil() * target_grid  # groups of equal targets
    logits, order = torch.sort(logits)
    return logits, targets[order]


@pytest.mark.parametrize('leaf', [1, 4, 32])
@pytest.mark.parametrize('delta', [0.0, 0.25, 0.5])
@pytest.mark.parametrize('ties', ['none', 'logits', 'targets', 'both', 'one_pair'])
@pytest.mark.parametrize('num', [1, 5, 70, 333])
def test_sorting_error_tree_matches_pairwise(monkeypatch, leaf, delta, ties, num):
    monkeypatch.setattr(ranking_core, 'SORT_LEAF_SIZE', leaf)
    logits, targets = _sorted_problem(num, num, 0.25 if ties in ('logits', 'both') else 0,
                                      0.2 if ties in ('targets', 'both') else 0)
    if ties == 'one_pair' and num > 1:
        targets[num // 3] = targets[num // 2]
    windows = ranking_core.PositiveWindows(logits, delta)
    error, grad = ranking_core.sorting_error_and_grad(windows, targets, windows.upper_sums(), 1e-10)
    ref_error, ref_grad = ranking_core.sorting_error_and_grad_pairwise(logits, targets, delta, 997, 1e-10)
    torch.testing.assert_close(error, ref_error, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)
    assert abs(float(grad.sum())) < 1e-9


def test_sorting_error_tree_at_a_few_thousand_positives():
    """The default leaf size and grid thresholds on a size where the tree has several levels, the lookups use the
    grid and the sorts the integer keys."""
    logits, targets = _sorted_problem(7, 3000, 0, 0)
    targets[::50] = targets[1::50]  # some tied targets among continuous ones
    for delta in (0.0, 0.5):
        windows = ranking_core.PositiveWindows(logits, delta)
        error, grad = ranking_core.sorting_error_and_grad(windows, targets, windows.upper_sums(), 1e-10)
        ref_error, ref_grad = ranking_core.sorting_error_and_grad_pairwise(logits, targets, delta, 1 << 22, 1e-10)
        torch.testing.assert_close(error, ref_error, atol=1e-10, rtol=0)
        torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)
