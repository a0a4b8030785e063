"""The local engine: batches read, decoded and encoded in this process, and queries answered here.

Worker threads read, decode, hash and preprocess batches ahead of the forward pass (OpenCV and
numpy release the GIL); the calling thread runs the optimised model
(:class:`oneshot.embedder.inference.InferenceModel`). :func:`encode_stream` and
:func:`answer_stream` are the two streams the embed and identify jobs ask an engine for;
:class:`oneshot.pipelines.engines.ray.RayEngine` offers the same two on a Ray cluster.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from oneshot.data.archive import escape_name
from oneshot.data.content_hash import content_hash
from oneshot.data.source import ImageSource, listing_rejects
from oneshot.embedder.encode import progress_bar
from oneshot.embedder.inference import InferenceModel
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError
from oneshot.index.dataset_store import HASH_COLUMN, path_ids
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluation.knn import knn_classify
from oneshot.pipelines.evaluation.open_set import decide
from oneshot.pipelines.reading import RejectPolicy, Rejects, finite_rows, read_batch


def default_workers() -> int:
    """Reader threads: the CPU cores, at most 4 (decoding is ~8x faster than the forward pass)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# ----------------------------------------------------------------------------- reading


@dataclass
class ReadBatch:
    """One batch as read from a source.

    Attributes:
        rows: the rows whose images decoded (``id``, ``path``, ``label``, ``group``, ...).
        images: their uint8 arrays, in ``rows`` order.
        rejected: rows that could not be read (``id``, ``path``, ``reason``); with a ``fail``
            policy the first one raises instead.
    """

    rows: pd.DataFrame
    images: list[np.ndarray]
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["id", "path", "reason"]))


def read_rows(source: ImageSource, rows: pd.DataFrame, policy: RejectPolicy | None = None,
               color: bool = False) -> ReadBatch:
    """Decode the images of ``rows`` (a slice of ``source.table``): the one place the job reads pixels.

    Files that cannot be used are left out and returned in ``rejected`` under ``policy`` (default:
    skip them; ``fail`` raises at the first). Safe to call from several threads: each call has its
    own collector, merged by the caller.
    """
    collector = Rejects(policy)
    images, kept = read_batch(source, rows["path"].tolist(), collector, color=color)
    if len(kept) == len(rows):
        return ReadBatch(rows=rows, images=images)
    good = rows["path"].isin(kept).to_numpy()
    reasons = dict(collector.items)
    bad = rows[~good]
    rejected = pd.DataFrame({"id": bad["id"].to_numpy(), "path": bad["path"].astype(str).to_numpy(),
                             "reason": [reasons.get(escape_name(str(p)), "cannot be read") for p in bad["path"]]})
    return ReadBatch(rows=rows[good], images=images, rejected=rejected)


@dataclass
class PreparedBatch:
    """A batch ready for the forward pass: rows (with ``content_hash``) and float32 (n, C, H, W).

    ``rejected``: rows that could not be read or that the recipe could not use (no face found);
    ``notes``: ``(path, note)`` for rows used with a remark (which of several faces).
    """

    rows: pd.DataFrame
    pixels: np.ndarray
    rejected: pd.DataFrame
    read: int
    notes: list = field(default_factory=list)


def prepare_batch(source: ImageSource, rows: pd.DataFrame, recipe: Recipe,
                  known: pd.Series | None = None, policy: RejectPolicy | None = None) -> PreparedBatch:
    """Read, hash and preprocess one batch; with ``known`` (content hash by id), drop unchanged rows."""
    batch = read_rows(source, rows, policy, color=recipe.channels == 3)
    out = batch.rows.reset_index(drop=True).copy()
    out[HASH_COLUMN] = [content_hash(image) for image in batch.images]
    images = batch.images
    if known is not None and len(out):
        previous = known.reindex(out["id"].to_numpy()).to_numpy()
        fresh = previous != out[HASH_COLUMN].to_numpy()
        out = out[fresh].reset_index(drop=True)
        images = [image for image, keep in zip(images, fresh) if keep]
    prepared = recipe.prepare(images)
    paths = out["path"].astype(str).tolist()
    notes = [(paths[i], note) for i, note in sorted(prepared.notes.items())]
    rejected = batch.rejected
    if prepared.reasons:
        unused = sorted(prepared.reasons)
        if policy is not None and policy.fail:
            first = unused[0]
            raise InvalidInputError(f"{escape_name(paths[first])}: {prepared.reasons[first]} (stopped: --on-error fail)")
        found = pd.DataFrame({"id": out["id"].to_numpy()[unused], "path": [paths[i] for i in unused],
                              "reason": [prepared.reasons[i] for i in unused]})
        rejected = found if rejected.empty else pd.concat([rejected, found], ignore_index=True)
    if len(prepared.kept) != len(out) or prepared.face is not None:
        out = out.iloc[prepared.kept].reset_index(drop=True)
    if prepared.face is not None:  # every face its own row: ids from the path and the face number
        out["face"] = prepared.face
        out["id"] = path_ids(pd.Series([f"{path}#face{number}" for path, number in zip(out["path"], prepared.face)]))
    return PreparedBatch(out, prepared.pixels, rejected, len(rows), notes)


def stream_batches(source: ImageSource, table: pd.DataFrame, plan: list[tuple[int, int]], recipe: Recipe,
                   workers: int, known: pd.Series | None = None,
                   policy: RejectPolicy | None = None) -> Iterator[PreparedBatch]:
    """Prepare the row ranges of ``plan`` (slices of ``table``) in ``workers`` threads, in order.

    At most ``2 * workers`` batches are in flight, so memory stays bounded.
    """
    if workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oneshot-read") as pool:
        pending: deque = deque()
        ranges = iter(plan)

        def submit() -> None:
            for start, stop in ranges:
                pending.append(pool.submit(prepare_batch, source, table.iloc[start:stop], recipe, known, policy))
                return

        for _ in range(2 * workers):
            submit()
        while pending:
            result = pending.popleft().result()
            submit()
            yield result


@contextmanager
def forward_threads(engine: InferenceModel, workers: int):
    """Leave the reader threads their cores when preparing an image costs about as much as encoding it.

    The face recipe (detection, landmarks, alignment: ~3 ms a photo) and the face ResNet's forward
    pass (~2 ms a photo on 2 cores) compete for the same cores; on the 2-core machine the forward
    pass on 1 thread beside the readers made the embed job 1.3x faster (190 vs 150 photos/s). Other
    recipes decode in well under a tenth of their forward pass and keep torch's own thread count.
    """
    before = torch.get_num_threads()
    if engine.recipe.kind == "face" and engine.device.type == "cpu":
        torch.set_num_threads(max(1, before - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_stream(engine: InferenceModel, source: ImageSource, table: pd.DataFrame, plan: list[tuple[int, int]],
                  workers: int, tta: bool = False, known: pd.Series | None = None,
                  show_progress: bool | None = None, desc: str = "embed",
                  rejects: Rejects | None = None) -> Iterator[tuple[PreparedBatch, np.ndarray]]:
    """(batch, float32 (n, D) vectors) per planned row range, with a progress bar (img/s, time left).

    Unreadable files, and images whose vector is not finite, are dropped from the batch and
    recorded in ``rejects`` (default: skipped silently).
    """
    rejects = rejects if rejects is not None else Rejects()
    total = int(sum(stop - start for start, stop in plan))
    with progress_bar(show_progress, total, desc) as bar, forward_threads(engine, workers):
        for batch in stream_batches(source, table, plan, engine.recipe, workers, known, rejects.policy):
            rejects.extend(list(zip(batch.rejected["path"], batch.rejected["reason"])))
            for path, note in batch.notes:
                rejects.note(path, note)
            rejects.kept += len(batch.rows)
            if len(batch.rows):
                vectors = engine(batch.pixels, tta=tta)
                finite = finite_rows(vectors, batch.rows["path"].astype(str).tolist(), rejects)
                if not finite.all():
                    batch.rows, vectors = batch.rows[finite].reset_index(drop=True), vectors[finite]
                    batch.pixels = batch.pixels[finite]
            else:
                vectors = np.zeros((0, engine.dim), dtype=np.float32)
            bar.update(batch.read)
            yield batch, vectors


def batch_plan(rows: int, batch_size: int, shard_rows: int, first_shard: int = 0) -> list[tuple[int, int]]:
    """Row ranges in batches that never cross a shard boundary (so a resumed run batches alike)."""
    plan = []
    for shard_start in range(first_shard * shard_rows, rows, shard_rows):
        shard_stop = min(shard_start + shard_rows, rows)
        plan.extend((start, min(start + batch_size, shard_stop)) for start in range(shard_start, shard_stop, batch_size))
    return plan


def encode_source(model: Embedder, source: ImageSource, rejects: Rejects | None = None, batch_size: int | None = None,
                  workers: int | None = None, tta: bool = False,
                  show_progress: bool | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Every readable image of a source through :func:`encode_stream`, collected in memory (for
    jobs that need all the vectors at once, such as ``assign``; bulk jobs write them as they come).

    Returns:
        (the source's table without the rejected rows, float32 (N, D) in that table's order).
    """
    rejects = rejects if rejects is not None else Rejects()
    rejects.extend(listing_rejects(source))
    engine = InferenceModel(model)
    table = source.table.reset_index(drop=True)
    plan = batch_plan(len(table), batch_size or engine.batch_size, max(1, len(table)))
    rows, chunks = [], []
    for batch, vectors in encode_stream(engine, source, table, plan, workers or default_workers(), tta=tta,
                                        show_progress=show_progress, desc="encode", rejects=rejects):
        rows.append(batch.rows.drop(columns=[HASH_COLUMN]))
        chunks.append(vectors)
    if not rows:
        return table.iloc[:0], np.zeros((0, model.dim), dtype=np.float32)
    return pd.concat(rows, ignore_index=True), np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


# ----------------------------------------------------------------------------- answering


@dataclass
class QueryBatch:
    rows: pd.DataFrame  # id, path, label (maybe "")
    vectors: np.ndarray  # float32 (n, D)
    pixels: np.ndarray | None = None  # float32 (n, C, H, W) as prepared, kept for a re-ranker


def top_candidates(scores: np.ndarray, ids: np.ndarray, labels: np.ndarray, top: int,
                   per_identity: int) -> list[list[dict[str, Any]]]:
    """Group each query's neighbours by label: up to ``top`` distinct identities, best first.

    Args:
        scores, ids, labels: (Q, K) search results, best first (id -1 = none).
    Returns:
        Per query, a list of ``{label, score, gallery_ids, gallery_scores}``.
    """
    out = []
    for row_scores, row_ids, row_labels in zip(scores, ids, labels):
        found: dict[str, dict[str, Any]] = {}
        for score, gid, label in zip(row_scores, row_ids, row_labels):
            if gid == -1:
                break
            entry = found.get(label)
            if entry is None:
                if len(found) == top:
                    continue
                entry = found[label] = {"label": str(label), "score": float(score), "gallery_ids": [],
                                        "gallery_scores": []}
            if len(entry["gallery_ids"]) < per_identity:
                entry["gallery_ids"].append(int(gid))
                entry["gallery_scores"].append(float(score))
        out.append(list(found.values()))
    return out


def answer_batch(index: VectorIndex, batch: QueryBatch, threshold: float | None, k: int, top: int,
                 per_identity: int, reranker=None, rerank_threshold: float | None = None) -> pd.DataFrame:
    """One batch of queries -> one answer row each (see the module docstring).

    With a :class:`~oneshot.pipelines.engines.rerank.Reranker` (``k`` = 1, ``batch.pixels`` given), the
    queries it re-scores are decided on its scores and ``rerank_threshold``, and the answer has a
    ``reranked`` column.
    """
    depth = max(k, top * per_identity) if reranker is None else reranker.search_depth(top, per_identity)
    result = index.search(batch.vectors, max(1, min(len(index), depth)))
    reranked = None
    if reranker is not None:
        result, reranked = reranker.rescore(result, batch.pixels)
    candidates = top_candidates(result.scores, result.ids, result.labels, top, per_identity)
    if k == 1:
        candidate = np.array([c[0]["label"] if c else None for c in candidates], dtype=object)
        score = np.array([c[0]["score"] if c else np.nan for c in candidates], dtype=np.float32)
    else:
        candidate, score = knn_classify(index, batch.vectors, k=k)
    rows = batch.rows
    answer = decide(candidate, score, threshold)
    if reranked is not None:
        second = decide(candidate, score, rerank_threshold)
        for column in ("label", "known"):
            answer[column] = np.where(reranked, second[column].to_numpy(), answer[column].to_numpy())
        answer["known"] = answer["known"].astype(bool)
        answer["reranked"] = reranked
    answer.insert(0, "path", rows["path"].astype(str).to_numpy())
    answer.insert(0, "query_id", rows["id"].to_numpy(dtype=np.int64))
    if "label" in rows and (rows["label"].astype(str) != "").all():
        answer["true_label"] = rows["label"].astype(str).to_numpy()
    answer["candidates"] = candidates
    return answer


def answer_stream(batches: Iterator[QueryBatch], index: VectorIndex, index_path: str | None,
                  threshold: float | None, k: int, top: int, per_identity: int, reranker=None,
                  rerank_threshold: float | None = None) -> Iterator[pd.DataFrame]:
    """:func:`answer_batch` of each batch in this process, in order (``index_path`` is unused here)."""
    for batch in batches:
        yield answer_batch(index, batch, threshold, k, top, per_identity, reranker, rerank_threshold)
