"""The one metric object every search, score and threshold asks.

A :class:`Metric` fixes, in one place, how vectors are prepared (cosine normalises rows), which
FAISS metric searches them, and how raw FAISS output becomes a *similarity*: everywhere in
``oneshot`` a higher score means more similar, whatever the metric.

Known metrics:

* ``"cosine"``: rows L2-normalised, inner product; similarity in [-1, 1].
* ``"l2"``: minus the squared euclidean distance.
* ``"l1"``: minus the L1 (Manhattan) distance. For Koch-style siamese networks whose vectors are
  pre-scaled by the learned per-dimension weights, ranking by L1 distance equals ranking by the
  learned score.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from oneshot.errors import InvalidInputError

logger = logging.getLogger(__name__)

METRIC_NAMES = ("cosine", "l2", "l1")

# Rows of the exact similarity computed at once for L1, which needs a (rows, G, D) temporary.
_L1_BLOCK_ELEMENTS = 1 << 24


def as_matrix(x: np.ndarray, name: str = "x", dimension: int | None = None) -> np.ndarray:
    """Check that ``x`` is a 2-D array of finite numbers and return it as float32 C-contiguous.

    Args:
        x: array-like (N, D).
        name: name used in error messages.
        dimension: expected D, or None for any.

    Returns:
        float32 C-contiguous (N, D) array (``x`` itself when it already is one).

    Raises:
        ValueError: not 2-D, wrong D, not numeric or not finite.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InvalidInputError(f"{name}: expected a 2-D array (N, D), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if dimension is not None and arr.shape[1] != dimension:
        raise InvalidInputError(f"{name}: expected dimension {dimension}, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name}: contains NaN or infinite values")
    return arr


@dataclass(frozen=True)
class Metric:
    """A similarity convention shared by the index and every pipeline.

    Attributes:
        name: one of ``"cosine"``, ``"l2"``, ``"l1"``.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in METRIC_NAMES:
            raise InvalidInputError(f"unknown metric {self.name!r}; known: {', '.join(METRIC_NAMES)}")

    @property
    def faiss_metric(self) -> int:
        """The FAISS metric constant searching prepared vectors."""
        return {
            "cosine": faiss.METRIC_INNER_PRODUCT,
            "l2": faiss.METRIC_L2,
            "l1": faiss.METRIC_L1,
        }[self.name]

    @property
    def normalizes(self) -> bool:
        """True when :meth:`prepare` L2-normalises rows (cosine)."""
        return self.name == "cosine"

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Return a float32 C-contiguous copy of ``x`` ready for search.

        Args:
            x: (N, D) vectors.

        Returns:
            (N, D) float32; rows L2-normalised for cosine (all-zero rows stay zero).
        """
        out = np.array(as_matrix(x), dtype=np.float32, order="C", copy=True)
        if self.normalizes:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out

    def similarity(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """Exact similarity of every query to every gallery vector (higher = more similar).

        Args:
            queries: (Q, D).
            gallery: (G, D).

        Returns:
            (Q, G) float32: cosine similarity, minus squared euclidean distance, or minus L1
            distance.
        """
        q = self.prepare(queries)
        g = self.prepare(gallery)
        if q.shape[1] != g.shape[1]:
            raise InvalidInputError(
                f"queries and gallery must have the same dimension, got {q.shape} and {g.shape}"
            )
        if self.name == "cosine":
            return np.ascontiguousarray(q @ g.T, dtype=np.float32)
        if self.name == "l2":
            q64, g64 = q.astype(np.float64), g.astype(np.float64)
            d2 = (q64**2).sum(1)[:, None] + (g64**2).sum(1)[None, :] - 2.0 * (q64 @ g64.T)
            return np.ascontiguousarray(-np.maximum(d2, 0.0), dtype=np.float32)
        out = np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
        step = max(1, _L1_BLOCK_ELEMENTS // max(1, g.shape[0] * g.shape[1]))
        for start in range(0, q.shape[0], step):
            block = q[start : start + step, None, :] - g[None, :, :]
            out[start : start + step] = -np.abs(block).sum(axis=2)
        return out

    def pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise similarity of paired vectors: ``out[i] = similarity(a[i], b[i])``.

        Args:
            a: (P, D).
            b: (P, D).

        Returns:
            (P,) float32.
        """
        a = self.prepare(a)
        b = self.prepare(b)
        if a.shape != b.shape:
            raise InvalidInputError(f"paired arrays must have the same shape, got {a.shape} and {b.shape}")
        if self.name == "cosine":
            out = np.einsum("ij,ij->i", a, b)
        elif self.name == "l2":
            diff = a - b
            out = -np.einsum("ij,ij->i", diff, diff)
        else:
            out = -np.abs(a - b).sum(axis=1)
        return np.ascontiguousarray(out, dtype=np.float32)

    def from_faiss(self, raw: np.ndarray) -> np.ndarray:
        """Convert FAISS search output to this module's similarity convention.

        Inner products are kept; L2 (squared) and L1 distances are negated.

        Args:
            raw: distances or inner products from ``index.search``, any shape.

        Returns:
            float32 array of the same shape, higher = more similar.
        """
        raw = np.asarray(raw, dtype=np.float32)
        out = raw.copy() if self.name == "cosine" else np.float32(0.0) - raw
        return np.ascontiguousarray(out)

    def distance(self, similarity: np.ndarray) -> np.ndarray:
        """A non-negative distance from a similarity, for inverse-distance weighting.

        cosine: ``1 - s``; l2: ``sqrt(-s)`` (euclidean); l1: ``-s``.

        Args:
            similarity: similarities in this metric's convention, any shape.

        Returns:
            float32 array of the same shape, >= 0.
        """
        s = np.asarray(similarity, dtype=np.float32)
        if self.name == "cosine":
            d = 1.0 - s
        elif self.name == "l2":
            d = np.sqrt(np.maximum(-s, 0.0))
        else:
            d = -s
        return np.maximum(d, 0.0).astype(np.float32)


_METRICS = {name: Metric(name) for name in METRIC_NAMES}


def get_metric(name: str | Metric) -> Metric:
    """Return the metric called ``name`` (a :class:`Metric` is returned as is).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if isinstance(name, Metric):
        return name
    if not isinstance(name, str) or name.lower() not in _METRICS:
        raise InvalidInputError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")
    return _METRICS[name.lower()]
