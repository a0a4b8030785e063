"""Index files kept in step with an embedding store: build, add new rows, remove rows.

Every writer here holds :func:`oneshot.index.locks.writer_lock` for its whole run (a second
writer is refused) and replaces the index pair as described in :mod:`oneshot.index.index_file`,
so identify jobs reading the index meanwhile see either the old pair or the new one. Vectors are
read from the store block by block (:class:`oneshot.index.vector_blocks.StoreBlocks`); only the
id/label/group/path columns are read whole.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from oneshot.errors import CorruptFileError, InvalidInputError, ModelMismatchError
from oneshot.index.id_table import TABLE_COLUMNS
from oneshot.index.locks import writer_lock
from oneshot.index.store import EMBEDDING_COLUMN, _metadata_from_schema, read_store_metadata
from oneshot.index.tuning import DEFAULT_SAMPLE
from oneshot.index.vector_blocks import DEFAULT_BLOCK_SIZE, StoreBlocks
from oneshot.index.vector_index import VectorIndex

logger = logging.getLogger(__name__)


def store_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``oneshot`` metadata of a store file, or of the first shard of a store folder."""
    path = Path(path)
    if path.is_dir():
        try:
            schema = ds.dataset(str(path), format="parquet").schema
        except (pa.ArrowException, OSError) as exc:
            raise CorruptFileError(f"{path}: not a readable store folder ({exc})") from exc
        return _metadata_from_schema(path, schema)
    return read_store_metadata(path)


def store_rows(path: str | os.PathLike, keep=None) -> pd.DataFrame:
    """The ``id``, ``label``, ``group``, ``path`` columns of a store (rows chosen by ``keep(ids)``)."""
    try:
        table = ds.dataset(str(path), format="parquet").to_table(columns=list(TABLE_COLUMNS)).to_pandas()
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise CorruptFileError(f"{path}: cannot read the store's rows ({exc})") from exc
    if keep is not None:
        table = table[keep(table["id"].to_numpy(dtype=np.int64))].reset_index(drop=True)
    return table


def nonfinite_rows(store: str | os.PathLike, block_size: int = DEFAULT_BLOCK_SIZE) -> pd.DataFrame:
    """``id`` and ``path`` of the store's rows whose vector has NaN or infinite values (read in blocks)."""
    try:
        dataset = ds.dataset(str(store), format="parquet")
        found = []
        for batch in dataset.to_batches(columns=["id", "path", EMBEDDING_COLUMN], batch_size=block_size):
            flat = batch.column(2).flatten().to_numpy(zero_copy_only=False)
            dimension = len(flat) // max(1, batch.num_rows)
            bad = ~np.isfinite(flat.reshape(batch.num_rows, dimension)).all(axis=1) if batch.num_rows else []
            if np.any(bad):
                found.append(batch.to_pandas()[["id", "path"]][bad])
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise CorruptFileError(f"{store}: cannot read the store's vectors ({exc})") from exc
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame({"id": [], "path": []})


def build_from_store(store: str | os.PathLike, out: str | os.PathLike, metric: str | None = None,
                     keep: Callable[[np.ndarray], np.ndarray] | None = None, **options: Any) -> VectorIndex:
    """Build an index from a store block by block and save it (options: see ``VectorIndex.build``).

    ``keep(ids) -> bool mask`` leaves rows out (e.g. those with non-finite vectors).
    """
    meta = store_metadata(store)
    source = StoreBlocks(store, keep)
    metadata = {"model_fingerprint": meta.get("model_fingerprint"), "source": str(Path(store).resolve()),
                **(options.pop("metadata", None) or {})}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):
        index = VectorIndex.build_blocks(source, store_rows(store, keep), metric or meta["metric"],
                                         metadata=metadata, **options)
        index.save(out)
    return index


def check_same_model(index: VectorIndex, store: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Refuse a store whose vectors come from another model (fingerprint, metric or dimension).

    Raises:
        ModelMismatchError: naming both fingerprints.
    """
    expected = index.metadata.get("model_fingerprint")
    actual = meta.get("model_fingerprint")
    if expected != actual:
        raise ModelMismatchError(f"{store}: vectors from model {actual}, but the index was built with model "
                                 f"{expected}; embed with the same model or build a new index")
    if meta.get("dimension") not in (None, index.input_dimension):
        raise ModelMismatchError(f"{store}: {meta.get('dimension')}-d vectors, the index takes {index.input_dimension}")
    if meta.get("metric") not in (None, index.metric.name):
        raise ModelMismatchError(f"{store}: metric {meta.get('metric')}, the index uses {index.metric.name}")


@dataclass
class AddReport:
    """What :func:`add_from_store` did."""

    added: int
    already_indexed: int
    skipped_removed: int
    count: int
    growth: dict[str, Any] = field(default_factory=dict)

    @property
    def rebuild_due(self) -> bool:
        return bool(self.growth.get("rebuild_due"))


def add_from_store(index_path: str | os.PathLike, store: str | os.PathLike, recall: float | None = None,
                   tuning_sample: int = DEFAULT_SAMPLE, block_size: int = DEFAULT_BLOCK_SIZE,
                   recheck: bool = False) -> AddReport:
    """Add the store's rows that the index lacks (by id), skipping ids removed from it.

    Then re-check the recall target when the index has grown enough since it was tuned (or
    ``recheck``), and say whether a rebuild is due (see :meth:`VectorIndex.check_growth`).

    Raises:
        ModelMismatchError: the store comes from another model.
        IndexBusyError: another writer holds the index.
    """
    with writer_lock(index_path):
        index = VectorIndex.load(index_path, mmap=False)
        meta = store_metadata(store)
        check_same_model(index, store, meta)
        indexed, removed = index.ids, index.removed_ids

        def is_new(ids: np.ndarray) -> np.ndarray:
            return ~np.isin(ids, indexed) & ~np.isin(ids, removed)

        everything = store_rows(store)
        all_ids = everything["id"].to_numpy(dtype=np.int64)
        _check_same_rows(index, everything, store)
        new_rows = store_rows(store, is_new)
        added = index.add_blocks(StoreBlocks(store, is_new), new_rows, block_size)
        growth: dict[str, Any] = {}
        if added or recheck:
            live = index.ids
            growth = index.check_growth(StoreBlocks(store, lambda ids: np.isin(ids, live)), recall,
                                        tuning_sample, block_size, force=recheck)
            index.save(index_path)
        report = AddReport(added, int(np.isin(all_ids, indexed).sum()), int(np.isin(all_ids, removed).sum()),
                           len(index), growth)
    logger.info("added %d rows to %s (%d already indexed, %d removed before)", report.added, index_path,
                report.already_indexed, report.skipped_removed)
    return report


def _check_same_rows(index: VectorIndex, rows: pd.DataFrame, store) -> None:
    """Refuse a store whose ids name other images than the index's rows with the same ids."""
    mine = index.table.set_index("id")["path"]
    shared = rows[rows["id"].isin(mine.index)]
    if len(shared) == 0:
        return
    theirs = shared.set_index("id")["path"].astype(str)
    differ = theirs[theirs != mine.loc[theirs.index]]
    if len(differ):
        example = differ.index[0]
        raise InvalidInputError(
            f"{store}: {len(differ)} ids are already in the index for other images (id {example}: "
            f"{mine.loc[example]!r} in the index, {differ.iloc[0]!r} in the store); ids must identify "
            "the same image across stores")


def ids_to_remove(index: VectorIndex, ids=None, labels=None, paths=None) -> np.ndarray:
    """Gallery ids chosen by ids, labels and/or paths (unknown labels or paths raise)."""
    table = index.table
    chosen = [np.asarray(list(ids or []), dtype=np.int64)]
    for column, values in (("label", labels), ("path", paths)):
        if not values:
            continue
        values = [str(v) for v in values]
        missing = sorted(set(values) - set(table[column]))
        if missing:
            raise InvalidInputError(f"{column}s not in the index: {missing[:5]}")
        chosen.append(table.loc[table[column].isin(values), "id"].to_numpy(dtype=np.int64))
    return np.unique(np.concatenate(chosen))


def remove_from_index(index_path: str | os.PathLike, ids=None, labels=None, paths=None) -> tuple[int, int]:
    """Remove rows by ids, labels or paths; record them so a later add does not bring them back.

    Returns:
        ``(removed now, rows left)``.
    """
    with writer_lock(index_path):
        index = VectorIndex.load(index_path, mmap=False)
        chosen = ids_to_remove(index, ids, labels, paths)
        if len(chosen) == 0:
            raise InvalidInputError("nothing to remove: give ids, labels or paths")
        removed = index.remove(chosen)
        index.save(index_path)
    return removed, len(index)
