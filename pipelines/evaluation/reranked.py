"""N-way k-shot episodes with a second model re-scoring the classes the first one hesitates on
(``oneshot eval --rerank``): the same two-stage answer ``identify --rerank`` gives, on episodes.

In each episode the store's vectors rank the classes by prototype, as :func:`evaluate_episodes`
does. A query whose two best classes are closer than the re-ranker's margin (every query without
one) is answered again by the re-ranking model over its ``depth`` best classes: a class's new score
is the mean of the model's scores of the query against the class's support images (its cosine, or
its trained score with a map matcher). The query is right when its class is among those and scores
strictly highest; other queries keep the first answer.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, as_matrix, get_metric
from oneshot.pipelines.evaluation.episodes import Episode
from oneshot.pipelines.evaluation.metrics import confidence_interval95, strictly_best
from oneshot.pipelines.evaluation.prototypes import episode_scores


class RowScorer(Protocol):
    """What :func:`rerank_episodes` needs of a second model: a
    :class:`~oneshot.pipelines.engines.rerank.Reranker` bound to the rows (``bind_rows``)."""

    margin: float | None  # re-score queries whose best two classes are closer than this; None: every query
    depth: int  # classes re-scored per query

    def row_scores(self, query_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
        """int64 (Q,) and (Q, C) row ids -> float32 (Q, C) scores, higher closer, NaN where unreadable."""


# margins tried when one is chosen for a model (in its cosine; None: every query re-scored), and the share of
# re-scoring every query's gain the chosen one must keep
MARGINS = (None, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)
KEEP = 0.9


def margin_by_rule(first: float, runs: Sequence[dict], keep: float = KEEP) -> dict | None:
    """The run re-scoring the fewest queries whose gain over ``first`` (the index model alone) is at
    least ``keep`` of re-scoring every query's.

    Args:
        runs: ``{"margin", "accuracy", "reranked_share"}`` each, one of them with margin None
            (every query re-scored).
    Returns:
        That run, or None when re-scoring every query gains nothing or no margin keeps enough.
    """
    full = next(r for r in runs if r["margin"] is None)["accuracy"]
    fine = [r for r in runs if r["margin"] is not None and r["accuracy"] - first >= keep * (full - first)]
    return min(fine, key=lambda r: r["reranked_share"]) if fine and full > first else None


def best_two_gaps(scores: np.ndarray) -> np.ndarray:
    """(Q, C) scores, C >= 2 -> (Q,) the best score less the second best."""
    top_two = -np.partition(-scores, 1, axis=1)[:, :2]
    return top_two[:, 0] - top_two[:, 1]


def reranked_correct(target: np.ndarray, order: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Whether each re-scored query is right.

    Args:
        target: (Q,) each query's class.
        order: int (Q, depth), the classes re-scored, best first by the first model.
        second: (Q, depth) the re-ranking model's scores of those classes.
    Returns:
        (Q,) bool: the query's class is among ``order`` and scores strictly highest in ``second``.
    """
    inside = order == target[:, None]
    found = inside.any(axis=1)
    position = np.where(found, inside.argmax(axis=1), 0)
    return found & strictly_best(second, position)


def rerank_episodes(embeddings: np.ndarray, episodes: Sequence[Episode], metric: Metric | str,
                    row_ids: np.ndarray, reranker: RowScorer) -> dict:
    """Prototype accuracy over ``episodes`` with ``reranker`` (a :class:`RowScorer`, bound to the
    rows) answering the hesitant queries again.

    Args:
        embeddings: (N, D) the first model's vectors; episodes index their rows.
        row_ids: int64 (N,) each row's id, by which the re-ranker reads its image.
    Returns:
        ``{"accuracy", "ci95", "first_accuracy", "queries", "reranked", "changed", "unreadable",
        "seconds"}``: ``first_accuracy`` is the first model's alone on the same episodes; ``changed``
        is ``{"fixed", "broken"}``, the re-scored queries the second model turned from wrong to right
        and from right to wrong; ``unreadable``: hesitant queries kept at their first answer because
        an image could not be read.
    """
    metric = get_metric(metric)
    vectors = metric.prepare(as_matrix(embeddings, "embeddings"))
    row_ids = np.asarray(row_ids, dtype=np.int64)
    if row_ids.shape != (len(vectors),):
        raise InvalidInputError(f"row_ids: expected ({len(vectors)},), got {row_ids.shape}")
    if not episodes:
        raise InvalidInputError("episodes: expected at least one episode, got none")
    started = time.perf_counter()
    first_scores, final_scores = np.empty(len(episodes)), np.empty(len(episodes))
    counts = {"queries": 0, "reranked": 0, "fixed": 0, "broken": 0, "unreadable": 0}
    for e, episode in enumerate(episodes):
        support, query, target = episode.support, episode.query, episode.query_target
        scores = episode_scores(vectors[support], vectors[query], metric)  # (Q, n_way)
        first = strictly_best(scores, target)
        final = first.copy()
        margin = reranker.margin
        hesitant = np.ones(len(query), bool) if margin is None else best_two_gaps(scores) < margin
        rows = np.flatnonzero(hesitant)
        if len(rows):
            depth = min(reranker.depth, episode.n_way)
            order = np.argsort(-scores[rows], axis=1, kind="stable")[:, :depth]  # (H, depth) classes
            candidates = row_ids[support[order]].reshape(len(rows), -1)  # (H, depth * k_shot)
            second = reranker.row_scores(row_ids[query[rows]], candidates)
            second = second.reshape(len(rows), depth, episode.k_shot).mean(axis=2)
            readable = ~np.isnan(second).any(axis=1)
            counts["unreadable"] += int((~readable).sum())
            rows, order, second = rows[readable], order[readable], second[readable]
            final[rows] = reranked_correct(target[rows], order, second)
            counts["reranked"] += len(rows)
            counts["fixed"] += int((final[rows] & ~first[rows]).sum())
            counts["broken"] += int((first[rows] & ~final[rows]).sum())
        counts["queries"] += len(query)
        first_scores[e], final_scores[e] = first.mean(), final.mean()
    return {"accuracy": float(final_scores.mean()), "ci95": confidence_interval95(final_scores),
            "first_accuracy": float(first_scores.mean()), "queries": counts["queries"],
            "reranked": counts["reranked"], "changed": {"fixed": counts["fixed"], "broken": counts["broken"]},
            "unreadable": counts["unreadable"], "seconds": round(time.perf_counter() - started, 3)}
