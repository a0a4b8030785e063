"""Build an index from a store's shards in parts: train once, add each shard into a copy, merge.

The recipe of faiss ``contrib/ondisk.py``: the quantizer (and any PCA) is trained once on a seeded
sample; each shard is added into its own copy of the trained empty index (in parallel: any
``map_parts`` that runs :func:`add_shard_part` elsewhere, e.g. on Ray); the parts' inverted lists
are then merged in memory, in shard order. Rows get their store position as FAISS id inside the
parts, and the merged index is wrapped in ``IndexIDMap2`` holding the store's ids, so the result
equals an index built in one process from the whole store (same lists, same order).

For indexes larger than memory, merge the parts' inverted lists on disk instead
(``faiss.contrib.ondisk.merge_ondisk``, an ``OnDiskInvertedLists`` file memory-mapped at search
time); this module merges in memory.

Flat and HNSW indexes have no inverted lists to merge: :func:`build_from_shards` adds their
shards one after the other on this node (``mergeable`` is False for them).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Iterator

import faiss
import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.dataset_store import DatasetStore
from oneshot.index.id_table import IdTable
from oneshot.index.metric import Metric, get_metric
from oneshot.index.pca import MAX_TRAIN_POINTS_PER_DIM

logger = logging.getLogger(__name__)

#: ``map_parts(function, argument tuples) -> results in order``; the builtin default runs here.
MapParts = Callable[[Callable[..., Any], list[tuple]], Iterable[Any]]


def local_map(function: Callable[..., Any], arguments: list[tuple]) -> Iterator[Any]:
    """Run ``function(*args)`` for each argument tuple in this process, in order."""
    for args in arguments:
        yield function(*args)


def unwrap(index: faiss.Index) -> faiss.Index:
    """The index inside an ``IndexIDMap``/``IndexIDMap2`` (the index itself otherwise), downcast."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def mergeable(index: faiss.Index) -> bool:
    """True when the index keeps inverted lists (IVF, possibly behind a transform): parts merge."""
    try:
        faiss.extract_index_ivf(unwrap(index))
    except (RuntimeError, AttributeError):
        return False
    return True


def sample_positions(count: int, dimension: int, seed: int) -> np.ndarray:
    """Store positions of the training sample: all rows, or ``MAX_TRAIN_POINTS_PER_DIM * D`` of them
    drawn with ``seed`` (the rule of :func:`oneshot.index.pca.training_sample`), sorted."""
    limit = MAX_TRAIN_POINTS_PER_DIM * dimension
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def _live_masks(store: DatasetStore) -> list[np.ndarray]:
    """Per shard, the rows a reader keeps (a later shard's row wins over an earlier one's id)."""
    keys = store.read_columns(["id"])
    keep = ~keys["id"].duplicated(keep="last").to_numpy()
    return [keep[(keys["_shard"] == number).to_numpy()] for number in range(len(store.shard_paths))]


def _shard(store_folder: str, number: int, keep: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The live rows and vectors of one shard, read through the store's own reader."""
    store = DatasetStore.open(store_folder)
    store.manifest = {**store.manifest, "shards": [store.manifest["shards"][number]]}
    table, vectors = next(store.iter_shards())
    return table[keep].reset_index(drop=True), np.ascontiguousarray(vectors[keep])


def read_sample(store: DatasetStore, positions: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The vectors at live-row ``positions`` (sorted), read shard by shard -> float32 (n, D)."""
    chunks, offset = [], 0
    for (_, vectors), keep in zip(store.iter_shards(), masks):
        vectors = vectors[keep]
        inside = positions[(positions >= offset) & (positions < offset + len(vectors))] - offset
        if len(inside):
            chunks.append(vectors[inside])
        offset += len(vectors)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def add_shard_part(empty: np.ndarray, store_folder: str, number: int, keep: np.ndarray, offset: int,
                   metric_name: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Add one shard into a copy of the trained empty index (serialised); its rows get FAISS ids
    ``offset, offset + 1, ...``. Returns (the serialised part, the shard's live rows)."""
    table, vectors = _shard(store_folder, number, keep)
    part = faiss.deserialize_index(empty)
    if len(table):
        part.add_with_ids(get_metric(metric_name).prepare(vectors), np.arange(offset, offset + len(table), dtype=np.int64))
    return faiss.serialize_index(part), table


def build_from_shards(index: faiss.Index | str, store: str | os.PathLike | DatasetStore, metric: Metric | str | None = None,
                      seed: int = 0, map_parts: MapParts = local_map) -> tuple[faiss.IndexIDMap2, pd.DataFrame]:
    """An ``IndexIDMap2`` over every live row of a store, built shard by shard.

    Args:
        index: a trained empty FAISS index (with or without ``IDMap``/``IDMap2``), or a factory
            string (e.g. ``"IVF1024,Flat"``; trained here on the seeded sample).
        store: the store folder.
        metric: default the store's; vectors are prepared with it (normalised for cosine).
        seed: seed of the training sample.
        map_parts: runs :func:`add_shard_part` over the shards (default here; Ray: in tasks).

    Returns:
        (the index, rows ``id``, ``label``, ``group``, ``path`` in FAISS insertion order).
    """
    store = store if isinstance(store, DatasetStore) else DatasetStore.open(store)
    metric = get_metric(metric or store.manifest["metric"])
    masks = _live_masks(store)
    count = int(sum(mask.sum() for mask in masks))
    if count == 0:
        raise InvalidInputError(f"{store.folder}: the store is empty")
    if isinstance(index, str):
        index = faiss.index_factory(store.dimension, index, metric.faiss_metric)
    inner = unwrap(index)
    if inner.ntotal:
        raise InvalidInputError(f"expected an empty index, got one holding {inner.ntotal} vectors")
    if inner.d != store.dimension:
        raise InvalidInputError(f"the index takes {inner.d}-D vectors, the store holds {store.dimension}-D")
    if not inner.is_trained:
        sample = metric.prepare(read_sample(store, sample_positions(count, store.dimension, seed), masks))
        inner.train(sample)
        logger.info("trained %s on %d sampled vectors", type(inner).__name__, len(sample))
    empty = faiss.serialize_index(inner)
    offsets = np.concatenate([[0], np.cumsum([int(m.sum()) for m in masks])[:-1]]).astype(int)
    wrapped = faiss.IndexIDMap2(faiss.deserialize_index(empty))
    target = faiss.downcast_index(wrapped.index)
    parallel = mergeable(inner)
    tables = []
    if parallel:
        arguments = [(empty, str(store.folder), number, masks[number], int(offsets[number]), metric.name)
                     for number in range(len(masks))]
        for serialized, table in map_parts(add_shard_part, arguments):
            target.merge_from(faiss.deserialize_index(serialized), 0)  # ids are global positions: no shift
            tables.append(table)
    else:  # flat, HNSW: one node, shard after shard (FAISS ids are the positions)
        for (table, vectors), keep in zip(store.iter_shards(), masks):
            if keep.any():
                target.add(metric.prepare(vectors[keep]))
            tables.append(table[keep].reset_index(drop=True))
    rows = IdTable.from_table(pd.concat(tables, ignore_index=True), count, str(store.folder)).table
    wrapped.ntotal = target.ntotal
    faiss.copy_array_to_vector(rows["id"].to_numpy(dtype=np.int64), wrapped.id_map)
    wrapped.construct_rev_map()
    logger.info("built %s over %d vectors from %d shards (%s)", type(inner).__name__, count, len(masks),
                "parts merged" if parallel else "added on this node")
    return wrapped, rows
