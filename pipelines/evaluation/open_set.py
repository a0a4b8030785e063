"""1:K identification with an "unknown" answer (open-set recognition)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.search import Searcher
from oneshot.pipelines.evaluation.knn import knn_classify
from oneshot.pipelines.evaluation.metrics import best_threshold

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
TARGETS = ("accuracy", "balanced")


def _predict(index: Searcher, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best label and its score per query: nearest neighbour (k=1) or k-NN vote."""
    if k == 1:
        result = index.search(queries, 1)
        return result.labels[:, 0], result.scores[:, 0]
    return knn_classify(index, queries, k=k)


def identify(
    index: Searcher,
    queries: np.ndarray,
    threshold: float | None,
    k: int = 1,
    unknown_label: str | None = UNKNOWN,
) -> pd.DataFrame:
    """Name each query after the gallery, or answer ``unknown_label`` when nothing is close enough.

    Args:
        index: the gallery of known classes.
        queries: (Q, D).
        threshold: a query whose best score is below it is unknown; None accepts everything.
        k: 1 for the nearest neighbour, more for a k-NN vote (score = best similarity of the
            winning label).
        unknown_label: the label given to unknown queries ("unknown" or None).

    Returns:
        Q rows: ``label`` (the answer), ``score`` (float32 similarity), ``known`` (bool) and
        ``candidate`` (the best gallery label, even when rejected).
    """
    candidate, score = _predict(index, queries, int(k))
    return decide(candidate, score, threshold, unknown_label)


def decide(candidate: np.ndarray, score: np.ndarray, threshold: float | None,
           unknown_label: str | None = UNKNOWN) -> pd.DataFrame:
    """The answer for each query from its best candidate and score: the candidate, or unknown below ``threshold``.

    Args:
        candidate: (Q,) best gallery label per query.
        score: (Q,) its similarity (NaN: no neighbour, never known).
        threshold: None accepts every query that has a neighbour.
    Returns:
        Q rows: ``label``, ``score`` (float32), ``known``, ``candidate``.
    """
    score = np.asarray(score, dtype=np.float32)
    if threshold is None:
        known = ~np.isnan(score)
    else:
        known = score >= np.float32(threshold)  # NaN (no neighbour) compares False
    label = np.where(known, candidate, unknown_label).astype(object)
    return pd.DataFrame({"label": label, "score": score, "known": known, "candidate": candidate})


def _scores_for_calibration(
    index: Searcher,
    known_queries: np.ndarray,
    known_labels: np.ndarray,
    unknown_queries: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Qk,) right label or not, (Qk,) best scores of the known queries, (Qu,) of the unknown ones."""
    known_labels = np.asarray(known_labels, dtype=object)
    candidate, known_score = _predict(index, known_queries, k)
    if known_labels.shape != candidate.shape:
        raise InvalidInputError(
            f"known_labels: expected shape {candidate.shape}, got {known_labels.shape}"
        )
    _, unknown_score = _predict(index, unknown_queries, k)
    if known_score.size == 0 or unknown_score.size == 0:
        raise InvalidInputError(f"need known and unknown queries, got {known_score.size} and {unknown_score.size}")
    correct = candidate.astype(str) == known_labels.astype(str)
    return correct, np.asarray(known_score, np.float64), np.asarray(unknown_score, np.float64)


def calibrate_unknown_threshold(
    index: Searcher,
    known_queries: np.ndarray,
    known_labels: np.ndarray,
    unknown_queries: np.ndarray,
    target: str = "accuracy",
    k: int = 1,
) -> float:
    """Threshold that best separates correctly identified known queries from unknown ones.

    A known query is right when its label is correct and its score >= threshold; an unknown
    query is right when its score < threshold. Known queries identified wrongly are wrong at
    any threshold.

    Args:
        index: the gallery of known classes.
        known_queries: (Qk, D) queries whose class is in the gallery (not gallery rows).
        known_labels: (Qk,) their true labels.
        unknown_queries: (Qu, D) queries of classes absent from the gallery.
        target: "accuracy" (right answers over all queries) or "balanced" (mean of the known
            accuracy and the unknown rejection rate).
        k: as in :func:`identify`.

    Returns:
        The threshold.
    """
    if target not in TARGETS:
        raise InvalidInputError(f"target must be one of {TARGETS}, got {target!r}")
    correct, known_score, unknown_score = _scores_for_calibration(
        index, known_queries, known_labels, unknown_queries, int(k)
    )
    n_known, n_unknown = known_score.size, unknown_score.size
    positive = known_score[correct & np.isfinite(known_score)]
    negative = unknown_score[np.isfinite(unknown_score)]
    if target == "accuracy":
        weights = (1.0, 1.0)
    else:
        weights = (1.0 / n_known, 1.0 / n_unknown)
    threshold, value = best_threshold(positive, negative, *weights)
    logger.info("unknown threshold %.4f (%s objective %.4f)", threshold, target, value)
    return threshold


def open_set_report(
    index: Searcher,
    known_queries: np.ndarray,
    known_labels: np.ndarray,
    unknown_queries: np.ndarray,
    threshold: float | None,
    k: int = 1,
) -> dict[str, float]:
    """How well identification answers known queries and rejects unknown ones.

    Args:
        index, known_queries, known_labels, unknown_queries, k: as in
            :func:`calibrate_unknown_threshold`.
        threshold: as in :func:`identify`.

    Returns:
        ``known_accuracy`` (right label and accepted), ``closed_set_accuracy`` (right label,
        threshold ignored), ``known_rejection_rate``, ``unknown_rejection_rate``,
        ``overall_accuracy`` (right answers over all queries), ``balanced_accuracy``,
        ``threshold``, ``n_known``, ``n_unknown``.
    """
    correct, known_score, unknown_score = _scores_for_calibration(
        index, known_queries, known_labels, unknown_queries, int(k)
    )
    n_known, n_unknown = known_score.size, unknown_score.size
    t = -np.inf if threshold is None else np.float32(threshold)
    known_accepted = np.float32(known_score) >= t
    unknown_rejected = ~(np.float32(unknown_score) >= t)
    known_accuracy = float(np.mean(correct & known_accepted))
    rejection = float(np.mean(unknown_rejected))
    return {
        "known_accuracy": known_accuracy,
        "closed_set_accuracy": float(np.mean(correct)),
        "known_rejection_rate": float(np.mean(~known_accepted)),
        "unknown_rejection_rate": rejection,
        "overall_accuracy": float(
            (np.sum(correct & known_accepted) + np.sum(unknown_rejected)) / (n_known + n_unknown)
        ),
        "balanced_accuracy": (known_accuracy + rejection) / 2.0,
        "threshold": None if threshold is None else float(threshold),
        "n_known": int(n_known),
        "n_unknown": int(n_unknown),
    }
