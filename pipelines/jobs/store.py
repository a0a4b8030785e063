"""Store jobs: read a store (optionally some groups of it), delete rows by id, label or path (a person leaves)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from oneshot.data.source import rows_of_groups
from oneshot.errors import InvalidInputError
from oneshot.index.dataset_store import DatasetStore
from oneshot.index.store import EmbeddingSet, read_embeddings


def remove_from_store(store: str | os.PathLike, ids: Sequence[int] = (), labels: Sequence[str] = (),
                      paths: Sequence[str] | None = None) -> int:
    """Delete every row matching any given id, label or path from a store folder; returns rows removed.

    Raises:
        InvalidInputError: nothing to match on.
    """
    ids, labels, paths = set(int(i) for i in ids), set(map(str, labels)), set(paths or ())
    if not (ids or labels or paths):
        raise InvalidInputError("give ids, labels or paths of the rows to remove")
    opened = DatasetStore.open(store)
    opened.remove_strays()

    def drop(rows):
        return (rows["id"].isin(ids) | rows["label"].isin(labels) | rows["path"].isin(paths)).to_numpy()

    return opened.remove_rows(drop)


def load_store(store: str | os.PathLike | EmbeddingSet, groups: list[str] | None = None) -> EmbeddingSet:
    """A Parquet store, optionally restricted to some groups (alphabets); unknown groups raise."""
    stored = store if isinstance(store, EmbeddingSet) else read_embeddings(store)
    if not groups:
        return stored
    keep = rows_of_groups(stored.table, groups, "the store")
    return EmbeddingSet(stored.table[keep].reset_index(drop=True), np.ascontiguousarray(stored.embeddings[keep]),
                        stored.metadata)
