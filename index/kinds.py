"""What kind of FAISS index to build: the factory string and the parameters it was chosen with."""
from __future__ import annotations

from oneshot.index.metric import Metric


def factory_string(metric: Metric, pca_dim: int | None = None) -> str:
    """The FAISS index-factory string of an exact index with optional PCA inside it.

    ``"IDMap2,Flat"``, or ``"IDMap2,PCA64,L2norm,Flat"`` for cosine with PCA (vectors are
    re-normalised after the projection so inner product stays cosine).
    """
    parts = ["IDMap2"]
    if pca_dim is not None:
        parts.append(f"PCA{pca_dim}")
        if metric.normalizes:
            parts.append("L2norm")
    parts.append("Flat")
    return ",".join(parts)
