"""Reading and writing an index: the FAISS file plus a ``.meta.parquet`` sidecar, with checks.

The sidecar holds the live rows (id, label, group, path) and, in its Parquet metadata, the metric,
dimensions, PCA, count, model fingerprint, the index plan (kind, factory string), the tuned search
parameters, and the ids removed from the index (``removed``; ``tombstones`` are the removed ids
still physically inside a FAISS index that cannot delete, filtered out at search time).

Consistency for readers while a writer replaces the pair: the writer writes both files under
temporary names, then renames the sidecar and the index onto their final names (two
``os.replace`` calls, microseconds apart). The sidecar records the FAISS file's byte size and
every fact the two share is compared on load; a reader that catches the pair between the two
renames sees a disagreement and re-reads (a few tries, short sleeps) instead of failing. A reader
that has loaded (or memory-mapped) the old files keeps using them unharmed: the renames replace
names, not the bytes of open files. Writers take :func:`oneshot.index.locks.writer_lock`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
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

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".meta.parquet"
READ_TRIES = 5
RETRY_SECONDS = 0.2


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
    state: dict[str, Any] = field(default_factory=dict)


def write_index_files(path: str | os.PathLike, index: faiss.Index, table: pd.DataFrame,
                      file_metadata: dict[str, Any]) -> Path:
    """Write the CPU FAISS ``index`` to ``path`` and ``table`` + ``file_metadata`` to the sidecar.

    Both are written in full under temporary names first, then renamed (sidecar, then index).
    """
    path = Path(path)
    with atomic_path(path) as tmp_index:
        faiss.write_index(index, str(tmp_index))
        meta = {**file_metadata, "index_bytes": tmp_index.stat().st_size}
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(meta).encode()})
        with atomic_path(sidecar_path(path)) as tmp_sidecar:
            pq.write_table(arrow, tmp_sidecar)
    return path


def _read_faiss(path: Path, mmap: bool) -> faiss.Index:
    """``faiss.read_index``, memory-mapped when asked and FAISS can (else read into memory).

    ``IO_FLAG_MMAP_IFC`` maps flat codes and IVF lists in place (measured: a 100 MB flat or IVF
    index adds 2-6 MB of resident memory); older FAISS builds fall back to ``IO_FLAG_MMAP`` (IVF
    lists only) and then to a plain read.
    """
    if mmap:
        for flag in (getattr(faiss, "IO_FLAG_MMAP_IFC", None), faiss.IO_FLAG_MMAP):
            if flag is None:
                continue
            try:
                return faiss.read_index(str(path), flag)
            except RuntimeError as exc:
                logger.debug("%s: mmap flag %#x refused (%s)", path, flag, exc)
    return faiss.read_index(str(path))


def read_index_files(path: str | os.PathLike, mmap: bool = False) -> IndexFiles:
    """Read and cross-check an index pair written by :func:`write_index_files`.

    Args:
        path: the FAISS file (the sidecar is ``path + ".meta.parquet"``).
        mmap: memory-map the vectors/lists where FAISS allows (read-only: searching only).

    Raises:
        MissingDataError: either file is missing.
        CorruptFileError: a file is unreadable, or the index and sidecar still disagree after
            :data:`READ_TRIES` reads; the message names the file.
    """
    last: CorruptFileError | None = None
    for attempt in range(READ_TRIES):
        try:
            return _read_once(Path(path), mmap)
        except _Disagreement as exc:
            last = CorruptFileError(str(exc))
            logger.info("%s (try %d of %d; a writer may be replacing the pair)", exc, attempt + 1, READ_TRIES)
            time.sleep(RETRY_SECONDS)
    raise last


def read_index_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` an index was saved with (model fingerprint, store, ...), read from its
    sidecar's schema alone: no FAISS file, no row table.

    Raises:
        MissingDataError: the sidecar is missing.
        CorruptFileError: it is not an index metadata file; the message names it.
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise MissingDataError(f"{sidecar}: not found (an index needs {path} and {sidecar})")
    try:
        meta = json.loads((pq.read_schema(sidecar).metadata or {})[METADATA_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{sidecar}: not an index metadata file ({exc})") from exc
    return dict(meta.get("metadata") or {})


class _Disagreement(Exception):
    pass


def _read_once(path: Path, mmap: bool) -> IndexFiles:
    sidecar = sidecar_path(path)
    for required in (path, sidecar):
        if not required.is_file():
            raise MissingDataError(f"{required}: not found (an index needs {path} and {sidecar})")
    try:
        arrow = pq.read_table(sidecar)
        meta = json.loads((arrow.schema.metadata or {})[METADATA_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{sidecar}: not an index metadata file ({exc})") from exc
    size_before = path.stat().st_size
    try:
        index = _read_faiss(path, mmap)
    except (RuntimeError, MemoryError) as exc:  # MemoryError: a damaged header asking for a huge vector
        if meta.get("index_bytes") not in (None, size_before):
            raise _Disagreement(f"{path}: size {size_before} but {sidecar.name} says {meta.get('index_bytes')}")
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
    if meta.get("index_bytes") not in (None, size_before):
        problems.append(f"file size: sidecar {meta.get('index_bytes')}, index {size_before}")
    if problems:
        raise _Disagreement(f"{path}: index and {sidecar.name} disagree: " + "; ".join(problems))
    state = {key: meta.get(key) for key in ("plan", "search_params", "tuning", "removed", "tombstones")}
    return IndexFiles(index, table, metric, pca, dict(meta.get("metadata") or {}), state)


def stored_dimension(index: faiss.IndexIDMap2) -> int:
    """Dimension of the vectors inside the index (after any PCA/OPQ pre-transform)."""
    inner = faiss.downcast_index(index.index)
    return inner.index.d if isinstance(inner, faiss.IndexPreTransform) else inner.d


def _disagreements(index: faiss.IndexIDMap2, table: pd.DataFrame, meta: dict, metric: Metric) -> list[str]:
    inner = faiss.downcast_index(index.index)
    pca = meta.get("pca")
    tombstones = np.asarray(meta.get("tombstones") or [], dtype=np.int64)
    problems = []
    live = index.ntotal - len(tombstones)
    if meta.get("count") != live or len(table) != live:
        problems.append(f"count: sidecar {meta.get('count')} ({len(table)} rows), index {live}")
    if meta.get("input_dimension") != index.d:
        problems.append(f"input dimension: sidecar {meta.get('input_dimension')}, index {index.d}")
    if meta.get("dimension") != stored_dimension(index):
        problems.append(f"dimension: sidecar {meta.get('dimension')}, index {stored_dimension(index)}")
    if pca is not None and not isinstance(inner, faiss.IndexPreTransform):
        problems.append(f"PCA: sidecar says {pca}, index {type(inner).__name__}")
    if index.metric_type != metric.faiss_metric:
        problems.append(f"metric: sidecar {metric.name}, index metric_type {index.metric_type}")
    if not problems:
        stored_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if len(tombstones):
            stored_ids = stored_ids[~np.isin(stored_ids, tombstones)]
        if not np.array_equal(stored_ids, table["id"].to_numpy(dtype=np.int64)):
            problems.append("ids differ between sidecar and index")
    return problems
