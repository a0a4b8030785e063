"""A FAISS index with int64 ids, per-row metadata and (optionally) PCA inside the index.

The FAISS index is ``IndexIDMap2`` over either a flat index or an ``IndexPreTransform``
(``PCAMatrix``, then ``NormalizationTransform`` for cosine) in front of a flat index, built with
the index factory (:mod:`oneshot.index.kinds`). The fitted PCA is therefore saved and loaded with
the index and can never drift from it. Scores always follow :class:`oneshot.index.metric.Metric`:
higher = more similar. The rows beside the index live in :mod:`oneshot.index.id_table`, the files
in :mod:`oneshot.index.index_file`; :class:`VectorIndex` implements
:class:`oneshot.index.search.Searcher`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.gpu import gpu_count, to_gpu
from oneshot.index.id_table import TABLE_COLUMNS, IdTable
from oneshot.index.index_file import SIDECAR_SUFFIX, read_index_files, sidecar_path, write_index_files
from oneshot.index.kinds import factory_string
from oneshot.index.metric import Metric, as_matrix, get_metric
from oneshot.index.pca import resolve_pca_dim, training_sample
from oneshot.index.search import SearchResult, check_k
from oneshot.index.store import read_embeddings

logger = logging.getLogger(__name__)

__all__ = ["VectorIndex", "SearchResult", "sidecar_path", "SIDECAR_SUFFIX", "TABLE_COLUMNS"]


class VectorIndex:
    """Exact search over a gallery with ids, labels and groups.

    Build with :meth:`build` or :meth:`from_store`, or read with :meth:`load`; the constructor is
    internal.
    """

    def __init__(
        self,
        index: faiss.Index,
        table: pd.DataFrame,
        metric: Metric,
        pca: dict[str, Any] | None,
        metadata: dict[str, Any],
    ) -> None:
        self._index = index
        self._rows = IdTable(table)
        self._metric = metric
        self._pca = pca
        self.metadata = metadata
        self._gpu_index: faiss.Index | None = None

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        table: pd.DataFrame,
        metric: Metric | str,
        pca_dim: int | None = None,
        pca_variance: float | None = None,
        metadata: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> VectorIndex:
        """Build an index over a gallery.

        Args:
            embeddings: (N, D) gallery vectors.
            table: N rows with ``id`` (unique ints) and ``label``; ``group`` and ``path`` are kept
                when present (else ``""``). Row i describes ``embeddings[i]``.
            metric: a :class:`Metric` or its name.
            pca_dim: reduce to this many dimensions with PCA fitted on the gallery.
            pca_variance: or keep this share of the gallery's variance (e.g. 0.95).
            metadata: JSON-serialisable dict saved with the index.
            seed: seed of the PCA training subsample (only used for very large galleries).

        Returns:
            The index.
        """
        metric = get_metric(metric)
        x = metric.prepare(as_matrix(embeddings, "embeddings"))
        if x.shape[0] == 0:
            raise InvalidInputError("embeddings: the gallery is empty")
        rows = IdTable.from_table(table, x.shape[0]).table
        meta = dict(metadata or {})
        try:
            json.dumps(meta)
        except TypeError as exc:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
        dim = resolve_pca_dim(x, pca_dim, pca_variance, seed)
        if dim is not None and metric.name == "l1":
            logger.warning("PCA rotates the space and L1 distances are not rotation-invariant")
        if dim is not None and x.shape[0] < 2:
            raise InvalidInputError(f"PCA needs at least 2 gallery vectors, got {x.shape[0]}")
        index = faiss.index_factory(x.shape[1], factory_string(metric, dim), metric.faiss_metric)
        if not index.is_trained:
            index.train(training_sample(x, seed))
        index.add_with_ids(x, rows["id"].to_numpy(dtype=np.int64))
        pca = None
        if dim is not None:
            variance = None if pca_variance is None else float(pca_variance)
            pca = {"dim": int(dim), "variance": variance}
        logger.info(
            "built %s index over %d vectors (D=%d%s)",
            metric.name,
            x.shape[0],
            x.shape[1],
            "" if dim is None else f" -> PCA {dim}",
        )
        return cls(index, rows, metric, pca, meta)

    @classmethod
    def from_store(
        cls,
        parquet_path: str | os.PathLike,
        metric: Metric | str | None = None,
        pca_dim: int | None = None,
        pca_variance: float | None = None,
        metadata: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> VectorIndex:
        """Build from an embedding store written by :func:`index.store.write_embeddings`.

        Args:
            parquet_path: the store.
            metric: defaults to the store's recorded metric.
            pca_dim, pca_variance, seed: as in :meth:`build`.
            metadata: merged over ``{"model_fingerprint": ..., "source": parquet_path}``.
        """
        stored = read_embeddings(parquet_path)
        meta = {
            "model_fingerprint": stored.metadata.get("model_fingerprint"),
            "source": str(parquet_path),
            **(metadata or {}),
        }
        return cls.build(
            stored.embeddings,
            stored.table,
            stored.metadata["metric"] if metric is None else metric,
            pca_dim=pca_dim,
            pca_variance=pca_variance,
            metadata=meta,
            seed=seed,
        )

    # ---------------------------------------------------------------- properties

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def metric(self) -> Metric:
        return self._metric

    @property
    def input_dimension(self) -> int:
        """Dimension of the vectors given to :meth:`build` and :meth:`search`."""
        return int(self._index.d)

    @property
    def dimension(self) -> int:
        """Dimension of the stored vectors (after PCA; equals ``input_dimension`` without)."""
        return self._pca["dim"] if self._pca else self.input_dimension

    @property
    def pca(self) -> dict[str, Any] | None:
        """``{"dim": d, "variance": v or None}`` when PCA is inside the index, else None."""
        return dict(self._pca) if self._pca else None

    @property
    def table(self) -> pd.DataFrame:
        """A copy of the rows: ``id``, ``label``, ``group``, ``path`` in insertion order."""
        return self._rows.table.copy()

    @property
    def ids(self) -> np.ndarray:
        """(N,) int64 ids in insertion order."""
        return self._rows.ids

    @property
    def labels(self) -> np.ndarray:
        """(N,) object labels in insertion order."""
        return self._rows.labels

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying CPU FAISS index (do not modify)."""
        return self._index

    # ---------------------------------------------------------------- search

    def labels_for(self, ids: np.ndarray) -> np.ndarray:
        """Labels of gallery ids, any shape; ``-1`` gives None (see :meth:`IdTable.labels_for`)."""
        return self._rows.labels_for(ids)

    def _search_index(self, use_gpu: bool | None) -> faiss.Index:
        available = gpu_count()
        if use_gpu is None:
            use_gpu = available > 0
        if not use_gpu:
            return self._index
        if available == 0:
            raise InvalidInputError("use_gpu=True but FAISS sees no GPU (CPU-only build or no device)")
        if self._gpu_index is None:
            self._gpu_index = to_gpu(self._index)
        return self._gpu_index

    def search(
        self, queries: np.ndarray, k: int, batch_size: int = 4096, use_gpu: bool | None = None
    ) -> SearchResult:
        """The ``k`` most similar gallery rows for each query, searched in batches.

        Args:
            queries: (Q, input_dimension) vectors (prepared here: normalised for cosine).
            k: neighbours per query (>= 1); beyond the gallery size results are padded with
                id -1, score -inf, label None.
            batch_size: queries per FAISS call.
            use_gpu: True to search a GPU clone, False for CPU, None for GPU when available.

        Returns:
            :class:`SearchResult` with (Q, k) arrays.
        """
        q = as_matrix(queries, "queries", self.input_dimension)
        k = check_k(k)
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        index = self._search_index(use_gpu)
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for start in range(0, q.shape[0], batch_size):
            block = self._metric.prepare(q[start : start + batch_size])
            raw, found = index.search(block, int(k))
            scores[start : start + len(block)] = self._metric.from_faiss(raw)
            ids[start : start + len(block)] = found
        scores[ids == -1] = -np.inf
        return SearchResult(scores=scores, ids=ids, labels=self.labels_for(ids))

    # ---------------------------------------------------------------- files

    def _file_metadata(self) -> dict[str, Any]:
        return {
            "kind": "vector_index",
            "metric": self._metric.name,
            "dimension": self.dimension,
            "input_dimension": self.input_dimension,
            "pca": self._pca,
            "count": len(self),
            "model_fingerprint": self.metadata.get("model_fingerprint"),
            "metadata": self.metadata,
            "faiss_version": faiss.__version__,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the CPU FAISS index to ``path`` and the rows to ``path + ".meta.parquet"``.

        Both are written atomically, the sidecar last: a present sidecar means a complete pair.

        Returns:
            ``Path(path)``.
        """
        path = write_index_files(path, self._index, self._rows.table, self._file_metadata())
        logger.info("saved index (%d vectors) to %s", len(self), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> VectorIndex:
        """Read an index written by :meth:`save` (see :func:`~oneshot.index.index_file.read_index_files`).

        Raises:
            MissingDataError, CorruptFileError: naming the file.
        """
        files = read_index_files(path, mmap=mmap)
        return cls(files.index, files.table, files.metric, files.pca, files.metadata)
