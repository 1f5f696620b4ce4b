"""Ranking losses (RS, BRS, AP, BAP) against float64 brute-force references written from the equations."""
import numpy as np
import pytest
import torch

from brs_detr.models.losses import (APLoss, BucketedAPLoss, BucketedRankSortLoss, RankSortLoss,
                                    positive_score_weights, ranking_targets, value_matched, value_matched_weight,
                                    weighted_mean)
from brs_detr.models.losses import ranking_core, ranking_loss, sorted_search
from mmdet.registry import MODELS

from ranking_reference import random_problem, reference_loss

SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True, params=['default', 'fast-paths-forced'])
def code_path(request, monkeypatch):
    """Run every test twice: with the default size thresholds, and with the fast paths forced even for the small
    inputs of these tests: the grid lookup instead of searchsorted, the integer-key (radix) sort, and the
    dominance-tree sorting error instead of the dense P x P blocks."""
    if request.param == 'fast-paths-forced':
        monkeypatch.setattr(sorted_search, 'GRID_MIN_QUERIES', 0)
        monkeypatch.setattr(sorted_search, 'RADIX_SORT_MIN_ELEMENTS', 0)
        monkeypatch.setattr(ranking_loss, 'DENSE_SORT_MAX_POSITIVES', 0)
        # leaf blocks of 2 positions: the tree's levels carry nearly all pairs of these small inputs
        monkeypatch.setattr(ranking_core, 'SORT_LEAF_SIZE', 2)
    return request.param
SIZES = [(40, 0.2), (300, 0.05), (1000, 0.02)]


def run_loss(loss, logits, targets, rank_weight=1.0, sort_weight=1.0):
    """Values and gradient of rank_weight * loss_rank + sort_weight * loss_sort."""
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    out = loss(x, torch.tensor(targets, dtype=torch.float64))
    total = rank_weight * out['loss_rank']
    if 'loss_sort' in out:
        total = total + sort_weight * out['loss_sort']
    total.backward()
    return out, x.grad.numpy()


def split_grads(loss, logits, targets):
    """Gradient of each output separately."""
    _, g_rank = run_loss(loss, logits, targets, 1.0, 0.0)
    _, g_sort = run_loss(loss, logits, targets, 0.0, 1.0)
    return g_rank, g_sort


def assert_matches_reference(loss, logits, targets, bucketed, with_sort, interpolated=False, atol=1e-10):
    ref_rank, ref_sort, ref_grad_rank, ref_grad_sort = reference_loss(
        logits, targets, loss.delta, bucketed=bucketed, with_sort=with_sort, interpolated=interpolated)
    out, _ = run_loss(loss, logits, targets)
    np.testing.assert_allclose(out['loss_rank'].item(), ref_rank, atol=atol, rtol=0)
    g_rank, g_sort = split_grads(loss, logits, targets)
    np.testing.assert_allclose(g_rank, ref_grad_rank, atol=atol, rtol=0)
    if with_sort:
        np.testing.assert_allclose(out['loss_sort'].item(), ref_sort, atol=atol, rtol=0)
        np.testing.assert_allclose(g_sort, ref_grad_sort, atol=atol, rtol=0)
    else:
        assert 'loss_sort' not in out


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('size,frac', SIZES)
@pytest.mark.parametrize('method', ['exact', 'pairwise'])
@pytest.mark.parametrize('delta', [0.5, 0.0, 0.1])
@pytest.mark.parametrize('regime', ['early', 'trained'])
def test_rank_sort_exact(seed, size, frac, method, delta, regime):
    logits, targets = random_problem(np.random.default_rng(seed), size, frac, regime=regime)
    loss = RankSortLoss(delta=delta, method=method, block_elements=997)  # small blocks: exercise the loop
    assert_matches_reference(loss, logits, targets, bucketed=False, with_sort=True)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('size,frac', SIZES)
@pytest.mark.parametrize('delta', [0.5, 0.0, 1.0])
@pytest.mark.parametrize('regime', ['early', 'trained'])
def test_bucketed_rank_sort_matches_eq12_buckets(seed, size, frac, delta, regime):
    logits, targets = random_problem(np.random.default_rng(seed), size, frac, regime=regime)
    assert_matches_reference(BucketedRankSortLoss(delta=delta), logits, targets, bucketed=True, with_sort=True)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('size,frac', SIZES)
@pytest.mark.parametrize('method', ['exact', 'pairwise'])
@pytest.mark.parametrize('delta', [1.0, 0.0])
def test_ap_exact(seed, size, frac, method, delta):
    logits, targets = random_problem(np.random.default_rng(seed), size, frac, binary=True)
    assert_matches_reference(APLoss(delta=delta, method=method), logits, targets, bucketed=False,
                             with_sort=False)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('size,frac', SIZES)
@pytest.mark.parametrize('method', ['exact', 'pairwise'])
@pytest.mark.parametrize('delta', [1.0, 0.5])
def test_ap_interpolated_matches_released_algorithm(seed, size, frac, method, delta):
    logits, targets = random_problem(np.random.default_rng(seed), size, frac, binary=True, regime='trained')
    loss = APLoss(delta=delta, method=method, interpolated=True)
    assert_matches_reference(loss, logits, targets, bucketed=False, with_sort=False, interpolated=True)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('size,frac', SIZES)
@pytest.mark.parametrize('delta', [1.0, 0.0])
def test_bucketed_ap_matches_eq12_buckets(seed, size, frac, delta):
    logits, targets = random_problem(np.random.default_rng(seed), size, frac, binary=True)
    assert_matches_reference(BucketedAPLoss(delta=delta), logits, targets, bucketed=True, with_sort=False)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('size,frac', SIZES + [(5000, 0.01)])
def test_theorem1_bucketed_equals_unbucketed_at_delta0(seed, size, frac):
    rng = np.random.default_rng(seed)
    logits, targets = random_problem(rng, size, frac)
    # quantise the logits so that negatives tie with positives and with each other
    logits = np.round(logits * 4) / 4
    g_brs = split_grads(BucketedRankSortLoss(delta=0.0), logits, targets)
    g_rs = split_grads(RankSortLoss(delta=0.0), logits, targets)
    out_brs, _ = run_loss(BucketedRankSortLoss(delta=0.0), logits, targets)
    out_rs, _ = run_loss(RankSortLoss(delta=0.0), logits, targets)
    for a, b in zip(g_brs, g_rs):
        np.testing.assert_allclose(a, b, atol=1e-12, rtol=0)
    for key in ('loss_rank', 'loss_sort'):
        np.testing.assert_allclose(out_brs[key].item(), out_rs[key].item(), atol=1e-12)
    binary = (targets > 0).astype(np.float64) - (targets < 0)
    _, g_bap = run_loss(BucketedAPLoss(delta=0.0), logits, binary)
    _, g_ap = run_loss(APLoss(delta=0.0), logits, binary)
    np.testing.assert_allclose(g_bap, g_ap, atol=1e-12, rtol=0)


# Measured (seeds 0-4, early and trained regimes, 4000 logits with 1 % positives): BRS - RS at delta 0.5 differs
# by at most 5.3e-3 in loss_rank, exactly 0 in loss_sort (bucketing does not touch it) and 3.9e-3 in any gradient
# entry (largest in the early regime, where buckets are wide). At 100K logits / 0.1 %: 7.9e-4 and 1.4e-3.
BRS_VS_RS_LOSS_TOL = 1e-2
BRS_VS_RS_GRAD_TOL = 8e-3


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('regime', ['early', 'trained'])
def test_bucketed_close_to_exact_at_default_delta(seed, regime):
    logits, targets = random_problem(np.random.default_rng(seed), 4000, 0.01, regime=regime)
    out_brs, g_brs = run_loss(BucketedRankSortLoss(), logits, targets)
    out_rs, g_rs = run_loss(RankSortLoss(), logits, targets)
    assert abs(out_brs['loss_rank'].item() - out_rs['loss_rank'].item()) < BRS_VS_RS_LOSS_TOL
    assert out_brs['loss_sort'].item() == pytest.approx(out_rs['loss_sort'].item(), abs=1e-12)
    assert np.abs(g_brs - g_rs).max() < BRS_VS_RS_GRAD_TOL
    # and they are not trivially equal: bucketing is an approximation at delta > 0
    assert np.abs(g_brs - g_rs).max() > 0


@pytest.mark.parametrize('loss_type', ['RankSortLoss', 'BucketedRankSortLoss', 'APLoss', 'BucketedAPLoss'])
@pytest.mark.parametrize('seed', SEEDS)
def test_gradients_sum_to_zero(loss_type, seed):
    logits, targets = random_problem(np.random.default_rng(seed), 2000, 0.03)
    loss = MODELS.build(dict(type=loss_type))
    g_rank, g_sort = split_grads(loss, logits, targets)
    assert np.abs(g_rank).sum() > 0
    assert abs(g_rank.sum()) < 1e-12
    assert abs(g_sort.sum()) < 1e-12
    assert np.all(g_rank[targets < 0] == 0) and np.all(g_sort[targets < 0] == 0)


def test_registry_contract_and_defaults():
    brs = MODELS.build(dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0))
    assert isinstance(brs, BucketedRankSortLoss)
    assert RankSortLoss().delta == 0.5 and BucketedRankSortLoss().delta == 0.5
    assert APLoss().delta == 1.0 and BucketedAPLoss().delta == 1.0
    logits = torch.randn(100, requires_grad=True)
    targets = torch.zeros(100)
    targets[:5] = torch.rand(5) * 0.9 + 0.1
    out = brs(logits, targets)
    assert set(out) == {'loss_rank', 'loss_sort'}
    assert set(MODELS.build(dict(type='BucketedAPLoss'))(logits, targets)) == {'loss_rank'}
    assert all(v.dim() == 0 for v in out.values())


def test_loss_weight_scales_values_and_gradients():
    logits, targets = random_problem(np.random.default_rng(3), 500, 0.05)
    out1, g1 = run_loss(BucketedRankSortLoss(loss_weight=1.0), logits, targets)
    out3, g3 = run_loss(BucketedRankSortLoss(loss_weight=3.0), logits, targets)
    assert out3['loss_rank'].item() == pytest.approx(3 * out1['loss_rank'].item())
    assert out3['loss_sort'].item() == pytest.approx(3 * out1['loss_sort'].item())
    np.testing.assert_allclose(g3, 3 * g1, atol=1e-12)


def test_each_output_has_its_own_gradient():
    logits, targets = random_problem(np.random.default_rng(4), 500, 0.05)
    loss = BucketedRankSortLoss()
    g_rank, g_sort = split_grads(loss, logits, targets)
    _, g_mixed = run_loss(loss, logits, targets, rank_weight=2.0, sort_weight=5.0)
    np.testing.assert_allclose(g_mixed, 2 * g_rank + 5 * g_sort, atol=1e-12)
    assert np.abs(g_sort).max() > 0 and np.abs(g_rank - g_sort).max() > 0


# ------------------------------------------------------------------------------------------ edge cases
ALL_LOSSES = [RankSortLoss, BucketedRankSortLoss, APLoss, BucketedAPLoss]


@pytest.mark.parametrize('cls', ALL_LOSSES)
@pytest.mark.parametrize('case', ['empty', 'no_positive', 'all_ignored'])
def test_zero_loss_cases_stay_connected(cls, case):
    if case == 'empty':
        logits, targets = torch.zeros(0, requires_grad=True), torch.zeros(0)
    elif case == 'no_positive':
        logits, targets = torch.randn(50, requires_grad=True), torch.zeros(50)
    else:
        logits, targets = torch.randn(50, requires_grad=True), -torch.ones(50)
    out = cls()(logits, targets)
    total = sum(out.values())
    assert total.item() == 0
    total.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


@pytest.mark.parametrize('cls', ALL_LOSSES)
def test_no_relevant_negative(cls):
    # every negative lies far below every positive: zero ranking error and zero ranking gradient
    logits = torch.tensor([5.0, 6.0, 7.0, -10.0, -11.0], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0.9, 0.5, 0.7, 0.0, 0.0], dtype=torch.float64)
    out = cls()(logits, targets)
    assert out['loss_rank'].item() == 0
    out['loss_rank'].backward()
    assert torch.all(logits.grad == 0)


def test_ties_negative_equal_to_positive():
    # a negative tied with the only positive: at delta 0 it counts as ranked above it (H(0) = 1)
    logits = [1.0, 1.0, 0.0]
    targets = [1.0, 0.0, 0.0]
    for cls in (APLoss, BucketedAPLoss):
        out, grad = run_loss(cls(delta=0.0), logits, targets)
        assert out['loss_rank'].item() == pytest.approx(0.5)  # rank 2, one false positive
        np.testing.assert_allclose(grad, [-0.5, 0.5, 0.0])
    for cls in (RankSortLoss, BucketedRankSortLoss):  # smoothed: H(0) = 1/2 for both sides
        out, grad = run_loss(cls(delta=0.5), logits, targets)
        ref = reference_loss(logits, targets, 0.5, bucketed=cls is BucketedRankSortLoss, with_sort=True)
        assert out['loss_rank'].item() == pytest.approx(ref[0])


def test_tied_positive_targets_and_logits():
    logits = [0.3, 0.3, 0.3, 0.2, 0.4, -0.1]
    targets = [0.5, 0.5, 0.9, 0.0, 0.0, 0.5]
    for cls, bucketed in ((RankSortLoss, False), (BucketedRankSortLoss, True)):
        for delta in (0.0, 0.5):
            assert_matches_reference(cls(delta=delta), logits, targets, bucketed=bucketed, with_sort=True)


def test_bucket_mean_on_the_threshold():
    # a bucket whose members all sit exactly on the relevance threshold min(pos) - delta and on positives
    delta = 0.25
    logits = [1.0, 2.0, 0.75, 0.75, 0.75, 1.0, 2.0, 0.1]
    targets = [0.8, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert_matches_reference(BucketedRankSortLoss(delta=delta), logits, targets, bucketed=True, with_sort=True)
    assert_matches_reference(BucketedRankSortLoss(delta=0.0), logits, targets, bucketed=True, with_sort=True)
    # float32 bucket means of many equal values must not cross the threshold
    x = torch.full((10001,), 0.1, dtype=torch.float32)
    t = torch.zeros(10001)
    x[0], t[0] = 0.35, 1.0  # threshold 0.1 in float arithmetic
    out = BucketedRankSortLoss(delta=0.25)(x.requires_grad_(), t)
    assert torch.isfinite(out['loss_rank'])


def test_single_positive_has_no_sorting_error():
    out, grad = run_loss(RankSortLoss(), [0.5, 0.2, 0.9], [0.7, 0.0, 0.0])
    assert out['loss_sort'].item() == 0
    _, g_sort = split_grads(RankSortLoss(), [0.5, 0.2, 0.9], [0.7, 0.0, 0.0])
    assert np.all(g_sort == 0)


@pytest.mark.parametrize('cls', ALL_LOSSES)
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_logits_raise_naming_the_loss(cls, bad):
    logits = torch.randn(20)
    logits[3] = bad
    targets = torch.zeros(20)
    targets[0] = 1.0
    with pytest.raises(FloatingPointError, match=cls.__name__):
        cls()(logits, targets)


def test_bad_shapes_and_targets_raise():
    with pytest.raises(ValueError, match='BucketedRankSortLoss.*shape'):
        BucketedRankSortLoss()(torch.randn(4, 5), torch.zeros(4, 5))
    with pytest.raises(ValueError, match='RankSortLoss.*shape'):
        RankSortLoss()(torch.randn(4), torch.zeros(5))
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        RankSortLoss()(torch.randn(4), torch.tensor([1.5, 0.0, 0.0, 0.0]))
    with pytest.raises(FloatingPointError, match='targets'):
        RankSortLoss()(torch.randn(4), torch.tensor([float('nan'), 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match='delta'):
        BucketedRankSortLoss(delta=-1)
    with pytest.raises(ValueError, match='method'):
        RankSortLoss(method='bucketed')


def test_ignored_examples_do_not_matter():
    rng = np.random.default_rng(5)
    logits, targets = random_problem(rng, 300, 0.05, ignore_fraction=0.0)
    extra_logits = rng.normal(3, 1, 50)  # high-scoring ignored examples would be false positives
    out_a, g_a = run_loss(BucketedRankSortLoss(), logits, targets)
    out_b, g_b = run_loss(BucketedRankSortLoss(), np.concatenate([logits, extra_logits]),
                          np.concatenate([targets, -np.ones(50)]))
    assert out_a['loss_rank'].item() == pytest.approx(out_b['loss_rank'].item(), abs=1e-12)
    np.testing.assert_allclose(g_b[:300], g_a, atol=1e-12)
    assert np.all(g_b[300:] == 0)


# ------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize('cls', ALL_LOSSES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(cls, dtype):
    logits, targets = random_problem(np.random.default_rng(6), 2000, 0.02)
    x = torch.tensor(logits, dtype=dtype, requires_grad=True)
    out = cls()(x, torch.tensor(targets, dtype=dtype))
    sum(out.values()).backward()
    assert x.grad.dtype == dtype
    assert all(v.dtype == torch.float32 for v in out.values())
    # compared with float64 on the same (rounded) logits
    x64 = x.detach().double().requires_grad_()
    out64 = cls()(x64, torch.tensor(targets, dtype=torch.float64).to(dtype).double())
    sum(out64.values()).backward()
    for key in out:
        assert out[key].item() == pytest.approx(out64[key].item(), abs=1e-5)
    tol = 1e-2 * x64.grad.abs().max().item() if dtype != torch.float32 else 1e-6
    assert (x.grad.double() - x64.grad).abs().max().item() <= tol


def test_autocast_computes_in_float32():
    logits, targets = random_problem(np.random.default_rng(7), 500, 0.05)
    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        out = BucketedRankSortLoss()(x, torch.tensor(targets, dtype=torch.float32))
    assert out['loss_rank'].dtype == torch.float32
    sum(out.values()).backward()
    assert x.grad.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('cls', ALL_LOSSES)
def test_cuda_matches_cpu(cls):
    logits, targets = random_problem(np.random.default_rng(8), 20000, 0.02)
    grads = []
    for device in ('cpu', 'cuda'):
        x = torch.tensor(logits, dtype=torch.float32, device=device, requires_grad=True)
        out = cls()(x, torch.tensor(targets, dtype=torch.float32, device=device))
        sum(out.values()).backward()
        grads.append(x.grad.cpu())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------- value matching and targets
def test_value_matched_weight_is_a_detached_ratio():
    rank = torch.tensor(0.6, requires_grad=True)
    box = torch.tensor(2.0, requires_grad=True)
    w = value_matched_weight(rank, box)
    assert not w.requires_grad and w.item() == pytest.approx(0.3)
    matched = value_matched(box, rank)
    assert matched.item() == pytest.approx(0.6)
    matched.backward()
    assert box.grad.item() == pytest.approx(0.3) and rank.grad is None
    zero_box = torch.tensor(0.0)
    assert torch.isfinite(value_matched_weight(rank, zero_box))


def test_score_weighted_mean_of_box_losses():
    """Positives' losses averaged with their detached max class probability; no positive gives a graph-connected 0."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    weights = positive_score_weights(logits)
    assert not weights.requires_grad
    torch.testing.assert_close(weights, torch.sigmoid(torch.tensor([2.0, -0.5], dtype=torch.float64)))
    losses = torch.tensor([0.4, 1.0], dtype=torch.float64, requires_grad=True)
    mean = weighted_mean(losses, weights)
    torch.testing.assert_close(mean, (weights[0] * 0.4 + weights[1] * 1.0) / weights.sum())
    mean.backward()
    torch.testing.assert_close(losses.grad, weights / weights.sum())
    empty = torch.zeros(0, requires_grad=True)
    nothing = weighted_mean(empty, torch.zeros(0))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_ranking_targets_one_vs_all():
    labels = torch.tensor([2, 0, 3, 1])  # 3 classes, label 3 = background
    ious = torch.tensor([0.7, 0.0, 0.9, 0.4])
    valid = torch.tensor([True, True, True, False])
    t = ranking_targets(labels, ious, num_classes=3, valid=valid).reshape(4, 3)
    assert t[0].tolist() == pytest.approx([0, 0, 0.7])
    assert t[1, 0].item() == pytest.approx(1e-6) and t[1, 0] > 0  # IoU 0 stays a positive
    assert t[2].tolist() == [0, 0, 0]
    assert t[3].tolist() == [-1, -1, -1]


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('delta', [0.0, 0.25, 0.5])
@pytest.mark.parametrize('cls,kwargs,bucketed', [(RankSortLoss, {}, False),
                                                 (RankSortLoss, {'method': 'pairwise'}, False),
                                                 (BucketedRankSortLoss, {}, True)])
def test_many_ties_in_targets_and_logits(seed, delta, cls, kwargs, bucketed):
    # IoU targets on a coarse grid (large groups of equal targets) and logits on a grid finer than delta:
    # exercises the equal-target corrections of the divide-and-conquer sorting sums
    rng = np.random.default_rng(seed)
    logits, targets = random_problem(rng, 400, 0.25)
    targets = np.where(targets > 0, np.ceil(targets * 5) / 5, targets)
    logits = np.round(logits * 10) / 10
    assert_matches_reference(cls(delta=delta, **kwargs), logits, targets, bucketed=bucketed, with_sort=True)
