"""K-nearest-neighbour classification against any :class:`oneshot.index.search.Searcher` (FAISS or exact)."""
from __future__ import annotations

import logging

import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.index.search import Searcher
from oneshot.pipelines.evaluation.metrics import accuracy, label_arrays

logger = logging.getLogger(__name__)

WEIGHTINGS = ("vote", "distance")
_DISTANCE_EPS = 1e-6


def _neighbours(
    index: Searcher, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (scores, ids, labels) with each query's excluded id removed."""
    if exclude_ids is None:
        result = index.search(queries, k)
        return result.scores, result.ids, result.labels
    exclude_ids = np.asarray(exclude_ids, dtype=np.int64)
    n_queries = np.asarray(queries).shape[0] if np.ndim(queries) == 2 else -1
    if exclude_ids.shape != (n_queries,):
        raise InvalidInputError(f"exclude_ids: expected shape ({n_queries},), got {exclude_ids.shape}")
    result = index.search(queries, k + 1)
    # An exclude id of -1 excludes nothing (and must not drop padding).
    keep = (result.ids != exclude_ids[:, None]) | (exclude_ids[:, None] == -1)
    # Keep the first k kept columns of each row (drops the excluded id, or the last column).
    # Ids are unique, so every row keeps exactly k columns.
    keep &= np.cumsum(keep, axis=1) <= k
    pick = np.nonzero(keep)
    shape = (result.ids.shape[0], k)
    return (
        result.scores[pick].reshape(shape),
        result.ids[pick].reshape(shape),
        result.labels[pick].reshape(shape),
    )


def knn_classify(
    index: Searcher,
    queries: np.ndarray,
    k: int = 5,
    exclude_ids: np.ndarray | None = None,
    weighting: str = "vote",
) -> tuple[np.ndarray, np.ndarray]:
    """Label each query by its k nearest gallery rows.

    The label with the largest vote wins ("vote": one per neighbour; "distance": ``1 / distance``
    per neighbour, distance from :meth:`index.metric.Metric.distance`); ties are broken by the
    summed similarity of the tied labels' neighbours, then by the nearest neighbour.

    Args:
        index: the gallery.
        queries: (Q, D).
        k: neighbours per query (>= 1).
        exclude_ids: (Q,) gallery id each query must skip (its own id when queries are also in
            the gallery: leave-one-out), or None.
        weighting: "vote" or "distance".

    Returns:
        ``(labels, scores)``: (Q,) object predicted labels (None when the gallery gave no
        neighbour) and (Q,) float32 similarity of the nearest neighbour carrying the predicted
        label (NaN when none).
    """
    if weighting not in WEIGHTINGS:
        raise InvalidInputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be an int >= 1, got {k!r}")
    scores, ids, labels = _neighbours(index, queries, int(k), exclude_ids)
    n_queries = ids.shape[0]
    valid = ids != -1
    if n_queries == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.float32)

    # Label codes per neighbour; -1 marks a missing neighbour.
    _, codes = np.unique(np.where(valid, labels, "").astype(str), return_inverse=True)
    codes = np.where(valid, codes.reshape(ids.shape), -1)
    if weighting == "vote":
        weights = valid.astype(np.float64)
    else:
        distance = index.metric.distance(np.where(valid, scores, 0.0)).astype(np.float64)
        weights = np.where(valid, 1.0 / np.maximum(distance, _DISTANCE_EPS), 0.0)
    similarity = np.where(valid, scores, 0.0).astype(np.float64)

    # same[q, i, j]: neighbours i and j of query q share a label.
    same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    votes = np.einsum("qij,qj->qi", same, weights)
    summed = np.einsum("qij,qj->qi", same, similarity)
    # A label is represented by its first (nearest) neighbour, so the first-position rule also
    # picks the nearest on the last tie.
    first = np.argmax(same, axis=2) == np.arange(ids.shape[1])[None, :]
    candidate = valid & first
    best_votes = np.where(candidate, votes, -np.inf).max(axis=1, keepdims=True)
    candidate &= votes == best_votes
    best_summed = np.where(candidate, summed, -np.inf).max(axis=1, keepdims=True)
    candidate &= summed == best_summed
    winner = np.argmax(candidate, axis=1)  # lowest position = nearest

    rows = np.arange(n_queries)
    has_any = valid.any(axis=1)
    predicted = np.where(has_any, labels[rows, winner], None).astype(object)
    out_scores = np.where(has_any, scores[rows, winner], np.nan).astype(np.float32)
    return predicted, out_scores


def knn_accuracy(
    index: Searcher,
    queries: np.ndarray,
    labels: np.ndarray,
    k: int = 5,
    exclude_ids: np.ndarray | None = None,
    weighting: str = "vote",
) -> float:
    """Share of queries whose KNN label equals ``labels``.

    Args:
        index, queries, k, exclude_ids, weighting: as in :func:`knn_classify`.
        labels: (Q,) true labels.
    """
    labels = np.asarray(labels, dtype=object)
    predicted, _ = knn_classify(index, queries, k=k, exclude_ids=exclude_ids, weighting=weighting)
    if labels.shape != predicted.shape:
        raise InvalidInputError(f"labels: expected shape {predicted.shape}, got {labels.shape}")
    value = accuracy(predicted, labels)
    logger.info("%d-NN accuracy %.4f over %d queries", k, value, len(labels))
    return value


def split_gallery_queries(
    labels: np.ndarray, gallery_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split each class's rows into gallery and queries (reference protocol: 30% / 70%).

    Each class puts ``round(gallery_fraction * n)`` rows, clipped to [1, n - 1], in the gallery
    and the rest in the queries, so both sides see every class.

    Args:
        labels: (N,) class of each row.
        gallery_fraction: share of each class in the gallery, in (0, 1).
        seed: seed of ``np.random.default_rng``.

    Returns:
        ``(gallery_rows, query_rows)``: sorted int64 row indices.

    Raises:
        ValueError: a class with fewer than 2 rows (named), or a fraction out of range.
    """
    if not 0.0 < gallery_fraction < 1.0:
        raise InvalidInputError(f"gallery_fraction must be in (0, 1), got {gallery_fraction}")
    labels, _ = label_arrays(labels)
    classes, inverse, counts = np.unique(
        labels.astype(str), return_inverse=True, return_counts=True
    )
    small = classes[counts < 2]
    if small.size:
        raise InvalidInputError(
            f"{small.size} class(es) have fewer than 2 rows, cannot split: {list(small[:5])}"
        )
    rng = np.random.default_rng(seed)
    # Shuffle rows, then group by class: each class's rows appear in random order.
    shuffled = rng.permutation(labels.shape[0])
    shuffled = shuffled[np.argsort(inverse[shuffled], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_gallery = np.clip(np.rint(gallery_fraction * counts).astype(np.int64), 1, counts - 1)
    rank = np.arange(labels.shape[0]) - np.repeat(starts, counts)
    in_gallery = rank < np.repeat(n_gallery, counts)
    gallery = np.sort(shuffled[in_gallery]).astype(np.int64)
    queries = np.sort(shuffled[~in_gallery]).astype(np.int64)
    return gallery, queries
