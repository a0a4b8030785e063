"""A FAISS index with int64 ids, per-row metadata, a kind (flat, IVF, HNSW, ...) and tuned search.

The FAISS index is ``IndexIDMap2`` around the index a kind plans (:mod:`oneshot.index.kinds`):
flat, HNSW, IVF, IVF-PQ or any factory string, with PCA/OPQ inside it as a pre-transform, so the
fitted projection is saved and loaded with the index and can never drift from it. Vectors are
added in blocks from an array or straight from a store (:mod:`oneshot.index.vector_blocks`);
approximate kinds are trained on a seeded sample and their search parameter is tuned to a recall
target (:mod:`oneshot.index.tuning`), saved in the sidecar and used by every search. Scores always
follow :class:`oneshot.index.metric.Metric`: higher = more similar. Rows live in
:mod:`oneshot.index.id_table`, files in :mod:`oneshot.index.index_file`; :class:`VectorIndex`
implements :class:`oneshot.index.search.Searcher`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index import gpu as gpu_module
from oneshot.index.gpu import gpu_count, to_gpu
from oneshot.index.id_table import TABLE_COLUMNS, IdTable
from oneshot.index.index_file import SIDECAR_SUFFIX, read_index_files, sidecar_path, stored_dimension, write_index_files
from oneshot.index.kinds import nlist_for, plan_index
from oneshot.index.metric import Metric, get_metric
from oneshot.index.pca import MAX_TRAIN_POINTS_PER_DIM, resolve_pca_dim
from oneshot.index.search import SearchResult, check_k
from oneshot.index.store import read_embeddings
from oneshot.index.tuning import DEFAULT_RECALL, DEFAULT_SAMPLE, make_sample, set_parameter, tune
from oneshot.index.vector_blocks import DEFAULT_BLOCK_SIZE, ArrayBlocks, VectorBlocks, gather, sample_positions

logger = logging.getLogger(__name__)

__all__ = ["VectorIndex", "SearchResult", "sidecar_path", "SIDECAR_SUFFIX", "TABLE_COLUMNS"]

# ``add`` re-checks the recall target once the index has grown by this factor since it was tuned.
RECHECK_GROWTH = 1.5
# a rebuild is due when the tuned parameter had to grow this much, or this share is tombstones
REBUILD_PARAMETER_GROWTH = 4
REBUILD_TOMBSTONE_SHARE = 0.2
# extra neighbours fetched per query to make up for removed vectors still inside the index
_TOMBSTONE_OVERFETCH = 64


def _is_exact(index: faiss.Index) -> bool:
    """True when the vectors (after any pre-transform) are searched exhaustively and uncompressed."""
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return isinstance(inner, faiss.IndexFlat)


class VectorIndex:
    """Search over a gallery with ids, labels and groups.

    Build with :meth:`build`, :meth:`build_blocks` or :meth:`from_store`, or read with
    :meth:`load`; the constructor is internal.
    """

    def __init__(
        self,
        index: faiss.Index,
        table: pd.DataFrame,
        metric: Metric,
        pca: dict[str, Any] | None,
        metadata: dict[str, Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        state = state or {}
        self._index = index
        self._rows = IdTable(table)
        self._metric = metric
        self._pca = pca
        self.metadata = metadata
        self._gpu_index: faiss.Index | None = None
        self._plan = dict(state.get("plan") or {"kind": "flat", "factory": "Flat", "train_size": 0})
        self._search_params = {k: int(v) for k, v in (state.get("search_params") or {}).items()}
        self._tuning = state.get("tuning")
        self._removed = np.unique(np.asarray(state.get("removed") or [], dtype=np.int64))
        self._tombstones = np.unique(np.asarray(state.get("tombstones") or [], dtype=np.int64))
        self._apply_search_params()

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(cls, embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str, *args: Any,
              **options: Any) -> VectorIndex:
        """Build an index over a gallery held in memory: ``embeddings`` (N, D), the N rows of
        ``table`` describing them; ``metric`` and every option as in :meth:`build_blocks`."""
        if not isinstance(table, pd.DataFrame) or "id" not in getattr(table, "columns", ()):
            IdTable.from_table(table, 0)  # raises the usual message
        ids = table["id"].to_numpy()
        x = np.asarray(embeddings)
        if x.ndim == 2 and len(ids) != x.shape[0]:
            IdTable.from_table(table, x.shape[0])  # raises: wrong number of rows
        source = ArrayBlocks(embeddings, ids if np.issubdtype(ids.dtype, np.integer) else np.zeros(len(ids)))
        return cls.build_blocks(source, table, metric, *args, **options)

    @classmethod
    def build_blocks(
        cls,
        source: VectorBlocks,
        table: pd.DataFrame,
        metric: Metric | str,
        pca_dim: int | None = None,
        pca_variance: float | None = None,
        metadata: dict[str, Any] | None = None,
        seed: int = 0,
        kind: str = "flat",
        max_memory: int | None = None,
        recall: float = DEFAULT_RECALL,
        tuning_sample: int = DEFAULT_SAMPLE,
        use_gpu: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> VectorIndex:
        """Build from vectors read block by block; :meth:`build` is the same over an array in memory.

        Only the training sample, the tuning sample and one block are held beside the index:
        never a second full copy of the gallery.

        Args:
            source: the (N, D) gallery vectors, read block by block.
            table: N rows with ``id`` (unique ints) and ``label``; ``group`` and ``path`` are kept
                when present (else ``""``). Row i describes vector i.
            metric: a :class:`Metric` or its name.
            pca_dim: reduce to this many dimensions with PCA fitted on the gallery.
            pca_variance: or keep this share of the gallery's variance (e.g. 0.95).
            metadata: JSON-serialisable dict saved with the index.
            seed: seed of every sample (PCA/IVF training, tuning queries) and of k-means.
            kind: ``flat`` (default here), ``auto``, ``hnsw``, ``ivf``, ``ivfpq`` or a FAISS
                factory string (see :func:`oneshot.index.kinds.plan_index`).
            max_memory: index byte budget for ``auto``.
            recall: recall@1 target the search parameter is tuned to (approximate kinds).
            tuning_sample: held-out gallery rows used as tuning queries.
            use_gpu: train IVF k-means on the GPU: None = when available.
            block_size: vectors added per FAISS call.

        Returns:
            The index.
        """
        metric = get_metric(metric)
        if source.count == 0:
            raise InvalidInputError("embeddings: the gallery is empty")
        if not 0.0 < recall <= 1.0:
            raise InvalidInputError(f"recall must be in (0, 1], got {recall}")
        rows = IdTable.from_table(table, source.count).table
        meta = dict(metadata or {})
        try:
            json.dumps(meta)
        except TypeError as exc:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
        began = time.perf_counter()
        count, dim = source.count, source.dimension
        if pca_dim is not None and pca_variance is not None:
            raise InvalidInputError("give pca_dim or pca_variance, not both")
        if pca_dim is not None:
            resolve_pca_dim(np.zeros((0, dim), np.float32), pca_dim, None)  # checks the range
        wants_pca = pca_dim is not None or pca_variance is not None
        if wants_pca and count < 2:
            raise InvalidInputError(f"PCA needs at least 2 gallery vectors, got {count}")
        guess = plan_index(kind, count, dim, metric, pca_dim, max_memory)
        sample_size = max(guess.train_size, MAX_TRAIN_POINTS_PER_DIM * dim if wants_pca else 0)
        sample = None
        if sample_size:
            _, raw = gather(source, sample_positions(count, sample_size, seed), block_size)
            sample = metric.prepare(raw)
        dim_out = resolve_pca_dim(sample, pca_dim, pca_variance, seed) if wants_pca else None
        if dim_out is not None and metric.name == "l1":
            logger.warning("PCA rotates the space and L1 distances are not rotation-invariant")
        plan = plan_index(kind, count, dim, metric, dim_out, max_memory) if dim_out != pca_dim else guess
        if plan.reason:
            logger.info("auto index: %s -> %s", plan.reason, plan.factory)
        index = faiss.index_factory(dim, "IDMap2," + plan.factory, metric.faiss_metric)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = int(seed)
            ivf = faiss.downcast_index(ivf)
            if getattr(ivf, "do_polysemous_training", False):
                # the factory turns it on; it serves Hamming-filtered search we never use and
                # costs over a minute of training even on a few thousand vectors (measured)
                ivf.do_polysemous_training = False
        if not index.is_trained:
            gpu_module.train(index, sample, use_gpu)
        trained = time.perf_counter()
        del sample
        expected_ids = rows["id"].to_numpy(dtype=np.int64)
        added = 0
        for ids, block in source.blocks(block_size):
            if not np.array_equal(ids, expected_ids[added : added + len(ids)]) and not isinstance(source, ArrayBlocks):
                raise InvalidInputError("the vector source and the table list different ids or orders")
            index.add_with_ids(metric.prepare(block), expected_ids[added : added + len(ids)])
            added += len(ids)
        pca = None
        if dim_out is not None:
            pca = {"dim": int(dim_out), "variance": None if pca_variance is None else float(pca_variance)}
        state = {"plan": {**plan.to_dict(), "max_memory": max_memory, "seed": int(seed),
                          "built_count": int(count), "train_seconds": round(trained - began, 3),
                          "build_seconds": None}}
        made = cls(index, rows, metric, pca, meta, state)
        if not _is_exact(index):
            tuning_source = source
            made._tune(tuning_source, recall, tuning_sample, seed + 1, block_size)
        made._plan["build_seconds"] = round(time.perf_counter() - began, 3)
        logger.info("built %s index %s over %d vectors (D=%d%s) in %.1f s", metric.name, plan.factory, count,
                    dim, "" if dim_out is None else f" -> PCA {dim_out}", time.perf_counter() - began)
        return made

    @classmethod
    def from_store(
        cls,
        parquet_path: str | os.PathLike,
        metric: Metric | str | None = None,
        pca_dim: int | None = None,
        pca_variance: float | None = None,
        metadata: dict[str, Any] | None = None,
        seed: int = 0,
        **build_options: Any,
    ) -> VectorIndex:
        """Build from an embedding store written by :func:`index.store.write_embeddings`.

        Args:
            parquet_path: the store.
            metric: defaults to the store's recorded metric.
            pca_dim, pca_variance, seed, build_options: as in :meth:`build`.
            metadata: merged over ``{"model_fingerprint": ..., "source": parquet_path}`` (made absolute,
                so the index finds its store from any working directory).
        """
        stored = read_embeddings(parquet_path)
        meta = {
            "model_fingerprint": stored.metadata.get("model_fingerprint"),
            "source": str(Path(parquet_path).resolve()),
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
            **build_options,
        )

    # ---------------------------------------------------------------- tuning

    def _tune(self, source: VectorBlocks, recall: float, size: int, seed: int, block_size: int,
              start: int | None = None):
        sample = make_sample(source, self._metric, size, seed, block_size)
        result = tune(lambda q, k: self._search_arrays(q, k, self._index), self._index, sample, recall, start)
        if result.name is not None:
            self._search_params = {result.name: int(result.value)}
        self._tuning = {**result.to_dict(), "count": len(self), "seed": int(seed)}
        self._gpu_index = None
        return result

    def _apply_search_params(self) -> None:
        for name, value in self._search_params.items():
            set_parameter(self._index, name, value)

    # ---------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def metric(self) -> Metric:
        return self._metric

    @property
    def input_dimension(self) -> int:
        """Dimension of the vectors given to :meth:`build` and :meth:`search`."""
        return int(self._index.d)

    @property
    def dimension(self) -> int:
        """Dimension of the stored vectors (after PCA/OPQ; equals ``input_dimension`` without)."""
        return self._pca["dim"] if self._pca else int(stored_dimension(self._index))

    @property
    def pca(self) -> dict[str, Any] | None:
        """``{"dim": d, "variance": v or None}`` when PCA is inside the index, else None."""
        return dict(self._pca) if self._pca else None

    @property
    def plan(self) -> dict[str, Any]:
        """How the index was chosen: ``kind``, ``factory``, ``train_size``, ``reason``, ..."""
        return dict(self._plan)

    @property
    def search_params(self) -> dict[str, int]:
        """Tuned search parameters (``{"nprobe": 4}``, ``{"efSearch": 96}`` or ``{}``)."""
        return dict(self._search_params)

    @property
    def tuning(self) -> dict[str, Any] | None:
        """The last recall tuning: parameter, value, sample recall, target, met, sample size."""
        return None if self._tuning is None else dict(self._tuning)

    @property
    def removed_ids(self) -> np.ndarray:
        """(R,) sorted ids removed from this index; :meth:`add_blocks` never adds them back."""
        return self._removed.copy()

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
            if self._gpu_index is not self._index:
                for name, value in self._search_params.items():
                    gpu_module.set_gpu_parameter(self._gpu_index, name, value)
        return self._gpu_index

    def _search_arrays(self, prepared: np.ndarray, k: int, index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of prepared queries -> (scores, ids), removed vectors filtered out."""
        if len(self._tombstones) == 0:
            raw, found = index.search(prepared, int(k))
            return self._metric.from_faiss(raw), found
        fetch = k + min(len(self._tombstones), _TOMBSTONE_OVERFETCH)
        raw, found = index.search(prepared, int(fetch))
        scores = self._metric.from_faiss(raw)
        live = (found != -1) & ~np.isin(found, self._tombstones)
        short = (live.sum(axis=1) < k) & (found[:, -1] != -1)
        if short.any() and fetch < k + len(self._tombstones):
            more = k + len(self._tombstones)
            raw2, found2 = index.search(np.ascontiguousarray(prepared[short]), int(more))
            scores = np.concatenate([scores, np.full((len(scores), more - fetch), -np.inf, np.float32)], axis=1)
            found = np.concatenate([found, np.full((len(found), more - fetch), -1, np.int64)], axis=1)
            scores[short], found[short] = self._metric.from_faiss(raw2), found2
            live = (found != -1) & ~np.isin(found, self._tombstones)
        order = np.argsort(~live, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(live, order, 1)
        scores = np.where(keep, np.take_along_axis(scores, order, 1), -np.inf).astype(np.float32)
        found = np.where(keep, np.take_along_axis(found, order, 1), -1)
        return scores, found

    def search(
        self, queries: np.ndarray, k: int, batch_size: int = 4096, use_gpu: bool | None = None
    ) -> SearchResult:
        """The ``k`` most similar gallery rows for each query, searched in batches.

        Approximate kinds search with their tuned parameters (:attr:`search_params`).

        Args:
            queries: (Q, input_dimension) vectors (prepared here: normalised for cosine).
            k: neighbours per query (>= 1); beyond the gallery size results are padded with
                id -1, score -inf, label None.
            batch_size: queries per FAISS call.
            use_gpu: True to search a GPU clone, False for CPU, None for GPU when available.

        Returns:
            :class:`SearchResult` with (Q, k) arrays.
        """
        from oneshot.index.metric import as_matrix

        q = as_matrix(queries, "queries", self.input_dimension)
        k = check_k(k)
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        index = self._search_index(use_gpu)
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for start in range(0, q.shape[0], batch_size):
            block = self._metric.prepare(q[start : start + batch_size])
            s, found = self._search_arrays(block, k, index)
            scores[start : start + len(block)] = s
            ids[start : start + len(block)] = found
        scores[ids == -1] = -np.inf
        return SearchResult(scores=scores, ids=ids, labels=self.labels_for(ids))

    # ---------------------------------------------------------------- changes

    def add_blocks(self, source: VectorBlocks, table: pd.DataFrame, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
        """Add new rows, block by block (an index loaded with ``mmap=True`` cannot be changed).

        Args:
            source: the new vectors, in the order of ``table``.
            table: their rows (``id``, ``label``, ``group``, ``path``); ids must be new and not
                removed before.

        Returns:
            Rows added.
        """
        self._check_writable()
        if source.count == 0:
            return 0
        rows = IdTable.from_table(table, source.count, "new rows").table
        new_ids = rows["id"].to_numpy(dtype=np.int64)
        clash = new_ids[np.isin(new_ids, self.ids) | np.isin(new_ids, self._removed)]
        if len(clash):
            raise InvalidInputError(f"ids already in the index or removed from it: {clash[:5].tolist()}")
        if source.dimension != self.input_dimension:
            raise InvalidInputError(f"new vectors have dimension {source.dimension}, the index {self.input_dimension}")
        added = 0
        for ids, block in source.blocks(block_size):
            if not np.array_equal(ids, new_ids[added : added + len(ids)]):
                raise InvalidInputError("the vector source and the table list different ids or orders")
            self._index.add_with_ids(self._metric.prepare(block), ids)
            added += len(ids)
        self._rows = IdTable(pd.concat([self._rows.table, rows], ignore_index=True))
        self._gpu_index = None
        return added

    def remove(self, ids: np.ndarray) -> int:
        """Remove gallery ids and record them so that later additions skip them.

        Flat indexes delete the vectors; other kinds keep them as tombstones that every search
        filters out (a rebuild reclaims the space). Ids not in the index are still recorded.

        Returns:
            Rows removed from the index.
        """
        self._check_writable()
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        present = ids[np.isin(ids, self.ids)]
        if len(present):
            if _is_exact(self._index):
                self._index.remove_ids(np.ascontiguousarray(present))
            else:
                self._tombstones = np.union1d(self._tombstones, present)
            table = self._rows.table
            self._rows = IdTable(table[~table["id"].isin(present)].reset_index(drop=True))
        self._removed = np.union1d(self._removed, ids)
        self._gpu_index = None
        return int(len(present))

    def check_growth(self, source: VectorBlocks, recall: float | None = None, size: int = DEFAULT_SAMPLE,
                     block_size: int = DEFAULT_BLOCK_SIZE, force: bool = False) -> dict[str, Any]:
        """After additions: re-check the recall target and say whether a rebuild is due.

        The recall is re-measured (and the search parameter raised if needed, never lowered)
        once the index holds :data:`RECHECK_GROWTH` times the rows it was last tuned on, or with
        ``force``. A rebuild is due when ``auto`` would now plan another index, when the target
        cannot be met, when the parameter had to grow :data:`REBUILD_PARAMETER_GROWTH` times, or
        when removed vectors are over :data:`REBUILD_TOMBSTONE_SHARE` of the index.

        Args:
            source: every live vector of the index (e.g. the store, filtered to its ids).
            recall: target; default the one it was tuned to.
        """
        report: dict[str, Any] = {"checked": False, "rebuild_due": False, "reasons": []}
        count = len(self)
        if self._plan.get("kind") == "auto":
            replan = plan_index("auto", count, self.input_dimension, self._metric,
                                self._pca["dim"] if self._pca else None, self._plan.get("max_memory"))
            if replan.factory != self._plan.get("factory"):
                report["reasons"].append(f"auto would now build {replan.factory} for {count} rows "
                                         f"(this index is {self._plan.get('factory')})")
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None and nlist_for(count) >= 4 * ivf.nlist:
            report["reasons"].append(f"{count} rows in {ivf.nlist} lists: {nlist_for(count)} lists would suit")
        physical = int(self._index.ntotal)
        if physical and len(self._tombstones) > REBUILD_TOMBSTONE_SHARE * physical:
            report["reasons"].append(f"{len(self._tombstones)} removed vectors still fill the index")
        if self._tuning is not None:
            tuned_count = int(self._tuning.get("count") or 0)
            target = float(recall if recall is not None else self._tuning.get("target", DEFAULT_RECALL))
            if force or count >= RECHECK_GROWTH * max(tuned_count, 1):
                before = self._tuning.get("value")
                result = self._tune(source, target, size, int(self._tuning.get("seed", 1)) + 1, block_size,
                                    start=before)
                report.update(checked=True, recall=result.recall, target=target, parameter=result.name,
                              previous_value=before, value=result.value, met=result.met)
                if not result.met:
                    report["reasons"].append(f"recall@1 {result.recall:.3f} < target {target} even at "
                                             f"{result.name}={result.value}")
                elif before and result.value and result.value >= REBUILD_PARAMETER_GROWTH * before:
                    report["reasons"].append(f"{result.name} had to grow from {before} to {result.value}")
        report["rebuild_due"] = bool(report["reasons"])
        return report

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
            "plan": self._plan,
            "search_params": self._search_params,
            "tuning": self._tuning,
            "removed": self._removed.tolist(),
            "tombstones": self._tombstones.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the CPU FAISS index to ``path`` and the rows to ``path + ".meta.parquet"``.

        Both are written under temporary names, then renamed into place (see
        :mod:`oneshot.index.index_file` for what readers see meanwhile).

        Returns:
            ``Path(path)``.
        """
        path = write_index_files(path, self._index, self._rows.table, self._file_metadata())
        logger.info("saved index (%d vectors) to %s", len(self), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> VectorIndex:
        """Read an index written by :meth:`save` (see :func:`~oneshot.index.index_file.read_index_files`).

        Args:
            path: the FAISS file.
            mmap: memory-map it where FAISS allows (flat codes, IVF lists; the default): pages
                load on demand and are shared between processes. Such an index is read-only:
                load with ``mmap=False`` to add or remove rows.

        Raises:
            MissingDataError, CorruptFileError: naming the file.
        """
        files = read_index_files(path, mmap=mmap)
        made = cls(files.index, files.table, files.metric, files.pca, files.metadata, files.state)
        made._mapped_from = Path(path) if mmap else None
        return made

    def _check_writable(self) -> None:
        if getattr(self, "_mapped_from", None) is not None:
            raise InvalidInputError(f"{self._mapped_from}: loaded memory-mapped (read-only); "
                                    "load it with mmap=False to add or remove rows")
