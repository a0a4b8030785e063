"""The embed job: images -> a store folder of Parquet shards, in bounded memory, resumable.

The batches are read, decoded and encoded by an engine (:mod:`oneshot.pipelines.engines.local`
in this process, or :class:`oneshot.pipelines.engines.ray.RayEngine`); this module plans them,
writes one shard every ``shard_rows`` rows and keeps the manifest. Memory holds the source's table,
one row group of vectors and a few prefetched batches, whatever the gallery's size.

The job's description (source, model, recipe, ids, shard size) is saved in the manifest, so
running the same command again after a kill continues from the last committed shard; any other
command on an existing store is refused, except ``append=True``, which encodes only images whose
path is new or whose content changed. :func:`embed_gallery` is the same job, read back whole.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oneshot.data.folders import Gallery
from oneshot.data.source import ImageSource, describe_source, listing_rejects, open_source
from oneshot.embedder.artifact import as_model, shipped_model_with
from oneshot.embedder.encode import default_device
from oneshot.embedder.inference import InferenceModel
from oneshot.embedder.model import Embedder
from oneshot.embedder.precision import check_precision
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.shipped import choose_shipped_model, sample_rows
from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.dataset_store import (
    DEFAULT_SHARD_ROWS,
    HASH_COLUMN,
    MANIFEST_NAME,
    DatasetStore,
    is_dataset_store,
    path_ids,
)
from oneshot.index.store import EmbeddingSet, read_embeddings
from oneshot.locks import exclusive_lock
from oneshot.memory import release_unused_memory
from oneshot.pipelines.engines.local import batch_plan, default_workers, encode_source, encode_stream
from oneshot.pipelines.reading import RejectPolicy, Rejects, read_batch, rejects_path

log = logging.getLogger(__name__)

ID_MODES = ("path", "source")


def _source_table(gallery: ImageSource, ids: str) -> pd.DataFrame:
    if ids not in ID_MODES:
        raise InvalidInputError(f"ids must be one of {ID_MODES}, got {ids!r}")
    table = gallery.table.copy()
    if ids == "path":
        table["id"] = path_ids(table["path"])
    if table["id"].duplicated().any():
        dup = table.loc[table["id"].duplicated(), "path"].head(3).tolist()
        raise InvalidInputError(f"{describe_source(gallery)}: duplicate ids for paths {dup}")
    for column in table.columns:  # Arrow strings: a million paths cost their bytes, not a str object each
        if table[column].dtype == object:
            try:
                table[column] = table[column].astype("string[pyarrow]")
            except (TypeError, ValueError):  # not all strings: leave the column as it is
                pass
    return table


def _images_of_store(store: Path, labelled: bool) -> tuple[str, bool]:
    """Where a store's images live, to re-embed them (e.g. with another model, into a new store)."""
    job = DatasetStore.open(store).manifest.get("job", {})
    location = job.get("source")
    if not location or not Path(location).exists():
        raise InvalidInputError(f"{store}: its source images ({location or 'not recorded'}) are not available; "
                                "embed the images themselves")
    log.info("re-embedding the images of %s from %s", store, location)
    return location, job.get("labelled", labelled)


def _job(gallery: ImageSource, model: Embedder, labelled: bool, tta: bool, ids: str, shard_rows: int,
         rows: int, precision: str = "float32") -> dict[str, Any]:
    location = getattr(gallery, "location", None) or getattr(gallery, "source", None)
    where = str(Path(location).resolve()) if location is not None else describe_source(gallery)
    job = {"source": where, "labelled": labelled, "model_fingerprint": getattr(model, "fingerprint", None),
           "recipe": model.recipe.to_dict(), "tta": tta, "ids": ids, "shard_rows": shard_rows, "rows": rows}
    if precision != "float32":  # float32 stores keep the job record they always had
        job["precision"] = precision
    return job


@dataclass
class EmbedResult:
    """What an embed job did: the store, rows encoded now, rows kept from before, what it was."""

    store: DatasetStore
    encoded: int
    kept: int
    action: str  # "created", "resumed", "appended", or "kept" (already complete, read as it is)
    inference_mode: str
    model_choice: str = ""  # why this shipped model, when none was named ("" when one was)


def _refuse_existing(out: Path, store: DatasetStore, job: dict[str, Any]) -> None:
    stored = store.manifest.get("job", {})
    if stored.get("model_fingerprint") != job["model_fingerprint"]:
        raise ModelMismatchError(
            f"{out}: embedded with model {stored.get('model_fingerprint')}, this command uses model "
            f"{job['model_fingerprint']}; re-embedding with another model makes a new store: choose another --out")
    if store.manifest.get("state") == "complete" and stored == job:
        raise InvalidInputError(f"{out}: already complete for this command ({len(store)} rows); use --append to "
                                "add new or changed images, or choose another --out")
    differences = sorted(k for k in set(stored) | set(job) if stored.get(k) != job.get(k))
    raise InvalidInputError(f"{out}: holds a store made by another command (differs in {', '.join(differences)}); "
                            "run the same command to resume it, --append to add to it, or choose another --out")


def embed_to_store(source: str | os.PathLike | ImageSource, out: str | os.PathLike,
                   model: Embedder | str | os.PathLike | None = None, batch_size: int | None = None,
                   workers: int | None = None, labelled: bool = True, tta: bool = False, append: bool = False,
                   shard_rows: int = DEFAULT_SHARD_ROWS, ids: str = "path", device: str | None = None,
                   inference: str = "auto", show_progress: bool | None = None,
                   rejects: Rejects | None = None, executor=None, reuse_complete: bool = False,
                   all_faces: bool = False, precision: str = "float32") -> EmbedResult:
    """Encode a source into a store folder, streaming; resume or append when ``out`` exists.

    Files that cannot be used are left out and listed in ``<out>.rejects.csv`` (path, reason)
    under ``rejects``' policy (default: skip them; ``fail`` stops at the first, and shards already
    committed stay, so the same command resumes). A lock refuses a second process writing ``out``.

    Args:
        source: anything :func:`oneshot.data.source.open_source` opens, an opened source, or a store
            folder made by this job (its source images are re-embedded, e.g. with another model).
        out: the store folder (a name ending in ``.parquet`` is fine).
        model: a model, a model file, or ``None`` for the shipped one.
        batch_size: images per forward pass (default: chosen for the machine).
        workers: reader threads (default :func:`default_workers`).
        append: add only images whose path is new or whose content changed to a complete store.
        shard_rows: rows per shard (the unit of resumption).
        ids: ``"path"`` (63-bit hash of the path: stable across runs) or ``"source"`` (the source
            table's own ``id`` column, e.g. a user-supplied one).
        device: ``"cuda"``/``"cpu"`` (default CUDA when present).
        inference: :class:`InferenceModel` mode (``"auto"``: frozen TorchScript; ``"compile"`` was
            faster per batch, 7,700 vs 5,100 img/s on 2 cores, but its ~15 s start-up and its
            compiler's memory cost more than it saves below millions of images: ask for it).
        rejects: the reject collector and its policy; read ``rejects.items`` afterwards.
        executor: where batches are decoded and encoded: None for this process (threads), or an
            object with an ``encode_stream`` method of :func:`encode_stream`'s signature (e.g.
            :class:`oneshot.pipelines.engines.ray.RayEngine`); shards are written here either way.
        reuse_complete: when ``out`` is already complete for this very command, return it as it is
            instead of refusing (what :func:`embed_gallery` does on a second call).
        all_faces: face models only: every face found in a photo is its own row (column ``face``:
            1 for the largest; ``id``: a hash of ``path#faceN``), instead of the largest alone.
        precision: ``"float32"`` or ``"bfloat16"`` (the forward pass under autocast: 1.2-1.4x the
            images a second on a CPU with native bfloat16, vectors at cosine >= 0.9999 of float32's;
            recorded in the store's job, and an append must use the store's precision).

    Raises:
        ModelMismatchError: ``out`` was made with another model.
        InvalidInputError: ``out`` exists and this is not the command that made it (nor ``append``).
    """
    out = Path(out)
    if shard_rows < 1:
        raise InvalidInputError(f"shard_rows must be >= 1, got {shard_rows}")
    precision = check_precision(precision)
    rejects = rejects if rejects is not None else Rejects()
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        if is_dataset_store(out) and DatasetStore.open(out).manifest.get("state") == "writing":
            rejects.resume_from(rejects_path(out))  # the interrupted run's list, as of its last shard
        result = _embed_locked(source, out, model, batch_size, workers, labelled, tta, append, shard_rows, ids,
                               device, inference, show_progress, rejects, executor, reuse_complete, all_faces,
                               precision)
        rejects.write(rejects_path(out))
    return result


def shipped_model_for(source: ImageSource, out: Path) -> tuple[Path, str]:
    """(the shipped model for a job that names none, why): the model of the store at ``out`` when it is
    a shipped one (resuming, appending), else the one that suits a sample of the images (face photos:
    the face model)."""
    if is_dataset_store(out):
        fingerprint = DatasetStore.open(out).manifest.get("job", {}).get("model_fingerprint")
        found = shipped_model_with(fingerprint)
        if found is not None:
            return found, f"the shipped model {out} was embedded with ({found.stem})"
    paths = source.table["path"].to_numpy()[sample_rows(len(source.table))]
    images, _ = read_batch(source, list(paths), Rejects(), color=True)
    path, reason = choose_shipped_model(images)
    log.info("model: %s", reason)
    return path, reason


def with_every_face(model: Embedder) -> Embedder:
    """A shallow copy of a face model whose recipe embeds every face of a photo (same weights and fingerprint)."""
    if model.recipe.kind != "face":
        raise InvalidInputError(f"--all-faces is for face models; this model's recipe is {model.recipe.kind!r}")
    copied = copy.copy(model)
    copied.recipe = Recipe.from_dict({**model.recipe.to_dict(), "faces": "all"})
    return copied


def _embed_locked(source, out: Path, model, batch_size, workers, labelled, tta, append, shard_rows, ids, device,
                  inference, show_progress, rejects: Rejects, executor=None, reuse_complete: bool = False,
                  all_faces: bool = False, precision: str = "float32") -> EmbedResult:
    if not isinstance(source, ImageSource) and is_dataset_store(source):
        source, labelled = _images_of_store(Path(source), labelled)
    gallery = open_source(source, labelled=labelled, strict=rejects.policy.fail)
    choice = ""
    if model is None:
        model, choice = shipped_model_for(gallery, out)
    model = as_model(model)
    if all_faces:
        model = with_every_face(model)
    rejects.extend(listing_rejects(gallery))
    table = _source_table(gallery, ids)
    if isinstance(gallery, Gallery) and not isinstance(source, Gallery):
        gallery.table = table  # our own source object: keep one compact copy of a large table
    job = _job(gallery, model, labelled, tta, ids, shard_rows, len(table), precision)
    known, created_folder = None, False
    if out.is_file():
        raise InvalidInputError(f"{out}: is a single-file store; embed writes store folders: choose another --out "
                                "(`oneshot store migrate` rewrites the old file as a folder)")
    if is_dataset_store(out):
        store = DatasetStore.open(out)
        store.remove_strays()
        if "job" not in store.manifest:
            raise InvalidInputError(f"{out}: was not made by `oneshot embed` (migrated from a single file?); it cannot "
                                    "be resumed or appended to: embed its images into a new store")
        if append:
            stored = store.manifest.get("job", {})
            if stored.get("model_fingerprint") != job["model_fingerprint"]:
                _refuse_existing(out, store, job)
            for key in ("recipe", "tta", "ids"):
                if stored.get(key) != job[key]:
                    raise InvalidInputError(f"{out}: cannot append with another {key} ({stored.get(key)!r} in the store)")
            kept = stored.get("precision", "float32")
            if kept != precision:
                raise InvalidInputError(f"{out}: cannot append with another precision ({kept!r} in the store; "
                                        f"--precision {'bf16' if kept == 'bfloat16' else kept})")
            if store.manifest.get("state") == "writing":
                raise InvalidInputError(f"{out}: an interrupted embed; finish it first by running its command "
                                        "again without --append")
            if store.manifest.get("state") != "appending":
                store.set_state("appending", append_start=len(store.manifest["shards"]))
            existing = store.read_columns(["id", HASH_COLUMN]).drop_duplicates("id", keep="last")
            known = pd.Series(existing[HASH_COLUMN].to_numpy(), index=existing["id"].to_numpy())
            action, first_shard = "appended", 0
        elif reuse_complete and store.manifest.get("state") == "complete" and store.manifest.get("job") == job:
            log.info("%s: already complete for this command; read as it is", out)
            return EmbedResult(store, 0, len(store), "kept", "none", choice)
        elif store.manifest.get("state") == "writing" and store.manifest.get("job") == job:
            action, first_shard = "resumed", len(store.manifest["shards"])
            log.info("%s: resuming after %d committed shards", out, first_shard)
        else:
            _refuse_existing(out, store, job)
    else:
        if append:
            raise InvalidInputError(f"{out}: no store to append to")
        if out.exists() and any(out.iterdir()):
            raise InvalidInputError(f"{out}: exists and is not an empty folder or a store; choose another --out")
        created_folder = not out.exists()
        store = DatasetStore.create(out, {
            "dimension": model.dim, "metric": model.metric, "model_fingerprint": job["model_fingerprint"],
            "recipe": job["recipe"], "tta": tta, "source": describe_source(gallery), "source_path": job["source"],
            "id_mode": ids, "shard_rows": shard_rows, "job": job, "normalized": True,
        })
        action, first_shard = "created", 0

    release_unused_memory()  # what listing the source freed: the peak then does not grow with the gallery
    device = device or default_device()
    engine = InferenceModel(model.to(device), mode=inference, device=device, precision=precision)
    batch_size = batch_size or engine.batch_size
    workers = workers or default_workers()
    before = len(store)
    try:
        encoded = _run(store, gallery, table, engine, batch_size, workers, tta, shard_rows, first_shard, known,
                       show_progress, rejects, stream=encode_stream if executor is None else executor.encode_stream)
    except BaseException:
        if action == "created" and not store.manifest["shards"]:
            _discard(store.folder, created_folder)  # nothing committed: leave nothing behind
        raise
    if append:
        replaced = _drop_superseded(store)
        store.manifest.setdefault("history", []).append({"action": "append", "rows": encoded, "replaced": replaced,
                                                         "source": job["source"]})
    store.set_state("complete")
    log.info("%s: %s, %d rows encoded, %d in the store", out, action, encoded, len(store))
    return EmbedResult(store, encoded, before if action != "created" else 0, action, engine.mode, choice)


def _discard(folder: Path, remove_folder: bool) -> None:
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    if remove_folder:
        try:
            folder.rmdir()
        except OSError:  # something else appeared in it; leave it
            pass


def _run(store: DatasetStore, gallery: ImageSource, table: pd.DataFrame, engine: InferenceModel, batch_size: int,
         workers: int, tta: bool, shard_rows: int, first_shard: int, known: pd.Series | None,
         show_progress: bool | None, rejects: Rejects | None = None, stream=encode_stream) -> int:
    """Stream the planned batches and commit a shard every ``shard_rows`` source rows (or encoded rows,
    when appending). Returns the rows encoded. ``stream``: :func:`encode_stream` or an executor's."""
    appending = known is not None
    plan = batch_plan(len(table), batch_size, max(1, len(table)) if appending else shard_rows, first_shard)
    shard, buffered, read_in_shard, encoded = None, 0, 0, 0
    shard_number = first_shard

    def open_shard():
        """The shard being written, opened on first use (appends take the next free number)."""
        nonlocal shard
        if shard is None:
            shard = store.shard_writer(None if appending else shard_number)
        return shard

    def commit():
        """Commit the shard being written (an empty one keeps the numbering when not appending)."""
        nonlocal shard, buffered, read_in_shard, shard_number
        if buffered or not appending:
            writer = open_shard()
            if not writer.rows:
                writer.write(table.iloc[:0].assign(**{HASH_COLUMN: []}), np.zeros((0, engine.dim), np.float32))
            writer.commit()
            if rejects is not None and len(rejects):  # a killed run's list survives with its shards
                rejects.write(rejects_path(store.folder))
        shard, buffered, read_in_shard = None, 0, 0
        shard_number += 1

    try:
        for batch, vectors in stream(engine, gallery, table, plan, workers, tta, known, show_progress, rejects=rejects):
            if len(batch.rows):  # written as it comes: memory holds one row group, not a shard
                open_shard().write(batch.rows, vectors)
                buffered += len(batch.rows)
                encoded += len(batch.rows)
            read_in_shard += batch.read
            if (appending and buffered >= shard_rows) or (not appending and read_in_shard >= shard_rows):
                commit()
        if buffered or (read_in_shard and not appending):
            commit()
    finally:
        if shard is not None:
            shard.discard()
    return encoded


def _drop_superseded(store: DatasetStore) -> int:
    """After an append: delete older rows whose id the append re-encoded (changed images)."""
    start = int(store.manifest.get("append_start", 0))
    names = {s["name"] for s in store.manifest["shards"][start:]}
    keys = store.read_columns(["id"])
    shard_names = [store.manifest["shards"][i]["name"] for i in keys["_shard"]]
    fresh = set(keys.loc[[n in names for n in shard_names], "id"].tolist())
    if not fresh:
        return 0
    old_names = {s["name"] for s in store.manifest["shards"][:start]}
    return store.remove_rows(lambda rows: rows["id"].isin(fresh).to_numpy(), only=old_names, record=False)


def embed_gallery(source: str | os.PathLike | ImageSource, out: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, batch_size: int | None = None,
                  labelled: bool = True, show_progress: bool | None = None, tta: bool = False,
                  rejects: Rejects | None = None, ids: str = "source", precision: str = "float32") -> EmbeddingSet:
    """:func:`embed_to_store` of a source, read back whole (for galleries that fit in memory).

    The same streaming job, resumable after a kill; calling it again with the same arguments reads
    the finished store instead of encoding again. Files that cannot be read are left out and listed
    in ``<out>.rejects.csv``; with a ``fail`` policy the first one stops the job.

    Args:
        ids: ``"source"`` (the source table's own ids, the default here) or ``"path"``.
        precision: ``"float32"`` or ``"bfloat16"`` (see :func:`embed_to_store`).
    Raises:
        InvalidInputError: when no image at all could be encoded.
    """
    rejects = rejects if rejects is not None else Rejects()
    embed_to_store(source, out, model, batch_size=batch_size, labelled=labelled, tta=tta, ids=ids,
                   show_progress=show_progress, rejects=rejects, reuse_complete=True, precision=precision)
    return read_embeddings(out)


def encode_gallery(model: Embedder, gallery: ImageSource, batch_size: int | None = None,
                   show_progress: bool | None = None, tta: bool = False) -> np.ndarray:
    """Every image of a source -> float32 (N, D) in table order, in memory; stops at the first file it
    cannot use (:func:`~oneshot.pipelines.engines.local.encode_source` under a ``fail`` policy), so
    every row has its vector."""
    _, vectors = encode_source(model, gallery, Rejects(RejectPolicy(on_error="fail")), batch_size, tta=tta,
                               show_progress=show_progress)
    return vectors
