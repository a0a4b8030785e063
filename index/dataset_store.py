"""A gallery as a dataset: a folder of Parquet shards plus a ``_oneshot.json`` manifest.

Layout of a store folder (its name may end in ``.parquet``)::

    gallery.parquet/
        _oneshot.json          manifest: format, schema version, model fingerprint, metric,
                               recipe, source, counts, the shards in order, the job that wrote it
        part-000000.parquet    id, path, label, group, content_hash, [extra], embedding
        part-000001.parquet
        ...

Names starting with ``_`` or ``.`` are ignored by pyarrow, pandas and duckdb, so
``pandas.read_parquet(folder)``, ``pyarrow.parquet.read_table(folder)`` and
``duckdb.sql("select * from 'folder/*.parquet'")`` read the shards as one table as they are. Every
shard is written under a temporary (hidden) name and renamed into place, then the manifest is
rewritten (also atomically): the manifest is the commit point, so a killed writer leaves a store
whose listed shards are all complete. Shards not listed in the manifest (left by a killed
``compact``) are deleted the next time the store is opened for writing.

Ids are stable: :func:`path_id` derives a 63-bit id from the image's path, so re-runs and appends
give every image the same id. Where two shards hold the same id (an append re-encoded a changed
image and was killed before dropping the old row), the later shard wins when reading.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oneshot.atomic import atomic_path
from oneshot.errors import CorruptFileError, InvalidInputError, MissingDataError
from oneshot.index.store import (
    EMBEDDING_COLUMN,
    METADATA_KEY,
    REQUIRED_COLUMNS,
    EmbeddingSet,
    check_table,
    rows_normalized,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_oneshot.json"
FORMAT = "oneshot-store"
SCHEMA_VERSION = 1
HASH_COLUMN = "content_hash"
DEFAULT_SHARD_ROWS = 65536
_ID_MASK = (1 << 63) - 1


def path_id(path: str) -> int:
    """A stable 63-bit id for an image path (blake2b; non-negative int64)."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _ID_MASK


def path_ids(paths: Iterable[str]) -> np.ndarray:
    """:func:`path_id` of each path -> int64 (N,)."""
    return np.fromiter((path_id(p) for p in paths), dtype=np.int64)


def is_dataset_store(path: str | os.PathLike) -> bool:
    """True for a folder holding a store manifest."""
    return (Path(path) / MANIFEST_NAME).is_file()


class ShardWriter:
    """One shard written as its batches come (memory: one row group, not the whole shard).

    Batches go to a hidden temporary file in row groups of :attr:`ROW_GROUP_ROWS`; :meth:`commit`
    renames it into place and records it in the manifest (the commit point). Used as a context
    manager, a shard not committed is discarded: nothing half-written is left under a shard name.
    """

    ROW_GROUP_ROWS = 8192

    def __init__(self, store: DatasetStore, name: str):
        self.store, self.name = store, name
        self.rows, self.normalized = 0, True
        self._tmp = store.folder / f".{name}.{uuid.uuid4().hex}.tmp"  # cleaned up after a kill (oneshot.locks)
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []

    def write(self, table: pd.DataFrame, embeddings: np.ndarray) -> None:
        """Add rows and their (N, D) vectors (N may be 0: the shard then has the rows' schema)."""
        arrow = self.store.shard_arrow(table, embeddings)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, arrow.schema)
        elif arrow.schema != self._writer.schema:
            arrow = arrow.cast(self._writer.schema)
        self._pending.append(arrow)
        self.rows += arrow.num_rows
        if arrow.num_rows:
            self.normalized = self.normalized and rows_normalized(np.asarray(embeddings))
        if sum(t.num_rows for t in self._pending) >= self.ROW_GROUP_ROWS:
            self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool = False) -> None:
        """Write the pending rows as row groups of ROW_GROUP_ROWS (keeping a remainder pending)."""
        if not self._pending:
            return
        pending = pa.concat_tables(self._pending)
        cut = pending.num_rows - pending.num_rows % self.ROW_GROUP_ROWS if whole_groups_only else pending.num_rows
        if cut or not whole_groups_only:
            self._writer.write_table(pending.slice(0, cut), row_group_size=self.ROW_GROUP_ROWS)
        self._pending = [pending.slice(cut)] if cut < pending.num_rows else []

    def commit(self) -> str:
        """Close the file, move it into place and record it in the manifest; returns its name."""
        if self._writer is None:
            raise InvalidInputError(f"{self.store.folder}: shard {self.name} has no rows and no schema; write "
                                    "an empty table first")
        self._flush()
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.store.folder / self.name)
        self.store._commit_shard(self.name, self.rows, self.normalized)
        return self.name

    def discard(self) -> None:
        """Drop a shard that will not be committed."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._pending = []
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp.exists() or self._writer is not None:
            self.discard()


def _shard_name(number: int, generation: int = 0) -> str:
    return f"part-{number:06d}.parquet" if generation == 0 else f"part-g{generation}-{number:06d}.parquet"


class DatasetStore:
    """A store folder: its manifest plus shard reading and writing.

    Open with :meth:`open` or :meth:`create`. Writers must call :meth:`add_shard` (which commits
    each shard to the manifest) and :meth:`set_state`.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest

    # ------------------------------------------------------------ opening and the manifest

    @classmethod
    def create(cls, folder: str | os.PathLike, metadata: dict[str, Any]) -> "DatasetStore":
        """Create an empty store folder (it must not hold a store yet).

        Args:
            metadata: ``dimension``, ``metric`` and ``model_fingerprint`` at least, plus anything
                JSON-serialisable (recipe, source, job, ...).
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"{folder}: exists and is a file; a store is a folder (migrate it with "
                                    "`oneshot store migrate`)")
        if is_dataset_store(folder):
            raise InvalidInputError(f"{folder}: already holds a store")
        for key in ("dimension", "metric"):
            if key not in metadata:
                raise InvalidInputError(f"store metadata needs {key!r}")
        folder.mkdir(parents=True, exist_ok=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "model_fingerprint": None,
            **metadata,
            "state": "writing",
            "shards": [],
            "count": 0,
            "created": now,
            "updated": now,
        }
        store = cls(folder, manifest)
        store.save_manifest()
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "DatasetStore":
        folder = Path(folder)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise MissingDataError(f"{folder}: not a store folder (no {MANIFEST_NAME})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CorruptFileError(f"{manifest_path}: unreadable manifest ({error})") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CorruptFileError(f"{manifest_path}: not a oneshot store manifest")
        if manifest.get("schema_version", 0) > SCHEMA_VERSION:
            raise CorruptFileError(f"{manifest_path}: schema version {manifest.get('schema_version')} is newer "
                                   f"than this oneshot reads ({SCHEMA_VERSION}); upgrade oneshot")
        for shard in manifest.get("shards", []):
            if not (folder / shard["name"]).is_file():
                raise CorruptFileError(f"{folder}: shard {shard['name']} listed in the manifest is missing")
        return cls(folder, manifest)

    def save_manifest(self) -> None:
        """Write the manifest atomically (the commit point of every change)."""
        self.manifest["count"] = int(sum(s["rows"] for s in self.manifest["shards"]))
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with atomic_path(self.folder / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str) + "\n")

    def set_state(self, state: str, **fields: Any) -> None:
        self.manifest.update(fields)
        self.manifest["state"] = state
        self.save_manifest()

    def remove_strays(self) -> list[str]:
        """Delete shard files the manifest does not list (left by a killed rewrite); their names."""
        for shard in self.manifest["shards"]:  # a rewrite killed before its commit: trust the footers
            shard["rows"] = int(pq.ParquetFile(self.folder / shard["name"]).metadata.num_rows)
        listed = {s["name"] for s in self.manifest["shards"]}
        strays = [p for p in self.folder.glob("part-*.parquet") if p.name not in listed]
        for stray in strays:
            stray.unlink()
        if strays:
            logger.warning("%s: removed %d shard files not in the manifest", self.folder, len(strays))
        self.save_manifest()
        return [p.name for p in strays]

    # ------------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.folder / s["name"] for s in self.manifest["shards"]]

    def metadata(self) -> dict[str, Any]:
        """The manifest minus the shard list: what ``EmbeddingSet.metadata`` carries."""
        return {k: v for k, v in self.manifest.items() if k != "shards"}

    # ------------------------------------------------------------------------- writing

    def _schema(self, table: pa.Table) -> pa.Schema:
        field = pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), self.dimension), nullable=False)
        meta = {"dimension": self.dimension, "metric": self.manifest["metric"],
                "model_fingerprint": self.manifest.get("model_fingerprint"), "format": FORMAT}
        return table.schema.append(field).with_metadata({METADATA_KEY: json.dumps(meta).encode()})

    def shard_arrow(self, table: pd.DataFrame, embeddings: np.ndarray) -> pa.Table:
        """Rows and their (N, D) vectors as an Arrow table in the shard schema (checked)."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dimension:
            raise InvalidInputError(f"{self.folder}: shard vectors must be (N, {self.dimension}), got {emb.shape}")
        if not np.isfinite(emb).all():
            raise InvalidInputError(f"{self.folder}: shard vectors contain NaN or infinite values")
        rows = check_table(table, emb.shape[0], name="shard table")
        if HASH_COLUMN not in rows.columns:
            rows[HASH_COLUMN] = pd.Series([None] * len(rows), dtype=object)
        ordered = [*REQUIRED_COLUMNS, HASH_COLUMN] + [c for c in rows.columns if c not in (*REQUIRED_COLUMNS, HASH_COLUMN)]
        base = pa.Table.from_pandas(rows[ordered], preserve_index=False)
        if base.schema.field(HASH_COLUMN).type == pa.null():
            base = base.set_column(base.schema.get_field_index(HASH_COLUMN), HASH_COLUMN,
                                   pa.nulls(len(rows), pa.string()))
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), self.dimension)
        return base.append_column(EMBEDDING_COLUMN, vectors).cast(self._schema(base))

    def write_shard_file(self, name: str, table: pd.DataFrame, embeddings: np.ndarray) -> int:
        """Write one shard atomically under ``name`` (not yet committed); returns its rows."""
        arrow = self.shard_arrow(table, embeddings)
        with atomic_path(self.folder / name) as tmp:
            pq.write_table(arrow, tmp, row_group_size=DEFAULT_SHARD_ROWS)
        return arrow.num_rows

    def add_shard(self, table: pd.DataFrame, embeddings: np.ndarray, number: int | None = None) -> str:
        """Write a shard and commit it to the manifest; returns its file name.

        Args:
            number: the shard's position (resumable jobs name shards by position); default next.
        """
        with self.shard_writer(number) as shard:
            shard.write(table, embeddings)
            return shard.commit()

    def shard_writer(self, number: int | None = None) -> "ShardWriter":
        """A shard written batch by batch and committed at the end (see :class:`ShardWriter`)."""
        name = _shard_name(self._next_number() if number is None else number, int(self.manifest.get("generation", 0)))
        if any(s["name"] == name for s in self.manifest["shards"]):
            raise InvalidInputError(f"{self.folder}: shard {name} is already committed")
        return ShardWriter(self, name)

    def _commit_shard(self, name: str, rows: int, normalized: bool) -> None:
        self.manifest["normalized"] = bool(self.manifest.get("normalized", True) and normalized)
        self.manifest["shards"].append({"name": name, "rows": rows})
        self.save_manifest()

    def _next_number(self) -> int:
        numbers = [int(s["name"].rsplit("-", 1)[1].split(".")[0]) for s in self.manifest["shards"]]
        return max(numbers, default=-1) + 1

    # ------------------------------------------------------------------------- reading

    def read_columns(self, columns: list[str]) -> pd.DataFrame:
        """Some non-vector columns of every shard, in order (with a ``_shard`` position column)."""
        parts = []
        for position, path in enumerate(self.shard_paths):
            frame = pq.read_table(path, columns=columns).to_pandas()
            frame["_shard"] = position
            parts.append(frame)
        if not parts:
            return pd.DataFrame({c: [] for c in columns + ["_shard"]})
        return pd.concat(parts, ignore_index=True)

    def iter_shards(self, with_vectors: bool = True) -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
        """(table, embeddings float32 (n, D)) per shard, in manifest order; bounded by one shard."""
        for path in self.shard_paths:
            try:
                arrow = pq.read_table(path) if with_vectors else pq.read_table(
                    path, columns=[c for c in pq.read_schema(path).names if c != EMBEDDING_COLUMN])
            except (pa.ArrowException, OSError) as exc:
                raise CorruptFileError(f"{path}: not a readable Parquet shard ({exc})") from exc
            vectors = None
            if with_vectors:
                column = arrow.column(EMBEDDING_COLUMN)
                if column.null_count:
                    raise CorruptFileError(f"{path}: {column.null_count} rows have no embedding")
                flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False) if arrow.num_rows else []
                vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(arrow.num_rows, self.dimension)
                arrow = arrow.drop_columns([EMBEDDING_COLUMN])
            table = arrow.to_pandas()
            table["id"] = table["id"].astype(np.int64)
            yield table, vectors

    def read(self) -> EmbeddingSet:
        """Every row as one :class:`EmbeddingSet` (later shards win on duplicate ids)."""
        tables, chunks = [], []
        for table, vectors in self.iter_shards():
            tables.append(table)
            chunks.append(vectors)
        if tables:
            table = pd.concat(tables, ignore_index=True)
            embeddings = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
        else:
            table = pd.DataFrame({c: pd.Series([], dtype=object) for c in REQUIRED_COLUMNS})
            table["id"] = table["id"].astype(np.int64)
            embeddings = np.zeros((0, self.dimension), dtype=np.float32)
        duplicated = table["id"].duplicated(keep="last").to_numpy()
        if duplicated.any():
            logger.warning("%s: %d rows superseded by later shards (an interrupted append); "
                           "`oneshot embed --append` again finishes it", self.folder, int(duplicated.sum()))
            table = table[~duplicated].reset_index(drop=True)
            embeddings = np.ascontiguousarray(embeddings[~duplicated])
        if not np.isfinite(embeddings).all():
            raise CorruptFileError(f"{self.folder}: embeddings contain NaN or infinite values")
        meta = self.metadata()
        meta["count"] = int(len(table))
        return EmbeddingSet(table=table, embeddings=embeddings, metadata=meta)

    # ------------------------------------------------------------------- rewriting rows

    def remove_rows(self, drop: Callable[[pd.DataFrame], np.ndarray], only: set[str] | None = None,
                    record: bool = True) -> int:
        """Delete the rows for which ``drop(table) -> bool mask`` is true, shard by shard.

        Only shards holding such rows are rewritten (each atomically, under its own name), then
        the manifest is committed; readers never see a removed row again. Returns rows removed.

        Args:
            drop: gets a shard's ``id``, ``path``, ``label``, ``group`` columns.
            only: consider only the shards with these file names.
            record: add the removal to the manifest's history.
        """
        removed = 0
        for shard in list(self.manifest["shards"]):
            if only is not None and shard["name"] not in only:
                continue
            path = self.folder / shard["name"]
            keys = pq.read_table(path, columns=list(REQUIRED_COLUMNS)).to_pandas()
            mask = np.asarray(drop(keys), dtype=bool)
            if not mask.any():
                continue
            arrow = pq.read_table(path)
            kept = arrow.filter(pa.array(~mask))
            with atomic_path(path) as tmp:
                pq.write_table(kept, tmp, row_group_size=DEFAULT_SHARD_ROWS)
            shard["rows"] = int(kept.num_rows)
            removed += int(mask.sum())
        if removed and record:
            self.manifest.setdefault("history", []).append(
                {"action": "remove", "rows": removed, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if removed:
            self.save_manifest()
        return removed

    def compact(self, shard_rows: int | None = None) -> dict[str, int]:
        """Rewrite the shards into full ones of ``shard_rows`` rows (default: the store's), dropping
        empty shards and rows superseded by later shards. Bounded by one output shard in memory.

        New shards get a new generation name; the manifest switches to them in one commit and the
        old files are deleted after it.
        """
        shard_rows = int(shard_rows or self.manifest.get("shard_rows") or DEFAULT_SHARD_ROWS)
        if shard_rows < 1:
            raise InvalidInputError(f"shard_rows must be >= 1, got {shard_rows}")
        ids = self.read_columns(["id"])
        keep_last = ~ids["id"].duplicated(keep="last").to_numpy()
        generation = int(self.manifest.get("generation", 0)) + 1
        old = list(self.manifest["shards"])
        new_shards: list[dict[str, Any]] = []
        tables, chunks, buffered, offset = [], [], 0, 0

        def flush():
            nonlocal tables, chunks, buffered
            if not buffered:
                return
            name = _shard_name(len(new_shards), generation)
            rows = self.write_shard_file(name, pd.concat(tables, ignore_index=True), np.concatenate(chunks))
            new_shards.append({"name": name, "rows": rows})
            tables, chunks, buffered = [], [], 0

        for table, vectors in self.iter_shards():
            keep = keep_last[offset : offset + len(table)]
            offset += len(table)
            table, vectors = table[keep].reset_index(drop=True), vectors[keep]
            start = 0
            while start < len(table):
                take = min(shard_rows - buffered, len(table) - start)
                tables.append(table.iloc[start : start + take])
                chunks.append(vectors[start : start + take])
                buffered += take
                start += take
                if buffered == shard_rows:
                    flush()
        flush()
        self.manifest["shards"] = new_shards
        self.manifest["generation"] = generation
        self.manifest["shard_rows"] = shard_rows
        self.manifest.setdefault("history", []).append(
            {"action": "compact", "shards_before": len(old), "shards_after": len(new_shards),
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.save_manifest()
        for shard in old:
            (self.folder / shard["name"]).unlink(missing_ok=True)
        return {"shards_before": len(old), "shards_after": len(new_shards), "rows": len(self)}


def read_dataset(folder: str | os.PathLike) -> EmbeddingSet:
    """Every row of a store folder as an :class:`EmbeddingSet`."""
    return DatasetStore.open(folder).read()


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """A description of a store (folder or single file): layout, counts, model, source, shards."""
    from oneshot.index.store import read_store_metadata

    path = Path(path)
    if path.is_dir():
        store = DatasetStore.open(path)
        keys = store.read_columns(["id", "label", "path", HASH_COLUMN])
        info = {k: v for k, v in store.metadata().items() if k not in ("history",)}
        info.update({
            "layout": "sharded",
            "path": str(path),
            "rows": int(len(keys)),
            "labels": int(keys["label"].nunique()),
            "shards": len(store.manifest["shards"]),
            "rows_per_shard": [s["rows"] for s in store.manifest["shards"]],
            "bytes": int(sum(p.stat().st_size for p in store.shard_paths)),
            "duplicate_content": int(keys[HASH_COLUMN].dropna().duplicated().sum()),
            "superseded_rows": int(keys["id"].duplicated().sum()),
            "history": store.manifest.get("history", []),
        })
        return info
    meta = read_store_metadata(path)
    return {"layout": "single-file", "path": str(path), "rows": meta.get("count"), **meta,
            "bytes": path.stat().st_size}


def migrate_store(source: str | os.PathLike, out: str | os.PathLike,
                  shard_rows: int = DEFAULT_SHARD_ROWS) -> DatasetStore:
    """Rewrite a single-file store (``write_embeddings``) as a store folder, reading it row group
    by row group. Ids, rows and vectors are kept; ``content_hash`` is empty (the images are not
    read). The old file is left as it was.
    """
    from oneshot.index.store import read_store_metadata

    source, out = Path(source), Path(out)
    if source.is_dir():
        raise InvalidInputError(f"{source}: already a store folder; nothing to migrate")
    if source.resolve() == out.resolve():
        raise InvalidInputError(f"{out}: choose another --out than the file being migrated")
    meta = read_store_metadata(source)
    handle = pq.ParquetFile(source)
    metadata = {k: v for k, v in meta.items() if k not in ("count", "normalized")}
    metadata.update({"migrated_from": str(source.resolve()), "id_mode": "legacy", "shard_rows": shard_rows,
                     "normalized": True})
    store = DatasetStore.create(out, metadata)
    tables, chunks, buffered = [], [], 0
    for batch in handle.iter_batches(batch_size=min(shard_rows, 65536)):
        arrow = pa.Table.from_batches([batch])
        column = arrow.column(EMBEDDING_COLUMN).combine_chunks()
        vectors = np.ascontiguousarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        tables.append(arrow.drop_columns([EMBEDDING_COLUMN]).to_pandas())
        chunks.append(vectors.reshape(arrow.num_rows, store.dimension))
        buffered += arrow.num_rows
        while buffered >= shard_rows:
            table, vectors = pd.concat(tables, ignore_index=True), np.concatenate(chunks)
            store.add_shard(table.iloc[:shard_rows], vectors[:shard_rows])
            tables, chunks = [table.iloc[shard_rows:]], [vectors[shard_rows:]]
            buffered -= shard_rows
    if buffered:
        store.add_shard(pd.concat(tables, ignore_index=True), np.concatenate(chunks))
    if len(store) != meta.get("count"):
        raise CorruptFileError(f"{source}: metadata count {meta.get('count')} but {len(store)} rows migrated")
    store.set_state("complete")
    return store
