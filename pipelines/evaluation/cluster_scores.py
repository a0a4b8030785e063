"""Scores of a clustering against true labels: one-to-one (Hungarian) accuracy, ARI, NMI, and
the error of the number of clusters."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from oneshot.errors import InvalidInputError


def contingency(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (class, cluster) pairs.

    Args:
        truth: (N,) class of each item (any hashable values).
        predicted: (N,) cluster of each item.

    Returns:
        (n_classes, n_clusters) int64 counts, rows and columns in sorted order of the values.
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape or truth.ndim != 1:
        raise InvalidInputError(f"truth and predicted must be 1-D of the same length, got {truth.shape} and {predicted.shape}")
    _, rows = np.unique(truth, return_inverse=True)
    _, cols = np.unique(predicted, return_inverse=True)
    table = np.zeros((rows.max(initial=-1) + 1, cols.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (rows, cols), 1)
    return table


def hungarian_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of items whose cluster is matched to their class under the best one-to-one matching.

    Each class is matched to at most one cluster and each cluster to at most one class
    (``scipy.optimize.linear_sum_assignment`` maximising matched items); items of unmatched
    clusters, and of clusters matched to another class, count as wrong.

    Args:
        truth: (N,) classes.
        predicted: (N,) clusters.

    Returns:
        Accuracy in [0, 1] (0 for empty input).
    """
    table = contingency(truth, predicted)
    if table.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def clustering_scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Hungarian accuracy, ARI, NMI, the number of clusters and classes and the relative error.

    Returns:
        ``{"accuracy", "ari", "nmi", "n_clusters", "n_classes", "k_relative_error"}`` where
        ``k_relative_error = |n_clusters - n_classes| / n_classes``.
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    n_classes = int(np.unique(truth).size)
    n_clusters = int(np.unique(predicted).size)
    return {
        "accuracy": hungarian_accuracy(truth, predicted),
        "ari": float(adjusted_rand_score(truth, predicted)),
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "n_clusters": n_clusters,
        "n_classes": n_classes,
        "k_relative_error": abs(n_clusters - n_classes) / max(n_classes, 1),
    }
