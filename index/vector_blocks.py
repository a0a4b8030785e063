"""Gallery vectors read block by block, from an array or straight from a Parquet store.

Building and tuning an index only ever needs (a) a seeded sample of rows and (b) passes over all
rows in blocks, so a store never has to be held in memory beside the index it feeds. A
:class:`VectorBlocks` yields ``(ids, vectors)`` pairs of at most ``block_size`` rows in a fixed
order; :func:`gather` collects chosen positions in one pass.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from oneshot.errors import CorruptFileError, InvalidInputError
from oneshot.index.metric import as_matrix
from oneshot.index.store import EMBEDDING_COLUMN

DEFAULT_BLOCK_SIZE = 65536


class VectorBlocks:
    """Base: ``count`` rows of ``dimension`` floats, yielded in blocks by :meth:`blocks`."""

    count: int
    dimension: int

    def blocks(self, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (b,) int64, vectors (b, D) float32)`` in a fixed order, b <= block_size."""
        raise NotImplementedError


class ArrayBlocks(VectorBlocks):
    """Blocks of an in-memory (N, D) array (views, no copy) with their ids."""

    def __init__(self, embeddings: np.ndarray, ids: np.ndarray):
        self._x = as_matrix(embeddings, "embeddings")
        self._ids = np.asarray(ids, dtype=np.int64)
        if self._ids.shape != (self._x.shape[0],):
            raise InvalidInputError(f"ids: expected shape ({self._x.shape[0]},), got {self._ids.shape}")
        self.count, self.dimension = self._x.shape

    def blocks(self, block_size: int = DEFAULT_BLOCK_SIZE):
        for start in range(0, self.count, block_size):
            yield self._ids[start : start + block_size], self._x[start : start + block_size]


class StoreBlocks(VectorBlocks):
    """Blocks read from an embedding store (a Parquet file or a folder of Parquet shards).

    Args:
        path: the store; files whose names start with ``_`` or ``.`` (manifests) are skipped.
        keep: optional ``ids -> bool mask`` choosing rows (e.g. those not yet indexed).
    """

    def __init__(self, path: str | os.PathLike, keep: Callable[[np.ndarray], np.ndarray] | None = None):
        self.path = Path(path)
        try:
            self._dataset = ds.dataset(str(self.path), format="parquet")
            field = self._dataset.schema.field(EMBEDDING_COLUMN)
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise CorruptFileError(f"{self.path}: not a readable embedding store ({exc})") from exc
        if not pa.types.is_fixed_size_list(field.type):
            raise CorruptFileError(f"{self.path}: column {EMBEDDING_COLUMN!r} is {field.type}, not a fixed-size list")
        self.dimension = int(field.type.list_size)
        self._keep = keep
        ids = self.all_ids()
        self.count = int(len(ids) if keep is None else np.count_nonzero(keep(ids)))

    def all_ids(self) -> np.ndarray:
        """Every id of the store, in store order (the ``keep`` filter not applied)."""
        column = self._dataset.to_table(columns=["id"]).column("id")
        return column.to_numpy().astype(np.int64, copy=False)

    def blocks(self, block_size: int = DEFAULT_BLOCK_SIZE):
        for batch in self._dataset.to_batches(columns=["id", EMBEDDING_COLUMN], batch_size=block_size):
            if batch.num_rows == 0:
                continue
            ids = batch.column(0).to_numpy().astype(np.int64, copy=False)
            flat = batch.column(1).flatten().to_numpy(zero_copy_only=False)
            vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(batch.num_rows, self.dimension)
            if self._keep is not None:
                mask = self._keep(ids)
                if not mask.any():
                    continue
                ids, vectors = ids[mask], np.ascontiguousarray(vectors[mask])
            yield ids, vectors


def gather(source: VectorBlocks, positions: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE
           ) -> tuple[np.ndarray, np.ndarray]:
    """The rows at sorted ``positions`` (0-based, in block order), read in one pass.

    Returns:
        ``(ids (P,), vectors (P, D))`` in the order of ``positions``.
    """
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    wanted = positions[order]
    ids = np.empty(len(wanted), dtype=np.int64)
    out = np.empty((len(wanted), source.dimension), dtype=np.float32)
    seen = 0
    filled = 0
    for block_ids, block in source.blocks(block_size):
        stop = seen + len(block_ids)
        hi = np.searchsorted(wanted, stop, side="left")
        local = wanted[filled:hi] - seen
        ids[filled:hi] = block_ids[local]
        out[filled:hi] = block[local]
        filled = hi
        seen = stop
        if filled == len(wanted):
            break
    if filled != len(wanted):
        raise InvalidInputError(f"positions beyond the {seen} rows of the source")
    result_ids = np.empty_like(ids)
    result = np.empty_like(out)
    result_ids[order] = ids
    result[order] = out
    return result_ids, result


def sample_positions(count: int, size: int, seed: int) -> np.ndarray:
    """``min(size, count)`` distinct sorted positions in ``[0, count)``, drawn with ``seed``."""
    size = min(int(size), int(count))
    if size == count:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False)).astype(np.int64)
