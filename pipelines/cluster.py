"""KMeans clustering of unseen classes, scored against their true labels (ARI, NMI)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import faiss
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from index.metric import Metric, as_matrix, get_metric
from index.pca import apply_pca

logger = logging.getLogger(__name__)

# (x (N, D) float32, k, seed, spherical) -> assignments int64 (N,)
KMeansFn = Callable[..., np.ndarray]


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 3,
    spherical: bool = False,
) -> np.ndarray:
    """Cluster rows with ``faiss.Kmeans`` and return each row's cluster.

    Args:
        x: (N, D) vectors.
        k: number of clusters, 1 <= k <= N.
        seed: FAISS k-means seed.
        niter: iterations per run.
        nredo: runs; the best (lowest objective) is kept.
        spherical: normalise centroids (for cosine).

    Returns:
        (N,) int64 cluster index in [0, k).
    """
    x = as_matrix(x, "x")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be an int in [1, {x.shape[0]}] (the number of rows), got {k!r}")
    km = faiss.Kmeans(
        x.shape[1],
        int(k),
        niter=int(niter),
        nredo=int(nredo),
        seed=int(seed),
        spherical=bool(spherical),
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, x.shape[0]),
    )
    km.train(x)
    _, assignment = km.index.search(x, 1)
    return assignment.reshape(-1).astype(np.int64)


def cluster_groups(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    metric: Metric | str,
    pca_variance: float | None = None,
    seed: int = 0,
    kmeans_fn: KMeansFn = kmeans,
) -> pd.DataFrame:
    """Cluster each group's images into as many clusters as it has classes.

    Args:
        embeddings: (N, D).
        labels: (N,) true class of each row.
        groups: (N,) group of each row (e.g. alphabet), or None for one group ``"all"``.
        metric: cosine normalises rows (and re-normalises after PCA) and uses spherical KMeans;
            l2 and l1 cluster in euclidean space.
        pca_variance: when set, PCA keeping this share of variance, fitted per group on that
            group's embeddings only.
        seed: KMeans seed.
        kmeans_fn: the clustering function, same signature as :func:`kmeans` (swap in tests).

    Returns:
        One row per group: ``group``, ``n_images``, ``n_classes``, ``ari``, ``nmi``.
        :func:`summarize_clusters` averages it.
    """
    metric = get_metric(metric)
    emb = metric.prepare(as_matrix(embeddings, "embeddings"))
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (emb.shape[0],):
        raise ValueError(f"labels: expected shape ({emb.shape[0]},), got {labels.shape}")
    if groups is None:
        groups = np.full(emb.shape[0], "all", dtype=object)
    groups = np.asarray(groups, dtype=object)
    if groups.shape != labels.shape:
        raise ValueError(f"groups: expected shape {labels.shape}, got {groups.shape}")
    if emb.shape[0] == 0:
        raise ValueError("embeddings: nothing to cluster")
    group_keys = groups.astype(str)
    label_keys = labels.astype(str)
    rows = []
    for group in np.unique(group_keys):
        members = np.flatnonzero(group_keys == group)
        x = emb[members]
        truth = label_keys[members]
        n_classes = int(np.unique(truth).size)
        if pca_variance is not None and x.shape[0] >= 2:
            x = apply_pca(x, pca_variance, seed)
            if metric.normalizes:
                x = metric.prepare(x)
        assignment = kmeans_fn(x, n_classes, seed=seed, spherical=metric.normalizes)
        rows.append(
            {
                "group": groups[members[0]],
                "n_images": int(members.size),
                "n_classes": n_classes,
                "ari": float(adjusted_rand_score(truth, assignment)),
                "nmi": float(normalized_mutual_info_score(truth, assignment)),
            }
        )
        logger.debug("group %s: ARI %.3f NMI %.3f", group, rows[-1]["ari"], rows[-1]["nmi"])
    return pd.DataFrame(rows, columns=["group", "n_images", "n_classes", "ari", "nmi"])


def summarize_clusters(per_group: pd.DataFrame) -> dict[str, float]:
    """Mean ARI and NMI over groups (each group weighs the same) and the totals.

    Args:
        per_group: the output of :func:`cluster_groups`.

    Returns:
        ``{"n_groups", "n_images", "n_classes", "ari", "nmi"}``.
    """
    missing = [c for c in ("n_images", "n_classes", "ari", "nmi") if c not in per_group.columns]
    if missing or len(per_group) == 0:
        raise ValueError(f"expected a non-empty cluster_groups table, missing columns {missing}")
    return {
        "n_groups": int(len(per_group)),
        "n_images": int(per_group["n_images"].sum()),
        "n_classes": int(per_group["n_classes"].sum()),
        "ari": float(per_group["ari"].mean()),
        "nmi": float(per_group["nmi"].mean()),
    }
