"""Small shared helpers: accuracy, confidence intervals, strict top-1, threshold sweeps."""
from __future__ import annotations

import numpy as np

from oneshot.errors import InvalidInputError

Z_95 = 1.96


def accuracy(predicted: np.ndarray, expected: np.ndarray) -> float:
    """Share of positions where ``predicted == expected``.

    Args:
        predicted: (N,) labels (any comparable type).
        expected: (N,) labels.
    """
    predicted = np.asarray(predicted, dtype=object)
    expected = np.asarray(expected, dtype=object)
    if predicted.shape != expected.shape or predicted.ndim != 1:
        raise InvalidInputError(
            "expected two 1-D arrays of the same length, "
            f"got {predicted.shape} and {expected.shape}"
        )
    if predicted.shape[0] == 0:
        raise InvalidInputError("accuracy of an empty set is undefined")
    return float(np.mean(predicted == expected))


def confidence_interval95(values: np.ndarray) -> float:
    """Half-width of the normal 95% confidence interval of the mean: ``1.96 * std / sqrt(n)``.

    ``std`` is the sample standard deviation (ddof=1); 0.0 for a single value.

    Args:
        values: (n,) per-episode (or per-run) scores.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] == 0:
        raise InvalidInputError(f"expected a non-empty 1-D array, got shape {values.shape}")
    if values.shape[0] == 1:
        return 0.0
    return float(Z_95 * values.std(ddof=1) / np.sqrt(values.shape[0]))


def strictly_best(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Whether the target column scores strictly higher than every other column.

    A tie with another column counts as wrong, so identical vectors never look correct.

    Args:
        scores: (Q, C) scores, higher = better.
        target: (Q,) int column of the true answer.

    Returns:
        (Q,) bool.
    """
    scores = np.asarray(scores)
    target = np.asarray(target, dtype=np.int64)
    if scores.ndim != 2 or target.shape != (scores.shape[0],):
        raise InvalidInputError(
            f"expected scores (Q, C) and target (Q,), got {scores.shape} and {target.shape}"
        )
    if target.size and (target.min() < 0 or target.max() >= scores.shape[1]):
        raise InvalidInputError(
            f"target must be in [0, {scores.shape[1]}), got {target.min()}..{target.max()}"
        )
    rows = np.arange(scores.shape[0])
    true = scores[rows, target]
    others = scores.astype(np.float64, copy=True)
    others[rows, target] = -np.inf
    return true > others.max(axis=1)


def best_threshold(
    positive: np.ndarray,
    negative: np.ndarray,
    positive_weight: float = 1.0,
    negative_weight: float = 1.0,
) -> tuple[float, float]:
    """Threshold maximising ``positive_weight * #(pos >= t) + negative_weight * #(neg < t)``.

    Every cut between distinct scores is tried; the returned threshold is the midpoint between
    the two scores around the best cut (the lowest such cut when several tie).

    Args:
        positive: (P,) scores that should be accepted (>= threshold).
        negative: (M,) scores that should be rejected (< threshold).
        positive_weight, negative_weight: weight of each correct decision.

    Returns:
        (threshold, objective value at that threshold).
    """
    positive = np.asarray(positive, dtype=np.float64).reshape(-1)
    negative = np.asarray(negative, dtype=np.float64).reshape(-1)
    if positive.size + negative.size == 0:
        raise InvalidInputError("no scores to calibrate on")
    if not (np.isfinite(positive).all() and np.isfinite(negative).all()):
        raise InvalidInputError("scores must be finite")
    values = np.unique(np.concatenate([positive, negative]))
    # Candidate i accepts scores >= values[i]; candidate len(values) rejects everything.
    accepted_pos = positive.size - np.searchsorted(np.sort(positive), values, side="left")
    rejected_neg = np.searchsorted(np.sort(negative), values, side="left")
    objective = np.concatenate(
        [
            positive_weight * accepted_pos + negative_weight * rejected_neg,
            [negative_weight * negative.size],
        ]
    )
    best = int(np.argmax(objective))
    if best == 0:
        threshold = float(values[0])
    else:
        threshold = threshold_between(
            values[best - 1], values[best] if best < values.size else None
        )
    return threshold, float(objective[best])


def threshold_between(low: float, high: float | None) -> float:
    """A threshold ``t`` with ``low < t <= high`` (the midpoint when possible).

    ``t`` stays above ``low`` also when scores are compared in float32, so ``score >= t``
    rejects ``low`` and accepts ``high``. With ``high=None``, the next float above ``low``.
    """
    low = float(low)
    above = float(np.nextafter(np.float32(low), np.float32(np.inf)))
    if high is None:
        return max(above, float(np.nextafter(low, np.inf)))
    threshold = (low + float(high)) / 2.0
    if threshold > low and np.float32(threshold) > np.float32(low):
        return threshold
    return float(high)


def label_arrays(labels, groups=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``labels`` as a (N,) object array and ``groups`` (when given) as one of the same shape; other shapes raise."""
    labels = np.asarray(labels, dtype=object)
    if labels.ndim != 1:
        raise InvalidInputError(f"labels: expected a 1-D array, got shape {labels.shape}")
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        if groups.shape != labels.shape:
            raise InvalidInputError(f"groups: expected shape {labels.shape}, got {groups.shape}")
    return labels, groups
