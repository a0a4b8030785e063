"""Parquet embedding store: one row per image, the vector in a ``fixed_size_list<float32>[D]``.

Columns: ``id`` (int64, unique), ``path``, ``label``, ``group`` (strings), any extra columns of
the input table, and ``embedding``. The schema metadata key ``b"oneshot"`` holds JSON with at
least ``dimension``, ``normalized``, ``metric``, ``model_fingerprint`` and ``count``, plus the
caller's metadata. Files are plain Parquet: ``pandas.read_parquet`` and
``pyarrow.parquet.read_table`` read them as they are.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oneshot.atomic import atomic_path
from oneshot.errors import CorruptFileError, InvalidInputError, MissingDataError
from oneshot.index.metric import as_matrix, get_metric

logger = logging.getLogger(__name__)

METADATA_KEY = b"oneshot"
REQUIRED_COLUMNS = ("id", "path", "label", "group")
EMBEDDING_COLUMN = "embedding"
DEFAULT_ROW_GROUP_SIZE = 65536
_NORM_TOLERANCE = 1e-3


@dataclass
class EmbeddingSet:
    """Embeddings read from a store.

    Attributes:
        table: one row per image (``id``, ``path``, ``label``, ``group``, extra columns), without
            the embedding column; row ``i`` describes ``embeddings[i]``.
        embeddings: float32 C-contiguous (N, D).
        metadata: the file's ``oneshot`` metadata.
    """

    table: pd.DataFrame
    embeddings: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])


def rows_normalized(embeddings: np.ndarray, tolerance: float = _NORM_TOLERANCE) -> bool:
    """True when every row has unit L2 norm (within ``tolerance``)."""
    if embeddings.shape[0] == 0:
        return False
    norms = np.linalg.norm(embeddings, axis=1)
    return bool(np.all(np.abs(norms - 1.0) <= tolerance))


def check_table(table: pd.DataFrame, count: int, name: str = "table") -> pd.DataFrame:
    """Validate the per-image table and return a copy with canonical column types.

    ``id`` becomes int64 (must be unique, no missing values); ``path``, ``label`` and ``group``
    become Python strings (``label`` must have no missing values; missing ``path``/``group`` become
    ``""``).

    Raises:
        ValueError: not a DataFrame, missing columns, wrong length, bad or duplicate ids.
    """
    if not isinstance(table, pd.DataFrame):
        raise InvalidInputError(f"{name}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InvalidInputError(f"{name}: missing columns {missing}; required: {list(REQUIRED_COLUMNS)}")
    if EMBEDDING_COLUMN in table.columns:
        raise InvalidInputError(f"{name}: must not hold an {EMBEDDING_COLUMN!r} column; pass embeddings")
    if len(table) != count:
        raise InvalidInputError(f"{name}: expected {count} rows (one per embedding), got {len(table)}")
    out = table.reset_index(drop=True).copy()
    ids = out["id"]
    if ids.isna().any() or not pd.api.types.is_integer_dtype(ids.dtype):
        raise InvalidInputError(f"{name}: 'id' must be integers without missing values, got {ids.dtype}")
    out["id"] = ids.astype(np.int64)
    if out["id"].duplicated().any():
        dup = out.loc[out["id"].duplicated(), "id"].head(5).tolist()
        raise InvalidInputError(f"{name}: 'id' must be unique; duplicated: {dup}")
    if out["label"].isna().any():
        raise InvalidInputError(f"{name}: 'label' has missing values")
    out["label"] = [str(v) for v in out["label"]]
    for column in ("path", "group"):
        out[column] = ["" if pd.isna(v) else str(v) for v in out[column]]
    return out


def _build_metadata(embeddings: np.ndarray, metadata: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(metadata or {})
    count, dimension = embeddings.shape
    for key, actual in (("count", count), ("dimension", dimension)):
        if key in meta and meta[key] != actual:
            raise InvalidInputError(f"metadata[{key!r}] = {meta[key]!r} but the embeddings have {actual}")
        meta[key] = int(actual)
    normalized = rows_normalized(embeddings)
    if meta.get("normalized") and not normalized:
        raise InvalidInputError("metadata says normalized=True but some rows do not have unit norm")
    meta["normalized"] = normalized
    if meta.get("metric") is None:
        meta["metric"] = "cosine" if normalized else "l2"
        logger.info("no metric given; recording %r", meta["metric"])
    meta["metric"] = get_metric(meta["metric"]).name
    meta.setdefault("model_fingerprint", None)
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
    return meta


def _embedding_field(dimension: int) -> pa.Field:
    return pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), dimension), nullable=False)


def _vectors(embeddings: np.ndarray) -> pa.FixedSizeListArray:
    values = pa.array(embeddings.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, embeddings.shape[1])


def write_embeddings(
    path: str | os.PathLike,
    table: pd.DataFrame,
    embeddings: np.ndarray,
    metadata: dict[str, Any] | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
) -> Path:
    """Write one row per image with its embedding to a Parquet file, atomically.

    Args:
        path: output ``.parquet`` file; its folder must exist. Replaced if present.
        table: (N rows) with at least ``id`` (int, unique), ``path``, ``label``, ``group``;
            extra columns are kept.
        embeddings: (N, D) finite floats, stored as float32.
        metadata: JSON-serialisable dict stored under ``b"oneshot"``. ``metric`` (default:
            ``"cosine"`` when rows have unit norm, else ``"l2"``) and ``model_fingerprint``
            (default None) belong here; ``count``, ``dimension`` and ``normalized`` are computed
            and must not contradict the data.
        row_group_size: rows converted and written at a time.

    Returns:
        The written path.

    Raises:
        ValueError: bad shapes, table or metadata.
    """
    path = Path(path)
    emb = as_matrix(embeddings, "embeddings")
    rows = check_table(table, emb.shape[0])
    if row_group_size < 1:
        raise InvalidInputError(f"row_group_size must be >= 1, got {row_group_size}")
    meta = _build_metadata(emb, metadata)
    base = pa.Table.from_pandas(rows, preserve_index=False)
    schema = base.schema.append(_embedding_field(emb.shape[1]))
    schema = schema.with_metadata(
        {**(base.schema.metadata or {}), METADATA_KEY: json.dumps(meta).encode()}
    )
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, max(1, emb.shape[0]), row_group_size):
                stop = start + row_group_size
                block = base.slice(start, row_group_size).append_column(
                    _embedding_field(emb.shape[1]), _vectors(emb[start:stop])
                )
                writer.write_table(block.replace_schema_metadata(schema.metadata))
    logger.info("wrote %d embeddings (D=%d) to %s", emb.shape[0], emb.shape[1], path)
    return path


def read_store_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the ``oneshot`` metadata of a store (the footer, not the rows).

    Raises:
        ValueError: missing file, not Parquet, or no ``oneshot`` metadata; names the file.
    """
    path = Path(path)
    if path.is_dir():
        from oneshot.index.dataset_store import DatasetStore

        return DatasetStore.open(path).metadata()
    if not path.is_file():
        raise MissingDataError(f"{path}: embedding store not found")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: undecodable names
        raise CorruptFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    return _metadata_from_schema(path, schema)


def _metadata_from_schema(path: Path, schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise CorruptFileError(f"{path}: no {METADATA_KEY.decode()!r} metadata; not an embedding store")
    try:
        meta = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for damaged bytes
        raise CorruptFileError(f"{path}: {METADATA_KEY.decode()!r} metadata is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{path}: {METADATA_KEY.decode()!r} metadata is not a JSON object")
    return meta


def read_embeddings(path: str | os.PathLike, allow_nonfinite: bool = False) -> EmbeddingSet:
    """Read a store: a single file written by :func:`write_embeddings`, or a store folder of
    shards (:mod:`oneshot.index.dataset_store`).

    Args:
        path: the ``.parquet`` file or the store folder.
        allow_nonfinite: return rows with NaN or infinite values instead of raising (for callers
            that leave such rows out themselves, like ``index build``).

    Returns:
        :class:`EmbeddingSet` with float32 C-contiguous (N, D) embeddings.

    Raises:
        ValueError: missing or unreadable file, wrong schema, or rows that disagree with the
            metadata; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        from oneshot.index.dataset_store import read_dataset

        return read_dataset(path)
    meta = read_store_metadata(path)
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: undecodable names
        raise CorruptFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in (*REQUIRED_COLUMNS, EMBEDDING_COLUMN) if c not in arrow.column_names]
    if missing:
        raise CorruptFileError(f"{path}: missing columns {missing}")
    vec_type = arrow.schema.field(EMBEDDING_COLUMN).type
    if not (pa.types.is_fixed_size_list(vec_type) and vec_type.value_type == pa.float32()):
        raise CorruptFileError(
            f"{path}: column {EMBEDDING_COLUMN!r} must be fixed_size_list<float32>, got {vec_type}"
        )
    dimension = vec_type.list_size
    if meta.get("dimension") != dimension:
        raise CorruptFileError(
            f"{path}: metadata dimension {meta.get('dimension')!r} but vectors have {dimension}"
        )
    if meta.get("count") != arrow.num_rows:
        raise CorruptFileError(f"{path}: metadata count {meta.get('count')!r} but {arrow.num_rows} rows")
    column = arrow.column(EMBEDDING_COLUMN)
    if column.null_count:
        raise CorruptFileError(f"{path}: {column.null_count} rows have no embedding")
    if arrow.num_rows:
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        embeddings = np.ascontiguousarray(flat, dtype=np.float32).reshape(arrow.num_rows, dimension)
    else:
        embeddings = np.zeros((0, dimension), dtype=np.float32)
    try:
        table = arrow.drop_columns([EMBEDDING_COLUMN]).to_pandas()
    except (pa.ArrowException, ValueError, TypeError, KeyError) as exc:  # e.g. damaged pandas metadata
        raise CorruptFileError(f"{path}: damaged table metadata ({exc})") from exc
    if not pd.api.types.is_integer_dtype(table["id"].dtype) or table["id"].duplicated().any():
        raise CorruptFileError(f"{path}: 'id' must be unique integers")
    table["id"] = table["id"].astype(np.int64)
    if not allow_nonfinite and not np.isfinite(embeddings).all():
        raise CorruptFileError(f"{path}: embeddings contain NaN or infinite values")
    return EmbeddingSet(table=table, embeddings=embeddings, metadata=meta)
