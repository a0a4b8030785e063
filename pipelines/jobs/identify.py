"""Batch identification jobs: stream queries, write the top candidates and the known/unknown decision.

Queries are images (a folder, zip, list file, MNIST IDX file: encoded on the fly by an engine's
``encode_stream``, :mod:`oneshot.pipelines.engines.local` by default) or an existing embedding store
(file or folder: its vectors are used as they are). Each batch is answered by the engine's
``answer_stream`` (:func:`~oneshot.pipelines.engines.local.answer_batch`); the answer per query is
one row:

``query_id``, ``path``, ``label`` (the decision: best identity, or ``"unknown"`` below the
threshold), ``score``, ``known``, ``candidate`` (best identity even when rejected), ``true_label``
(when the queries carry labels) and ``candidates``: up to ``top`` distinct identities, best first,
each ``{label, score, gallery_ids, gallery_scores}`` (its best-matching gallery rows among the
neighbours retrieved).

Output: a folder of Parquet shards plus ``_identify.json`` (resumable: the same command continues
after the last committed shard), a ``.jsonl`` file (written whole, atomically), or a callback.
Memory holds one shard of answers and one batch of queries. :func:`identify_images` is the same
job with its answers collected into one DataFrame.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oneshot.atomic import atomic_path
from oneshot.data.source import listing_rejects
from oneshot.embedder.artifact import as_model, shipped_model_with
from oneshot.embedder.encode import default_device, progress_bar
from oneshot.embedder.inference import InferenceModel
from oneshot.embedder.precision import check_precision
from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.dataset_store import DatasetStore, is_dataset_store, path_ids
from oneshot.index.store import EMBEDDING_COLUMN, read_store_metadata
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.engines.local import QueryBatch, answer_stream, batch_plan, default_workers, encode_stream
from oneshot.pipelines.evaluation.thresholds import resolve_threshold
from oneshot.pipelines.reading import Rejects, open_queries, rejects_path

log = logging.getLogger(__name__)

MANIFEST_NAME = "_identify.json"
DEFAULT_SHARD_ROWS = 65536


# ------------------------------------------------------------------------- query streams


def is_query_store(path: Path) -> bool:
    """Whether identify's queries at ``path`` are an embedding store (else images to encode)."""
    if is_dataset_store(path):
        return True
    if path.is_file() and path.suffix == ".parquet":
        read_store_metadata(path)  # raises a clear error when it is not a store
        return True
    return False


def _store_batches(path: Path, batch_size: int, skip: int) -> Iterator[QueryBatch]:
    """Vectors of a store (folder or single file), in row order, from row ``skip``."""
    seen = 0
    if path.is_dir():
        store = DatasetStore.open(path)
        for table, vectors in store.iter_shards():
            if seen + len(table) <= skip:
                seen += len(table)
                continue
            start = max(0, skip - seen)
            seen += len(table)
            for lo in range(start, len(table), batch_size):
                yield QueryBatch(table.iloc[lo : lo + batch_size].reset_index(drop=True), vectors[lo : lo + batch_size])
        return
    handle = pq.ParquetFile(path)
    dimension = read_store_metadata(path)["dimension"]
    for record in handle.iter_batches(batch_size=batch_size):
        arrow = pa.Table.from_batches([record])
        if seen + arrow.num_rows <= skip:
            seen += arrow.num_rows
            continue
        start = max(0, skip - seen)
        seen += arrow.num_rows
        arrow = arrow.slice(start)
        flat = arrow.column(EMBEDDING_COLUMN).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(arrow.num_rows, dimension)
        yield QueryBatch(arrow.drop_columns([EMBEDDING_COLUMN]).to_pandas(), vectors)


# ----------------------------------------------------------------------------- answering


# --------------------------------------------------------------------------------- output


class _ShardOutput:
    """A folder of answer shards plus ``_identify.json``; resumable by job description."""

    def __init__(self, folder: Path, job: dict[str, Any]):
        self.folder = folder
        manifest_path = folder / MANIFEST_NAME
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("job") != job:
                differences = sorted(k for k in set(job) | set(manifest.get("job", {}))
                                     if job.get(k) != manifest.get("job", {}).get(k))
                raise InvalidInputError(f"{folder}: holds answers of another identify command (differs in "
                                        f"{', '.join(differences)}); choose another --out")
            if manifest.get("state") == "complete":
                raise InvalidInputError(f"{folder}: already complete for this command ({manifest['rows']} answers); "
                                        "choose another --out")
            self.manifest = manifest
            listed = {s["name"] for s in manifest["shards"]}
            for stray in folder.glob("part-*.parquet"):
                if stray.name not in listed:
                    stray.unlink()
        else:
            if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
                raise InvalidInputError(f"{folder}: exists and is not an identify output; choose another --out")
            folder.mkdir(parents=True, exist_ok=True)
            self.manifest = {"format": "oneshot-identify", "job": job, "state": "writing", "shards": [], "rows": 0}
            self._save()

    @property
    def done(self) -> int:
        return int(self.manifest["rows"])

    def _save(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with atomic_path(self.folder / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")

    def write(self, answers: pd.DataFrame) -> None:
        name = f"part-{len(self.manifest['shards']):06d}.parquet"
        with atomic_path(self.folder / name) as tmp:
            pq.write_table(pa.Table.from_pandas(answers, preserve_index=False), tmp)
        self.manifest["shards"].append({"name": name, "rows": len(answers)})
        self.manifest["rows"] += len(answers)
        self._save()

    def close(self, summary: dict[str, Any]) -> None:
        self.manifest.update(state="complete", summary=summary)
        self._save()


def _jsonl(answers: pd.DataFrame) -> str:
    return answers.to_json(orient="records", lines=True)


# ------------------------------------------------------------------------------------ job


@dataclass
class IdentifySummary:
    queries: int
    known: int
    correct: int | None  # answers equal to true_label (when the queries carry labels)
    labelled: int
    resumed_from: int
    seconds: float
    threshold_text: str = ""
    threshold: float | None = None
    rerank: Any = None  # RerankStats when a re-ranker ran


    @property
    def accuracy(self) -> float | None:
        return None if not self.labelled else self.correct / self.labelled

    def to_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "known": self.known, "correct": self.correct, "labelled": self.labelled,
                "accuracy": self.accuracy, "resumed_from": self.resumed_from, "seconds": round(self.seconds, 3),
                **({"rerank": self.rerank.to_dict()} if self.rerank is not None else {})}


def identify_job(queries: str | os.PathLike, index: VectorIndex | str | os.PathLike,
                 out: str | os.PathLike | None = None, model=None, threshold: float | None = None, k: int = 1,
                 top: int = 1, per_identity: int = 3, batch_size: int | None = None, workers: int | None = None,
                 shard_rows: int = DEFAULT_SHARD_ROWS, device: str | None = None,
                 emit: Callable[[pd.DataFrame], None] | None = None,
                 show_progress: bool | None = None, rejects: Rejects | None = None,
                 executor=None, rerank=None, precision: str = "float32") -> IdentifySummary:
    """Identify every query against an index, streaming, and write the answers.

    Args:
        queries: images (folder, zip, list, IDX file) or an embedding store (file or folder).
        index: a :class:`VectorIndex` or its file.
        out: a folder for Parquet shards (resumable), a ``.jsonl`` file, or None (``emit`` only).
        model: for image queries: the model that built the index (default: shipped).
        threshold: below this score the decision is ``"unknown"``: a number, ``"model"`` (the
            "unknown" threshold the model carries, calibrated on its validation split) or
            ``None``/``"none"`` (accept everything).
        k: 1 for the nearest neighbour, more for a k-NN vote on the decision.
        top: distinct identities listed per query; per_identity: gallery rows kept per identity.
        emit: called with each batch's answers (e.g. to print them).
        rejects: query files that cannot be read get no answer and are recorded here (default:
            skipped); written to ``<out>.rejects.csv`` when ``out`` is given.
        executor: None to encode and search in this process, or an object with ``encode_stream``
            (as :func:`~oneshot.pipelines.engines.local.encode_stream`) and ``answer_stream`` (as
            :func:`answer_stream`), e.g. :class:`oneshot.pipelines.engines.ray.RayEngine`; answers
            are written here either way.
        rerank: a :class:`~oneshot.pipelines.engines.rerank.Reranker`: a second model re-scores the index's
            best rows of the queries the index hesitates on (image queries, ``k`` = 1, this
            process). Its queries are decided on its own "unknown" threshold (``threshold="model"``)
            or on ``threshold`` when a number is given; answers get a ``reranked`` column.
        precision: image queries encoded in ``"float32"`` or ``"bfloat16"`` (see
            :class:`~oneshot.embedder.inference.InferenceModel`).

    Raises:
        ModelMismatchError: the queries (store or model) and the index come from different models.
    """
    started = time.perf_counter()
    precision = check_precision(precision)
    if k < 1 or top < 1 or per_identity < 1:
        raise InvalidInputError(f"k, top and per_identity must be >= 1, got {k}, {top}, {per_identity}")
    index_path = None if isinstance(index, VectorIndex) else str(Path(index).resolve())
    index = index if isinstance(index, VectorIndex) else VectorIndex.load(index)
    expected = index.metadata.get("model_fingerprint")
    queries_path = Path(queries)
    from_store = is_query_store(queries_path)
    if from_store:
        actual = read_store_metadata(queries_path).get("model_fingerprint")
        what = f"the query store {queries_path} uses"
    else:
        model = as_model(model if model is not None else shipped_model_with(expected))
        actual = getattr(model, "fingerprint", None)
        what = "the queries use"
    if expected and actual and expected != actual:
        raise ModelMismatchError(f"the index was built with model {expected} but {what} model {actual}; "
                                 "pass the same --model used for `oneshot embed`")
    given_threshold = threshold
    threshold, threshold_text = _threshold(model, expected, threshold, enrolled_count(index))
    rerank_threshold = None
    if rerank is not None:
        if from_store or k != 1 or executor is not None:
            raise InvalidInputError("re-ranking needs image queries (not an embedding store), k = 1 and the local "
                                    "engine (re-scoring reads the queries' pixels)")
        rerank.bind(model, index)
        if rerank.matched and isinstance(given_threshold, str) and given_threshold.lower() == "model":
            # its "unknown" threshold was calibrated on its cosine; the trained score has its own, when calibrated
            rerank_threshold, rerank_text = resolve_threshold(rerank.embedder, "unknown_reranked", "model",
                                                              owner=f"the re-ranking model {rerank.name}",
                                                              enrolled=enrolled_count(index))
            if rerank_threshold is None:
                rerank_text = ("no threshold: the model's own was calibrated on its cosine, not on its map-matched "
                               f"score (give --threshold X, or `oneshot calibrate {rerank.name} --data HELD_OUT`)")
        else:
            rerank_threshold, rerank_text = _threshold(rerank.embedder, rerank.fingerprint, given_threshold,
                                                       enrolled_count(index))
        threshold_text = (f"{threshold_text}; re-scored queries ({rerank.name}): {rerank_text}; re-scoring margin "
                          f"{'none (every query)' if rerank.margin is None else rerank.margin} ({rerank.margin_source})"
                          + ("" if rerank.precision == "float32" else f"; re-scored in {rerank.precision}"))
    if threshold is not None and index.metadata.get("pca") and threshold_text.startswith("carried by"):
        log.warning("the index reduces vectors with PCA; the model's threshold was calibrated without it")
    rejects = rejects if rejects is not None else Rejects()
    job = {"queries": str(queries_path.resolve()), "index": index_path, "model_fingerprint": actual,
           "threshold": threshold, "k": k, "top": top, "per_identity": per_identity, "shard_rows": shard_rows}
    if precision != "float32" and not from_store:  # float32 jobs keep the record they always had
        job["precision"] = precision
    if rerank is not None:
        job["rerank"] = {"model_fingerprint": rerank.fingerprint, "depth": rerank.depth, "margin": rerank.margin,
                         "threshold": rerank_threshold}
    out = Path(out) if out is not None else None
    sink = _ShardOutput(out, job) if out is not None and out.suffix != ".jsonl" else None
    skip = sink.done if sink else 0
    batches, total = _query_batches(queries_path, from_store, model, batch_size, workers, device, shard_rows, skip,
                                    show_progress, rejects, encode_stream if executor is None else executor.encode_stream,
                                    keep_pixels=rerank is not None, precision=precision)
    if executor is None:
        answer_iter = answer_stream(batches, index, index_path, threshold, k, top, per_identity, rerank,
                                    rerank_threshold)
    else:
        answer_iter = executor.answer_stream(batches, index, index_path, threshold, k, top, per_identity)
    jsonl = None
    summary = IdentifySummary(0, 0, 0, 0, skip, 0.0, threshold_text, threshold,
                              rerank.stats if rerank is not None else None)
    buffered: list[pd.DataFrame] = []
    pending = 0
    with (atomic_path(out) if out is not None and sink is None else _null()) as tmp:
        if tmp is not None:
            jsonl = open(tmp, "w")
        with progress_bar(show_progress if from_store else False, total, "identify") as bar:
            for answers in answer_iter:
                _tally(summary, answers)
                if emit is not None:
                    emit(answers)
                if jsonl is not None:
                    jsonl.write(_jsonl(answers))
                if sink is not None:
                    buffered.append(answers)
                    pending += len(answers)
                    if pending >= shard_rows:
                        sink.write(pd.concat(buffered, ignore_index=True))
                        buffered, pending = [], 0
                bar.update(len(answers))
        if jsonl is not None:
            jsonl.close()
    if sink is not None:
        if buffered:
            sink.write(pd.concat(buffered, ignore_index=True))
        summary.seconds = time.perf_counter() - started
        sink.close(summary.to_dict())
    summary.seconds = time.perf_counter() - started
    if out is not None:
        rejects.write(rejects_path(out))
    return summary


def enrolled_count(index: VectorIndex) -> int:
    """How many identities (distinct labels) an index holds: the database size the "unknown" threshold suits."""
    return int(pd.unique(np.asarray(index.labels, dtype=object)).size)


def _threshold(model, index_fingerprint: str | None, given, enrolled: int | None = None) -> tuple[float | None, str]:
    """The "unknown" threshold (see :func:`~oneshot.pipelines.evaluation.thresholds.resolve_threshold`) and its source.

    ``"model"`` reads the threshold of the model that made the index (``model``, else the shipped
    one); another model's threshold is never used: without the index's model, no threshold.
    """
    if not (isinstance(given, str) and given.lower() == "model"):
        return resolve_threshold(None, "unknown", given)
    model = as_model(model if model is not None else shipped_model_with(index_fingerprint))
    if index_fingerprint and getattr(model, "fingerprint", None) != index_fingerprint:
        return None, (f"no threshold: the index was built with model {index_fingerprint}, which is not at hand "
                      "(pass it with --model to use its threshold, or give --threshold X)")
    return resolve_threshold(model, "unknown", "model", enrolled=enrolled)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _tally(summary: IdentifySummary, answers: pd.DataFrame) -> None:
    summary.queries += len(answers)
    summary.known += int(answers["known"].sum())
    if "true_label" in answers:
        summary.labelled += len(answers)
        summary.correct += int((answers["label"] == answers["true_label"]).sum())


def _query_batches(path: Path, from_store: bool, model, batch_size, workers, device, shard_rows: int, skip: int,
                   show_progress, rejects: Rejects, stream=encode_stream,
                   keep_pixels: bool = False, precision: str = "float32") -> tuple[Iterator[QueryBatch], int]:
    if from_store:
        total = int(read_store_metadata(path).get("count") or 0) - skip
        return _store_batches(path, batch_size or 8192, skip), max(0, total)
    source = open_queries(path, strict=rejects.policy.fail)
    rejects.extend(listing_rejects(source))
    table = source.table.copy()
    table["id"] = path_ids(table["path"])  # the same stable ids a store of these images would have
    engine = InferenceModel(model.to(device or default_device()), precision=precision)
    plan = batch_plan(len(table), batch_size or engine.batch_size, shard_rows, first_shard=skip // shard_rows)

    def generate():
        for batch, vectors in stream(engine, source, table, plan, workers or default_workers(),
                                     show_progress=show_progress, desc="identify", rejects=rejects):
            yield QueryBatch(batch.rows, vectors, batch.pixels if keep_pixels else None)

    return generate(), len(table) - skip


def identify_images(queries: str | os.PathLike, index: VectorIndex | str | os.PathLike,
                    model=None, threshold: float | str | None = "model", k: int = 1, batch_size: int | None = None,
                    rejects: Rejects | None = None, top: int = 1, rerank=None,
                    precision: str = "float32") -> pd.DataFrame:
    """:func:`identify_job` with its answers collected into one DataFrame (for query sets that fit in memory).

    Query files that cannot be read get no row; they are recorded in ``rejects`` (default: skip
    them). With a ``fail`` policy the first stops the job.

    Args:
        threshold: a number, ``"model"`` (the model's own "unknown" threshold, calibrated on its
            validation split) or ``None`` (no "unknown" answers).
    Returns:
        One row per query: ``path``, ``label`` (``"unknown"`` below ``threshold``), ``score``,
        ``known``, ``candidate``, ``true_label`` when the queries' layout carries labels, then
        ``candidates`` (the top ones) and ``query_id``, as :func:`identify_job` writes them. ``result.attrs`` holds ``threshold``
        and ``threshold_source``.
    Raises:
        ModelMismatchError: when the index was built with another model than ``model``.
        InvalidInputError: when no query image could be read.
    """
    rejects = rejects if rejects is not None else Rejects()
    answers: list[pd.DataFrame] = []
    summary = identify_job(queries, index, model=model, threshold=threshold, k=k, top=top, batch_size=batch_size,
                           emit=answers.append, show_progress=False, rejects=rejects, rerank=rerank,
                           precision=precision)
    if not summary.queries:
        raise InvalidInputError(f"{queries}: no query image could be read ({len(rejects)} rejected)")
    result = pd.concat(answers, ignore_index=True)
    result = result[[c for c in result.columns if c != "query_id"] + ["query_id"]]  # path first, as before
    result.attrs.update(threshold=summary.threshold, threshold_source=summary.threshold_text)
    return result
