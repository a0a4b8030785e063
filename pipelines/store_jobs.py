"""Store maintenance jobs: delete rows by id, label or path (a person leaves)."""
from __future__ import annotations

import os
from typing import Sequence

from oneshot.errors import InvalidInputError
from oneshot.index.dataset_store import DatasetStore


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
