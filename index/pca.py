"""PCA fitted with FAISS: choose a dimension by explained variance, fit a ``faiss.PCAMatrix``."""
from __future__ import annotations

import logging

import faiss
import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.index.metric import as_matrix

logger = logging.getLogger(__name__)

# FAISS subsamples PCA training data above this many points per input dimension; we subsample
# ourselves, with the caller's seed, so the fit is reproducible and explicit.
MAX_TRAIN_POINTS_PER_DIM = 1000


def explained_variance(x: np.ndarray) -> np.ndarray:
    """Share of the total variance carried by each principal component.

    Args:
        x: (N, D) data.

    Returns:
        (D,) float64, descending, summing to 1 (all zeros when the data has no variance).
    """
    x = as_matrix(x, "x").astype(np.float64)
    centered = x - x.mean(axis=0, keepdims=True)
    eig = np.linalg.eigvalsh(centered.T @ centered)[::-1]
    eig = np.maximum(eig, 0.0)
    total = eig.sum()
    return eig / total if total > 0 else np.zeros_like(eig)


def dim_for_variance(x: np.ndarray, variance: float) -> int:
    """Smallest number of principal components keeping at least ``variance`` of the variance.

    Args:
        x: (N, D) data the PCA will be fitted on.
        variance: share in (0, 1].

    Returns:
        An int in [1, D].
    """
    if not 0.0 < variance <= 1.0:
        raise InvalidInputError(f"pca_variance must be in (0, 1], got {variance}")
    share = explained_variance(x)
    if share.sum() == 0:
        return 1
    cumulative = np.cumsum(share)
    dim = int(np.searchsorted(cumulative, variance - 1e-9) + 1)
    return min(dim, share.shape[0])


def training_sample(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """At most ``MAX_TRAIN_POINTS_PER_DIM * D`` rows of ``x``, drawn with ``seed``."""
    limit = MAX_TRAIN_POINTS_PER_DIM * x.shape[1]
    if x.shape[0] <= limit:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=limit, replace=False))
    return np.ascontiguousarray(x[rows])


def resolve_pca_dim(
    x: np.ndarray, pca_dim: int | None, pca_variance: float | None, seed: int = 0
) -> int | None:
    """Turn the two ways of asking for PCA into one output dimension (None = no PCA).

    Args:
        x: (N, D) training data.
        pca_dim: explicit output dimension in [1, D], or None.
        pca_variance: share of variance in (0, 1] to keep, or None.
        seed: subsampling seed for large ``x``.

    Raises:
        ValueError: both given, or out of range.
    """
    if pca_dim is not None and pca_variance is not None:
        raise InvalidInputError("give pca_dim or pca_variance, not both")
    dimension = x.shape[1]
    if pca_dim is not None:
        if isinstance(pca_dim, bool) or not isinstance(pca_dim, (int, np.integer)):
            raise InvalidInputError(f"pca_dim must be an int, got {pca_dim!r}")
        if not 1 <= pca_dim <= dimension:
            raise InvalidInputError(f"pca_dim must be in [1, {dimension}], got {pca_dim}")
        return int(pca_dim)
    if pca_variance is not None:
        dim = dim_for_variance(training_sample(x, seed), float(pca_variance))
        logger.info("PCA keeping %.3f of the variance: %d of %d dims", pca_variance, dim, dimension)
        return dim
    return None


def fit_pca(x: np.ndarray, dim: int, seed: int = 0) -> faiss.PCAMatrix:
    """Fit a ``faiss.PCAMatrix`` (D -> dim) on ``x``.

    Args:
        x: (N, D) training data; N >= 2.
        dim: output dimension in [1, D].
        seed: subsampling seed for large ``x``.
    """
    x = as_matrix(x, "x")
    if x.shape[0] < 2:
        raise InvalidInputError(f"PCA needs at least 2 training vectors, got {x.shape[0]}")
    pca = faiss.PCAMatrix(x.shape[1], int(dim), 0.0, False)
    pca.train(training_sample(x, seed))
    return pca


def apply_pca(x: np.ndarray, variance: float, seed: int = 0) -> np.ndarray:
    """Fit PCA on ``x`` keeping ``variance`` of its variance and return the projected rows.

    Args:
        x: (N, D).
        variance: share in (0, 1].

    Returns:
        (N, d) float32 C-contiguous, d <= D.
    """
    x = as_matrix(x, "x")
    dim = resolve_pca_dim(x, None, variance, seed)
    pca = fit_pca(x, dim, seed)
    return np.ascontiguousarray(pca.apply(x), dtype=np.float32)
