"""KMeans with FAISS: k-means++ seeding and restarts, spherical for cosine (``oneshot cluster --method kmeans``)."""
from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.index.metric import as_matrix

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
    nredo: int = 10,
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
