"""Evaluate stored embeddings: N-way k-shot episodes, KNN identification, 1:1 verification, clustering
per group, and Lake's official runs. All from vectors: no network forward per (query, gallery) pair.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, get_metric
from oneshot.index.search import Searcher
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluation.clustering import cluster_groups
from oneshot.pipelines.evaluation.episodes import sample_episodes
from oneshot.pipelines.evaluation.knn import knn_accuracy, split_gallery_queries
from oneshot.pipelines.evaluation.prototypes import evaluate_episodes, evaluate_runs
from oneshot.pipelines.evaluation.verification import (
    calibrate_threshold,
    pair_scores,
    sample_pairs,
    verification_report,
)


def has_groups(table: pd.DataFrame) -> bool:
    """Whether the rows carry groups (alphabets), so episodes can be drawn within one group."""
    return bool(table["group"].astype(bool).any())


def oneshot_episodes(table: pd.DataFrame, n_way: int = 20, k_shot: int = 1, n_episodes: int = 1000,
                     within_group: bool = True, seed: int = 0) -> list:
    """The seeded episodes :func:`oneshot_accuracy` scores (one query per class), for callers that score
    many embeddings of the same ``table`` (rows with ``label`` and ``group``) on the same episodes."""
    groups = table["group"].to_numpy(dtype=object) if within_group else None
    return sample_episodes(table["label"].to_numpy(dtype=object), groups, n_way=n_way, k_shot=k_shot,
                           n_query=1, n_episodes=n_episodes, within_group=within_group, seed=seed)


def oneshot_accuracy(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str, n_way: int = 20,
                     k_shot: int = 1, n_episodes: int = 1000, within_group: bool = True, seed: int = 0) -> dict:
    """N-way k-shot accuracy over seeded episodes (one query per class).

    Args:
        embeddings: (N, D); ``table`` rows (with ``label`` and ``group``) describe them.
    Returns:
        ``{"accuracy", "ci95", "episodes", "n_way", "k_shot", "within_group"}``.
    """
    episodes = oneshot_episodes(table, n_way, k_shot, n_episodes, within_group, seed)
    result = evaluate_episodes(embeddings, episodes, metric)
    return {"accuracy": result.accuracy, "ci95": result.ci95, "episodes": n_episodes, "n_way": n_way,
            "k_shot": k_shot, "within_group": within_group}


def knn_identification(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str, k: int = 3,
                       gallery_fraction: float = 0.3, seed: int = 0,
                       build_searcher: Callable[..., Searcher] = VectorIndex.build) -> dict:
    """The reference protocol: index ``gallery_fraction`` of each class, classify the rest by KNN.

    ``build_searcher(embeddings, table, metric)`` makes the gallery's searcher: FAISS by default,
    :class:`~oneshot.index.search.ExactSearch` for a numpy reference.

    Returns:
        ``{"accuracy", "k", "gallery", "queries"}``.
    """
    labels = table["label"].to_numpy(dtype=object)
    gallery, queries = split_gallery_queries(labels, gallery_fraction, seed)
    index = build_searcher(embeddings[gallery], table.iloc[gallery].reset_index(drop=True), metric)
    accuracy = knn_accuracy(index, embeddings[queries], labels[queries], k=k)
    return {"accuracy": accuracy, "k": k, "gallery": int(len(gallery)), "queries": int(len(queries))}


def calibration_split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Rows on which a threshold is calibrated, disjoint from those it is reported on.

    Half the classes (seeded) when at least four classes have two or more images; else half the
    images of each class. Returns (bool mask (N,), a description).
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    usable = classes[counts >= 2]
    if len(usable) >= 4:
        chosen = rng.choice(usable, len(usable) // 2, replace=False)
        return np.isin(labels, chosen), (f"pairs of {len(chosen)} classes disjoint from the "
                                         f"{len(classes) - len(chosen)} classes reported on")
    mask = np.zeros(len(labels), bool)
    for label in classes:
        rows = np.flatnonzero(labels == label)
        mask[rng.choice(rows, len(rows) // 2, replace=False)] = True
    return mask, "pairs of half the images of each class, disjoint from the images reported on"


def _pairs(labels, groups, n_pairs: int, seed: int):
    try:
        return sample_pairs(labels, n_pairs, seed, groups, groups is not None)
    except InvalidInputError:
        if groups is None:
            raise
        return sample_pairs(labels, n_pairs, seed)  # too few classes per group after the split


def pair_verification(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str, n_pairs: int = 2000,
                      seed: int = 0, threshold: float | None = None) -> dict:
    """1:1 verification on balanced pairs (negatives from the same group when there are groups).

    With no ``threshold``, it is calibrated on pairs of one part of the rows (half the classes,
    see :func:`calibration_split`) and accuracy, ROC AUC and EER are reported on ``n_pairs``
    pairs of the other part: calibration and report never share an image. A given ``threshold``
    is used on pairs of all rows.
    """
    labels = table["label"].to_numpy(dtype=object)
    groups = table["group"].to_numpy(dtype=object) if has_groups(table) else None
    if threshold is not None:
        a, b, same = _pairs(labels, groups, n_pairs, seed + 1)
        return {**verification_report(pair_scores(embeddings, a, b, metric), same, threshold),
                "threshold_source": "given"}
    calibrate, described = calibration_split(labels, seed)
    parts = []
    for rows in (np.flatnonzero(calibrate), np.flatnonzero(~calibrate)):
        part_groups = None if groups is None else groups[rows]
        a, b, same = _pairs(labels[rows], part_groups, n_pairs, seed + len(parts))
        parts.append((pair_scores(embeddings, rows[a], rows[b], metric), same))
    (cal_scores, cal_same), (scores, same) = parts
    return {**verification_report(scores, same, calibrate_threshold(cal_scores, cal_same)),
            "threshold_calibrated_on": described}


def clustering(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str,
               pca_variance: float | None = None, seed: int = 0, clusters: int | str = "truth",
               method: str = "spectral") -> tuple[dict, pd.DataFrame]:
    """Cluster each group on its own (default: as many clusters as it has classes) and score it.

    Returns:
        (group means of accuracy (one-to-one Hungarian), ARI, NMI and the relative error of the
        number of clusters, with totals; the per-group table). See
        :func:`oneshot.pipelines.evaluation.clustering.cluster_groups`.
    """
    result = cluster_groups(embeddings, table, metric, clusters, method=method, pca_variance=pca_variance, seed=seed)
    return result.summary, result.per_group


TASKS = ("oneshot", "knn", "verification", "clustering")


def evaluate(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str,
             tasks: Sequence[str] = TASKS, n_way: int = 20, k_shot: int = 1, n_episodes: int = 1000,
             within_group: bool = True, knn_k: int = 3, gallery_fraction: float = 0.3,
             pca_variance: float | None = None, seed: int = 0, threshold: float | None = None) -> dict:
    """The one evaluation entry point (``oneshot eval``, the demo and the benchmarks use it).

    Args:
        embeddings: (N, D) float32, one row per ``table`` row (``label`` and ``group`` columns).
        tasks: any of ``"oneshot"`` (N-way k-shot episodes), ``"knn"`` (index part of each class,
            classify the rest), ``"verification"`` (1:1 pairs) and ``"clustering"`` (spectral clustering per group, k = its classes).
        within_group: draw episodes inside one group when the rows have groups.
        threshold: the verification threshold; ``None`` calibrates it on other classes than
            those reported on.
    Returns:
        ``{task: result dict}`` for the asked tasks; clustering also holds a ``per_group`` list.
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise InvalidInputError(f"unknown evaluation tasks {unknown}; known: {list(TASKS)}")
    metric = get_metric(metric)
    within = bool(within_group and has_groups(table))
    results = {}
    if "oneshot" in tasks:
        results["oneshot"] = oneshot_accuracy(embeddings, table, metric, n_way, k_shot, n_episodes, within, seed)
    if "knn" in tasks:
        results["knn"] = knn_identification(embeddings, table, metric, knn_k, gallery_fraction, seed)
    if "verification" in tasks:
        results["verification"] = pair_verification(embeddings, table, metric, seed=seed, threshold=threshold)
    if "clustering" in tasks:
        summary, per_group = clustering(embeddings, table, metric, pca_variance, seed)
        results["clustering"] = {**summary, "per_group": per_group.to_dict(orient="records")}
    return results


def lake_run_errors(runs: Sequence, encode_images, metric: Metric | str) -> pd.DataFrame:
    """Error of each of Lake's official runs.

    Args:
        runs: :class:`data.lake_runs.LakeRun` objects.
        encode_images: ``list of uint8 images -> float32 (n, D)``.
    Returns:
        One row per run: ``run``, ``trials``, ``errors``, ``error_rate``.
    """
    support = np.stack([encode_images(run.training_images()) for run in runs])
    queries = np.stack([encode_images(run.test_images()) for run in runs])
    answers = np.stack([run.answers for run in runs])
    rates = evaluate_runs(support, queries, answers, metric)
    trials = answers.shape[1]
    return pd.DataFrame({"run": [r.name for r in runs], "trials": trials,
                         "errors": np.rint(rates * trials).astype(int), "error_rate": rates})
