"""Reading and writing an index: the FAISS file plus a ``.meta.parquet`` sidecar, with checks.

The sidecar holds the rows (id, label, group, path) and, in its Parquet metadata, the metric,
dimensions, PCA, count and model fingerprint. Both files are written atomically, the sidecar
last, so a present sidecar means a complete pair; on load every fact the two share is compared.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oneshot.atomic import atomic_path
from oneshot.errors import CorruptFileError, MissingDataError
from oneshot.index.id_table import TABLE_COLUMNS
from oneshot.index.metric import Metric, get_metric
from oneshot.index.store import METADATA_KEY, check_table

SIDECAR_SUFFIX = ".meta.parquet"


def sidecar_path(path: str | os.PathLike) -> Path:
    """The metadata file saved next to an index file: ``path + ".meta.parquet"``."""
    return Path(str(path) + SIDECAR_SUFFIX)


@dataclass
class IndexFiles:
    """What an index pair holds once read and checked."""

    index: faiss.Index
    table: pd.DataFrame
    metric: Metric
    pca: dict[str, Any] | None
    metadata: dict[str, Any]


def write_index_files(path: str | os.PathLike, index: faiss.Index, table: pd.DataFrame,
                      file_metadata: dict[str, Any]) -> Path:
    """Write the CPU FAISS ``index`` to ``path`` and ``table`` + ``file_metadata`` to the sidecar."""
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = json.dumps(file_metadata).encode()
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), METADATA_KEY: meta})
    with atomic_path(sidecar_path(path)) as tmp:
        pq.write_table(arrow, tmp)
    return path


def read_index_files(path: str | os.PathLike, mmap: bool = False) -> IndexFiles:
    """Read and cross-check an index pair written by :func:`write_index_files`.

    ``mmap``: memory-map the flat codes read-only (``IO_FLAG_MMAP_IFC``) instead of reading them
    into memory: processes on one node then share the pages (used by the Ray identify actors).

    Raises:
        MissingDataError: either file is missing.
        CorruptFileError: a file is unreadable, or the index and sidecar disagree; the message
            names the file.
    """
    path = Path(path)
    sidecar = sidecar_path(path)
    for required in (path, sidecar):
        if not required.is_file():
            raise MissingDataError(f"{required}: not found (an index needs {path} and {sidecar})")
    try:
        arrow = pq.read_table(sidecar)
        meta = json.loads((arrow.schema.metadata or {})[METADATA_KEY])
    except (pa.ArrowException, OSError, KeyError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{sidecar}: not an index metadata file ({exc})") from exc
    try:
        index = faiss.read_index(str(path), (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0)
    except RuntimeError as exc:
        raise CorruptFileError(f"{path}: not a readable FAISS index ({exc})") from exc
    if not isinstance(index, faiss.IndexIDMap2):
        raise CorruptFileError(f"{path}: expected an IndexIDMap2, got {type(index).__name__}")
    try:
        metric = get_metric(meta.get("metric"))
        table = check_table(arrow.to_pandas()[list(TABLE_COLUMNS)], arrow.num_rows, str(sidecar))
    except (ValueError, KeyError) as exc:
        raise CorruptFileError(f"{sidecar}: bad index metadata ({exc})") from exc
    pca = meta.get("pca")
    problems = _disagreements(index, table, meta, metric)
    if problems:
        raise CorruptFileError(f"{path}: index and {sidecar.name} disagree: " + "; ".join(problems))
    return IndexFiles(index, table, metric, pca, dict(meta.get("metadata") or {}))


def _disagreements(index: faiss.IndexIDMap2, table: pd.DataFrame, meta: dict, metric: Metric) -> list[str]:
    inner = faiss.downcast_index(index.index)
    stored_dim = inner.index.d if isinstance(inner, faiss.IndexPreTransform) else inner.d
    pca = meta.get("pca")
    problems = []
    if meta.get("count") != index.ntotal or len(table) != index.ntotal:
        problems.append(f"count: sidecar {meta.get('count')} ({len(table)} rows), index {index.ntotal}")
    if meta.get("input_dimension") != index.d:
        problems.append(f"input dimension: sidecar {meta.get('input_dimension')}, index {index.d}")
    if meta.get("dimension") != stored_dim:
        problems.append(f"dimension: sidecar {meta.get('dimension')}, index {stored_dim}")
    if (pca is not None) != isinstance(inner, faiss.IndexPreTransform):
        problems.append(f"PCA: sidecar says {pca}, index {type(inner).__name__}")
    if index.metric_type != metric.faiss_metric:
        problems.append(f"metric: sidecar {metric.name}, index metric_type {index.metric_type}")
    if not problems:
        stored_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if not np.array_equal(stored_ids, table["id"].to_numpy(dtype=np.int64)):
            problems.append("ids differ between sidecar and index")
    return problems
