"""1:1 verification: are two images the same class? Pairs, scores, threshold, report."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, as_matrix, get_metric
from oneshot.pipelines.evaluation.metrics import best_threshold, label_arrays, threshold_between

logger = logging.getLogger(__name__)

_PAIR_BLOCK = 65536


def _csr(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group rows by key: (unique keys, per-row code, rows sorted by code, start of each code)."""
    unique, codes, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return unique, codes.reshape(-1), order, starts


def _distinct_positions(rng: np.random.Generator, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two different positions below each size (every size >= 2): (i, j) int64 arrays."""
    i = rng.integers(sizes)
    j = rng.integers(sizes - 1)
    return i, j + (j >= i)


def _pairs_within(rng: np.random.Generator, counts: np.ndarray, order: np.ndarray, starts: np.ndarray, n: int,
                  none_message: str) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of two distinct members of one bucket (of a CSR grouping), buckets with 2+ members drawn uniformly."""
    eligible = np.flatnonzero(counts >= 2)
    if eligible.size == 0:
        raise InvalidInputError(none_message)
    bucket = eligible[rng.integers(eligible.size, size=n)]
    i, j = _distinct_positions(rng, counts[bucket])
    return order[starts[bucket] + i], order[starts[bucket] + j]


def sample_pairs(
    labels: np.ndarray,
    n_pairs: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
    same_group_negatives: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample balanced verification pairs: half same-class, half different-class.

    Same-class pairs: a class with at least 2 rows uniformly, then two distinct rows of it.
    Different-class pairs: two distinct classes uniformly (both from one group, when
    ``same_group_negatives``, which makes negatives harder), then one row of each. Pairs are
    drawn with replacement (a pair may repeat) and returned in shuffled order.

    Args:
        labels: (N,) class of each row.
        n_pairs: total pairs (>= 2); ``n_pairs // 2`` are same-class.
        seed: seed of ``np.random.default_rng``.
        groups: (N,) group of each row; required for ``same_group_negatives``.
        same_group_negatives: draw each negative pair's classes from a single group.

    Returns:
        ``(a, b, same)``: (n_pairs,) int64 row indices and (n_pairs,) bool.
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 2:
        raise InvalidInputError(f"n_pairs must be an int >= 2, got {n_pairs!r}")
    labels, _ = label_arrays(labels)
    if same_group_negatives and groups is None:
        raise InvalidInputError("same_group_negatives=True needs groups")
    rng = np.random.default_rng(seed)
    classes, codes, order, starts = _csr(labels.astype(str))
    counts = np.bincount(codes, minlength=classes.size)
    n_same = int(n_pairs) // 2
    n_diff = int(n_pairs) - n_same

    # Same-class pairs.
    same_a, same_b = _pairs_within(rng, counts, order, starts, n_same,
                                   "no class has 2 or more rows: cannot make same-class pairs")

    # Different-class pairs, as pairs of distinct classes.
    if same_group_negatives:
        _, groups = label_arrays(labels, groups)
        class_group = np.empty(classes.size, dtype=object)
        group_keys = groups.astype(str)
        for code in range(classes.size):
            found = np.unique(group_keys[order[starts[code] : starts[code] + counts[code]]])
            if found.size != 1:
                raise InvalidInputError(f"class {classes[code]!r} spans groups {list(found)}")
            class_group[code] = found[0]
        g_keys, g_codes, g_order, g_starts = _csr(class_group.astype(str))
        g_counts = np.bincount(g_codes, minlength=g_keys.size)
        c1, c2 = _pairs_within(rng, g_counts, g_order, g_starts, n_diff,
                               "no group has 2 or more classes: cannot make same-group negatives")
    else:
        if classes.size < 2:
            raise InvalidInputError("only one class: cannot make different-class pairs")
        c1 = rng.integers(classes.size, size=n_diff)
        c2 = rng.integers(classes.size - 1, size=n_diff)
        c2 = c2 + (c2 >= c1)
    diff_a = order[starts[c1] + rng.integers(counts[c1])]
    diff_b = order[starts[c2] + rng.integers(counts[c2])]

    a = np.concatenate([same_a, diff_a]).astype(np.int64)
    b = np.concatenate([same_b, diff_b]).astype(np.int64)
    same = np.concatenate([np.ones(n_same, bool), np.zeros(n_diff, bool)])
    shuffle = rng.permutation(n_pairs)
    return a[shuffle], b[shuffle], same[shuffle]


def pair_scores(
    embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, metric: Metric | str
) -> np.ndarray:
    """Similarity of each pair of rows (higher = more likely the same class).

    Args:
        embeddings: (N, D).
        a: (P,) row indices.
        b: (P,) row indices.
        metric: the similarity.

    Returns:
        (P,) float32.
    """
    metric = get_metric(metric)
    emb = as_matrix(embeddings, "embeddings")
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.ndim != 1 or a.shape != b.shape:
        raise InvalidInputError(f"a and b: expected two (P,) arrays, got {a.shape} and {b.shape}")
    n = emb.shape[0]
    for name, rows in (("a", a), ("b", b)):
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise InvalidInputError(f"{name}: row indices must be in [0, {n})")
    out = np.empty(a.shape[0], dtype=np.float32)
    for start in range(0, a.shape[0], _PAIR_BLOCK):
        stop = start + _PAIR_BLOCK
        out[start:stop] = metric.pairwise(emb[a[start:stop]], emb[b[start:stop]])
    return out


def _check_scores(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same)
    if scores.ndim != 1 or same.shape != scores.shape:
        raise InvalidInputError(f"expected scores (P,) and same (P,), got {scores.shape} and {same.shape}")
    if same.dtype != bool:
        if not np.isin(same, (0, 1)).all():
            raise InvalidInputError("same: expected booleans (or 0/1)")
        same = same.astype(bool)
    if not np.isfinite(scores).all():
        raise InvalidInputError("scores: contains NaN or infinite values")
    return scores, same


def calibrate_threshold(
    scores: np.ndarray, same: np.ndarray, target_far: float | None = None
) -> float:
    """Choose the threshold above which (``score >= t``) a pair is called "same".

    Args:
        scores: (P,) pair similarities.
        same: (P,) bool truth.
        target_far: when None, the threshold maximising accuracy. Otherwise the lowest threshold
            whose false-accept rate (share of different pairs accepted) is <= target_far.

    Returns:
        The threshold.
    """
    scores, same = _check_scores(scores, same)
    if target_far is None:
        threshold, _ = best_threshold(scores[same], scores[~same])
        return threshold
    if not 0.0 <= target_far <= 1.0:
        raise InvalidInputError(f"target_far must be in [0, 1], got {target_far}")
    negative = np.sort(scores[~same])
    if negative.size == 0:
        raise InvalidInputError("target_far needs different-class pairs")
    # Accepting scores >= t lets through negatives >= t; allow at most floor(far * M).
    allowed = int(np.floor(target_far * negative.size + 1e-9))
    if allowed >= negative.size:
        return float(min(scores.min(), negative[0]))
    # Strictly above the (M - allowed)-th lowest negative, up to the next score.
    low = negative[negative.size - allowed - 1]
    higher = scores[scores > low]
    return threshold_between(low, higher.min() if higher.size else None)


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """Rate where the false-accept and false-reject rates are equal (interpolated on the ROC)."""
    scores, same = _check_scores(scores, same)
    fpr, tpr, _ = roc_curve(same, scores)
    fnr = 1.0 - tpr
    diff = fpr - fnr
    i = int(np.flatnonzero(diff >= 0)[0])
    if i == 0 or diff[i] == 0:
        return float((fpr[i] + fnr[i]) / 2.0)
    # Linear interpolation between points i-1 (fpr < fnr) and i (fpr >= fnr).
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def verification_report(
    scores: np.ndarray, same: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """Accuracy at a threshold, ROC AUC and equal error rate.

    Args:
        scores: (P,) pair similarities.
        same: (P,) bool truth; both classes must be present.
        threshold: decision threshold; None calibrates it on these same pairs (optimistic: pass
            a threshold calibrated on other pairs for an honest accuracy).

    Returns:
        ``{"accuracy", "roc_auc", "eer", "threshold", "far", "frr", "n_pairs"}``.
    """
    scores, same = _check_scores(scores, same)
    if same.all() or not same.any():
        raise InvalidInputError("verification needs both same-class and different-class pairs")
    if threshold is None:
        threshold = calibrate_threshold(scores, same)
    accepted = scores >= np.float64(threshold)
    return {
        "accuracy": float(np.mean(accepted == same)),
        "roc_auc": float(roc_auc_score(same, scores)),
        "eer": equal_error_rate(scores, same),
        "threshold": float(threshold),
        "far": float(accepted[~same].mean()),
        "frr": float((~accepted[same]).mean()),
        "n_pairs": int(same.size),
    }
