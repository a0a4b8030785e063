"""The search interface every gallery searcher implements, and an exact numpy searcher.

Evaluations and tests ask a :class:`Searcher` for the ``k`` best gallery rows; the FAISS-backed
:class:`~oneshot.index.vector_index.VectorIndex` and :class:`ExactSearch` (plain numpy, no FAISS)
both implement it and give the same answers on a flat index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.id_table import IdTable
from oneshot.index.metric import Metric, as_matrix, get_metric


@dataclass
class SearchResult:
    """The k best gallery rows for each query, best first.

    Attributes:
        scores: (Q, k) float32 similarities, higher = better; ``-inf`` where no result.
        ids: (Q, k) int64 gallery ids; ``-1`` where no result (k larger than the gallery).
        labels: (Q, k) object labels of ``ids``; None where no result.
    """

    scores: np.ndarray
    ids: np.ndarray
    labels: np.ndarray


@runtime_checkable
class Searcher(Protocol):
    """A gallery that answers top-k similarity queries."""

    @property
    def metric(self) -> Metric: ...

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """(Q, D) queries -> the ``k`` most similar gallery rows of each, best first."""
        ...


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be an int >= 1, got {k!r}")
    return int(k)


class ExactSearch:
    """Brute-force search in numpy: the reference any FAISS index is checked against.

    Args:
        embeddings: (N, D) gallery vectors.
        table: N rows with ``id`` and ``label`` (``group``, ``path`` kept when present).
        metric: a :class:`Metric` or its name.
        block: queries scored per matrix product (bounds memory at ``block x N`` floats).
    """

    def __init__(self, embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str, block: int = 1024):
        self._metric = get_metric(metric)
        self._gallery = self._metric.prepare(as_matrix(embeddings, "embeddings"))
        self.rows = IdTable.from_table(table, self._gallery.shape[0])
        self._block = block

    @property
    def metric(self) -> Metric:
        return self._metric

    def __len__(self) -> int:
        return self._gallery.shape[0]

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        q = self._metric.prepare(as_matrix(queries, "queries", self._gallery.shape[1]))
        k = check_k(k)
        n = self._gallery.shape[0]
        take = min(k, n)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        gallery_ids = self.rows.ids
        for start in range(0, q.shape[0], self._block):
            sim = self._metric.similarity(q[start : start + self._block], self._gallery)
            # best first; ties broken by insertion order, as a flat FAISS index does
            order = np.argsort(-sim, axis=1, kind="stable")[:, :take]
            scores[start : start + len(sim), :take] = np.take_along_axis(sim, order, axis=1)
            ids[start : start + len(sim), :take] = gallery_ids[order]
        return SearchResult(scores=scores, ids=ids, labels=self.rows.labels_for(ids))
