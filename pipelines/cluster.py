"""KMeans clustering of unseen classes, scored against their true labels (ARI, NMI)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import faiss
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, as_matrix, get_metric
from oneshot.index.pca import apply_pca

logger = logging.getLogger(__name__)

# (x (N, D) float32, k, seed, spherical) -> assignments int64 (N,)
KMeansFn = Callable[..., np.ndarray]


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance.

    Args:
        x: (N, D) float32.
        k: number of centroids, <= N.
        rng: random generator.

    Returns:
        (k, D) float32 C-contiguous initial centroids (rows of ``x``).
    """
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    closest = ((x - x[chosen[0]]) ** 2).sum(axis=1, dtype=np.float64)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: take any unused rows
            unused = np.setdiff1d(np.arange(n), chosen)
            chosen.append(int(rng.choice(unused)))
        else:
            chosen.append(int(rng.choice(n, p=closest / total)))
        closest = np.minimum(closest, ((x - x[chosen[-1]]) ** 2).sum(axis=1, dtype=np.float64))
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 3,
    spherical: bool = False,
) -> np.ndarray:
    """Cluster rows with ``faiss.Kmeans`` and return each row's cluster.

    Each of the ``nredo`` runs starts from a k-means++ seeding (drawn with ``seed``) and runs
    FAISS Lloyd iterations; the run with the lowest objective wins. (FAISS alone seeds with
    random rows, which often leaves two centroids in one cluster.)

    Args:
        x: (N, D) vectors.
        k: number of clusters, 1 <= k <= N.
        seed: seed of the seeding and of FAISS.
        niter: iterations per run.
        nredo: runs; the best (lowest objective) is kept.
        spherical: normalise centroids (for cosine).

    Returns:
        (N,) int64 cluster index in [0, k).
    """
    x = as_matrix(x, "x")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise InvalidInputError(f"k must be an int in [1, {x.shape[0]}] (the number of rows), got {k!r}")
    if nredo < 1 or niter < 1:
        raise InvalidInputError(f"niter and nredo must be >= 1, got {niter} and {nredo}")
    rng = np.random.default_rng(seed)
    best_obj, best = np.inf, None
    for redo in range(int(nredo)):
        km = faiss.Kmeans(
            x.shape[1],
            int(k),
            niter=int(niter),
            nredo=1,
            seed=int(seed) + redo,
            spherical=bool(spherical),
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=max(256, x.shape[0]),
        )
        init = kmeans_plus_plus(x, int(k), rng)
        if spherical:
            init /= np.maximum(np.linalg.norm(init, axis=1, keepdims=True), 1e-12)
        km.train(x, init_centroids=init)
        _, assignment = km.index.search(x, 1)
        # FAISS reports summed squared distances, or summed inner products when spherical.
        obj = -float(km.obj[-1]) if spherical else float(km.obj[-1])
        if best is None or obj < best_obj:
            best_obj, best = obj, assignment.reshape(-1).astype(np.int64)
    return best


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
        raise InvalidInputError(f"labels: expected shape ({emb.shape[0]},), got {labels.shape}")
    if groups is None:
        groups = np.full(emb.shape[0], "all", dtype=object)
    groups = np.asarray(groups, dtype=object)
    if groups.shape != labels.shape:
        raise InvalidInputError(f"groups: expected shape {labels.shape}, got {groups.shape}")
    if emb.shape[0] == 0:
        raise InvalidInputError("embeddings: nothing to cluster")
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
        raise InvalidInputError(f"expected a non-empty cluster_groups table, missing columns {missing}")
    return {
        "n_groups": int(len(per_group)),
        "n_images": int(per_group["n_images"].sum()),
        "n_classes": int(per_group["n_classes"].sum()),
        "ari": float(per_group["ari"].mean()),
        "nmi": float(per_group["nmi"].mean()),
    }
