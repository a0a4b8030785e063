"""N-way k-shot evaluation with prototypes over stored embeddings."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, as_matrix, get_metric
from oneshot.pipelines.evaluation.episodes import Episode
from oneshot.pipelines.evaluation.metrics import confidence_interval95, strictly_best

logger = logging.getLogger(__name__)


@dataclass
class OneShotResult:
    """Accuracy over episodes.

    Attributes:
        accuracy: mean of ``per_episode``.
        per_episode: (n_episodes,) float64 accuracy of each episode.
        ci95: half-width of the 95% confidence interval of ``accuracy`` over episodes.
    """

    accuracy: float
    per_episode: np.ndarray
    ci95: float

    @property
    def n_episodes(self) -> int:
        return int(self.per_episode.shape[0])


def prototypes(support: np.ndarray, metric: Metric | str) -> np.ndarray:
    """Class prototypes: the mean of each class's prepared support vectors, prepared again.

    Args:
        support: (n_way, k_shot, D) support vectors.
        metric: for cosine, vectors are normalised before and after averaging.

    Returns:
        (n_way, D) float32.
    """
    metric = get_metric(metric)
    support = np.asarray(support)
    if support.ndim != 3:
        raise InvalidInputError(f"support: expected (n_way, k_shot, D), got shape {support.shape}")
    n_way, k_shot, dim = support.shape
    prepared = metric.prepare(support.reshape(n_way * k_shot, dim)).reshape(n_way, k_shot, dim)
    return metric.prepare(prepared.mean(axis=1))


def episode_scores(support: np.ndarray, queries: np.ndarray, metric: Metric | str) -> np.ndarray:
    """(n_way, k_shot, D) support and (n_query, D) queries -> (n_query, n_way) similarity of each
    query to each class's prototype."""
    metric = get_metric(metric)
    return metric.similarity(queries, prototypes(support, metric))


def episode_correct(
    support: np.ndarray, queries: np.ndarray, target: np.ndarray, metric: Metric | str
) -> np.ndarray:
    """Whether each query's own class scores strictly highest (a tie counts as wrong).

    Args:
        support: (n_way, k_shot, D).
        queries: (n_query, D).
        target: (n_query,) position of each query's class in ``support``.
        metric: the similarity.

    Returns:
        (n_query,) bool.
    """
    return strictly_best(episode_scores(support, queries, metric), target)


def evaluate_episodes(
    embeddings: np.ndarray, episodes: Sequence[Episode], metric: Metric | str
) -> OneShotResult:
    """Prototype accuracy over sampled episodes.

    Args:
        embeddings: (N, D) vectors; episodes index their rows.
        episodes: from :func:`oneshot.pipelines.evaluation.episodes.sample_episodes`.
        metric: the similarity.

    Returns:
        :class:`OneShotResult`.
    """
    metric = get_metric(metric)
    emb = metric.prepare(as_matrix(embeddings, "embeddings"))
    if len(episodes) == 0:
        raise InvalidInputError("episodes: expected at least one episode, got none")
    per_episode = np.empty(len(episodes), dtype=np.float64)
    n = emb.shape[0]
    for e, episode in enumerate(episodes):
        support = np.asarray(episode.support, dtype=np.int64)
        query = np.asarray(episode.query, dtype=np.int64)
        for name, rows in (("support", support), ("query", query)):
            if rows.size and (rows.min() < 0 or rows.max() >= n):
                raise InvalidInputError(f"episode {e}: {name} rows must be in [0, {n}), got {rows.max()}")
        if support.ndim != 2:
            raise InvalidInputError(f"episode {e}: support must be (n_way, k_shot), got {support.shape}")
        correct = episode_correct(emb[support], emb[query], episode.query_target, metric)
        per_episode[e] = correct.mean()
    accuracy = float(per_episode.mean())
    ci = confidence_interval95(per_episode)
    logger.info("one-shot accuracy %.4f +- %.4f over %d episodes", accuracy, ci, len(episodes))
    return OneShotResult(accuracy=accuracy, per_episode=per_episode, ci95=ci)


def evaluate_runs(
    support: np.ndarray, queries: np.ndarray, answers: np.ndarray, metric: Metric | str
) -> np.ndarray:
    """Error rate of each fixed run (e.g. Lake's 20 official 20-way one-shot runs).

    Each run compares every query with every support vector (one per class) and is right when
    the answer's support vector scores strictly highest; a tie counts as an error.

    Args:
        support: (R, n_way, D) one support vector per class.
        queries: (R, n_query, D).
        answers: (R, n_query) index into the run's support of each query's class.
        metric: the similarity.

    Returns:
        (R,) float64 error rate per run; the official score is its mean.
    """
    metric = get_metric(metric)
    support = np.asarray(support)
    queries = np.asarray(queries)
    answers = np.asarray(answers)
    if support.ndim != 3 or queries.ndim != 3:
        raise InvalidInputError(
            "expected support (R, n_way, D) and queries (R, n_query, D), "
            f"got {support.shape} and {queries.shape}"
        )
    runs, n_way, dim = support.shape
    if queries.shape[0] != runs or queries.shape[2] != dim:
        raise InvalidInputError(f"queries: expected (R={runs}, n_query, D={dim}), got {queries.shape}")
    if answers.shape != queries.shape[:2] or not np.issubdtype(answers.dtype, np.integer):
        raise InvalidInputError(
            f"answers: expected int (R, n_query) = {queries.shape[:2]}, "
            f"got {answers.dtype} {answers.shape}"
        )
    errors = np.empty(runs, dtype=np.float64)
    for r in range(runs):
        scores = metric.similarity(queries[r], support[r])
        errors[r] = 1.0 - strictly_best(scores, answers[r]).mean()
    return errors
