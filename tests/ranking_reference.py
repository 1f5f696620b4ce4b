"""Brute-force float64 references of the ranking losses, written directly from the BRS paper's equations.

Deliberately naive (Python loops, dense pairwise matrices): they share no code with ``brs_detr`` and are only
meant for small inputs in tests.
"""
from typing import Tuple

import numpy as np


def step(x: np.ndarray, delta: float) -> np.ndarray:
    """Eq. 2; the hard step [x >= 0] for delta == 0."""
    if delta == 0:
        return (x >= 0).astype(np.float64)
    return np.clip(x / (2 * delta) + 0.5, 0.0, 1.0)


def buckets_eq12(logits: np.ndarray, targets: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Buckets of Eq. 12 by walking the logits in descending order.

    Only relevant negatives (logit >= threshold = min positive logit - delta) are bucketed, as in the published
    BRS (irrelevant negatives are removed first; they would only drag the lowest bucket's mean down). A negative
    tied with a positive is placed above it (before it in descending order).

    Returns:
        bucket of every negative (index into the list of buckets, -1 for non-negatives) and the bucket means.
    """
    order = sorted(range(len(logits)), key=lambda k: (-logits[k], 1 if targets[k] > 0 else 0))
    bucket_of = np.full(len(logits), -1)
    current, members = 0, {}
    for k in order:
        if targets[k] > 0:
            current += 1
        elif targets[k] == 0 and logits[k] >= threshold:
            bucket_of[k] = current
            members.setdefault(current, []).append(logits[k])
    means = np.zeros(current + 1)
    for b, vals in members.items():
        # a mean lies within its members' range; floating-point summation can push the mean of equal values
        # just below them (e.g. twelve times -0.1), which would flip H at delta = 0
        means[b] = np.clip(np.mean(vals), min(vals), max(vals))
    return bucket_of, means


def reference_loss(logits, targets, delta: float, bucketed: bool = False, with_sort: bool = False,
                   interpolated: bool = False, eps: float = 1e-10):
    """Loss values and identity-update gradients.

    Returns:
        (rank_loss, sort_loss, rank_grad (M,), sort_grad (M,)) in float64.
    """
    s = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    m = len(s)
    rank_grad = np.zeros(m)
    sort_grad = np.zeros(m)
    pos = np.nonzero(t > 0)[0]
    neg = np.nonzero(t == 0)[0]
    if len(pos) == 0:
        return 0.0, 0.0, rank_grad, sort_grad
    num_pos = len(pos)
    p = s[pos]

    # ranking: N_FP(i) and the value each negative contributes per positive
    if bucketed:
        bucket_of, means = buckets_eq12(s, t, p.min() - delta)
        sizes = np.array([(bucket_of == b).sum() for b in range(len(means))], dtype=np.float64)
        rel_neg = step(means[None, :] - p[:, None], delta)  # (P, B)
        num_fp = (rel_neg * sizes[None, :]).sum(1)
    else:
        rel_neg = step(s[neg][None, :] - p[:, None], delta)  # (P, N)
        num_fp = rel_neg.sum(1)
    rel_pos = step(p[None, :] - p[:, None], delta)  # H(x_ij), (P, P)

    if interpolated:
        # the released AP loss: ascending logits, a positive counts itself as 1, running max of precision
        spread = np.zeros(num_pos)
        errors = np.zeros(num_pos)
        best = 0.0
        for i in sorted(range(num_pos), key=lambda k: (p[k], k)):
            others = rel_pos[i].copy()
            others[i] = 0
            rank_p = 1 + others.sum()
            rank = rank_p + num_fp[i]
            prec = rank_p / rank
            if best <= prec:
                best = prec
                spread[i] = 1 / rank
            else:
                spread[i] = (1 / rank) * (1 - best) / (1 - prec)
            errors[i] = 1 - best
        rank_loss = errors.mean()
        for i in range(num_pos):
            rank_grad[pos[i]] -= errors[i]
    else:
        rank_pos = rel_pos.sum(1)
        errors = num_fp / (rank_pos + num_fp)
        rank_loss = errors.mean()
        spread = np.zeros(num_pos)
        for i in range(num_pos):
            if num_fp[i] > eps:
                rank_grad[pos[i]] -= errors[i]
                spread[i] = errors[i] / num_fp[i]
    for i in range(num_pos):
        if bucketed:
            for k in neg:
                if bucket_of[k] >= 0:
                    rank_grad[k] += rel_neg[i, bucket_of[k]] * spread[i]
        else:
            for col, k in enumerate(neg):
                rank_grad[k] += rel_neg[i, col] * spread[i]

    sort_loss = 0.0
    if with_sort:
        tp = t[pos]
        sort_err = np.zeros(num_pos)
        for i in range(num_pos):
            rank_pos_i = rel_pos[i].sum()
            current = (rel_pos[i] * (1 - tp)).sum() / rank_pos_i
            not_lower = (tp >= tp[i]).astype(np.float64)
            target = (rel_pos[i] * not_lower * (1 - tp)).sum() / (rel_pos[i] * not_lower).sum()
            sort_err[i] = current - target
            missorted = rel_pos[i] * (tp < tp[i])
            denom = missorted.sum()
            if denom > eps:
                sort_grad[pos[i]] -= sort_err[i]
                for j in range(num_pos):
                    sort_grad[pos[j]] += missorted[j] * sort_err[i] / denom
        sort_loss = sort_err.mean()
    return rank_loss, sort_loss, rank_grad / num_pos, sort_grad / num_pos


def random_problem(rng: np.random.Generator, size: int, pos_fraction: float, ignore_fraction: float = 0.1,
                   regime: str = 'early', binary: bool = False):
    """Logits and targets: positives with IoU targets in (0.1, 1], negatives 0, some ignored (-1)."""
    kind = rng.random(size)
    targets = np.zeros(size)
    pos = kind < pos_fraction
    targets[pos] = 1.0 if binary else rng.uniform(0.1, 1.0, pos.sum())
    targets[(kind >= pos_fraction) & (kind < pos_fraction + ignore_fraction)] = -1
    if regime == 'early':
        logits = rng.normal(0, 1, size)
    else:
        logits = np.where(pos, rng.normal(1, 1.5, size), rng.normal(-3, 1.5, size))
    if pos.sum() == 0:
        targets[0] = 1.0 if binary else 0.5
    return logits, targets
