"""The rows beside an index: ids, labels, groups and paths, and lookups from id to label."""
from __future__ import annotations

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.store import check_table

TABLE_COLUMNS = ("id", "label", "group", "path")


class IdTable:
    """Gallery rows in insertion order, with a sorted id lookup.

    Attributes:
        table: columns ``id`` (unique int64), ``label``, ``group``, ``path``; row i is the i-th
            vector added.
    """

    def __init__(self, table: pd.DataFrame):
        self.table = table
        ids = table["id"].to_numpy(dtype=np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._labels = np.asarray(table["label"].to_numpy(dtype=object), dtype=object)

    @classmethod
    def from_table(cls, table: pd.DataFrame, count: int, name: str = "table") -> "IdTable":
        """Check a caller's table (``id`` and ``label`` required; ``group``, ``path`` default to ``""``)."""
        if not isinstance(table, pd.DataFrame):
            raise InvalidInputError(f"{name}: expected a pandas DataFrame, got {type(table).__name__}")
        missing = [c for c in ("id", "label") if c not in table.columns]
        if missing:
            raise InvalidInputError(f"{name}: missing columns {missing}; required: ['id', 'label']")
        full = table.reset_index(drop=True).copy()
        for column in ("group", "path"):
            if column not in full.columns:
                full[column] = ""
        return cls(check_table(full[list(TABLE_COLUMNS)], count, name))

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> np.ndarray:
        """(N,) int64 ids in insertion order."""
        return self.table["id"].to_numpy(dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """(N,) object labels in insertion order (a copy)."""
        return self._labels.copy()

    def labels_for(self, ids: np.ndarray) -> np.ndarray:
        """Labels of gallery ids, any shape; ``-1`` gives None.

        Raises:
            InvalidInputError: an id that is neither in the table nor -1.
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(ids.shape, None, dtype=object)
        flat = ids.reshape(-1)
        valid = flat != -1
        pos = np.searchsorted(self._sorted_ids, flat[valid])
        if len(self._sorted_ids) == 0:
            pos_clipped, found = pos, np.zeros(pos.shape, dtype=bool)
        else:
            pos_clipped = np.minimum(pos, len(self._sorted_ids) - 1)
            found = self._sorted_ids[pos_clipped] == flat[valid]
        if not found.all():
            raise InvalidInputError(f"ids not in the index: {flat[valid][~found][:5].tolist()}")
        out.reshape(-1)[valid] = self._labels[self._order[pos_clipped]]
        return out
