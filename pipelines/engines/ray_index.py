"""``oneshot index build --engine ray``: shards added in parallel Ray tasks, parts merged here.

The FAISS side (train once on a seeded sample, add each shard into a copy of the trained empty
index, merge the inverted lists) is :func:`oneshot.index.shard_build.build_from_shards`; this
module only runs its per-shard step in Ray tasks (:func:`ray_map_parts`) and saves the result as a
:class:`~oneshot.index.vector_index.VectorIndex`. Flat and HNSW indexes are built on one node.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss

from oneshot.embedder.encode import progress_bar
from oneshot.index.dataset_store import DatasetStore
from oneshot.index.metric import get_metric
from oneshot.index.shard_build import build_from_shards, unwrap
from oneshot.index.vector_index import VectorIndex

log = logging.getLogger(__name__)


def ray_map_parts(executor, show_progress: bool | None = None) -> Callable[[Callable[..., Any], list[tuple]], Iterator[Any]]:
    """A ``map_parts`` for :func:`build_from_shards` running each call in a Ray task, results in order.

    The first argument of every call (the serialised empty index) is put in the object store once.
    At most two tasks per CPU of the cluster are in flight, so parts never pile up in memory.
    """

    def run(function: Callable[..., Any], arguments: list[tuple]) -> Iterator[Any]:
        from oneshot.pipelines.engines.ray import TASK_RETRIES

        ray = executor.start()
        if not arguments:
            return
        cpus, _, _ = executor._resources()
        remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(function)
        shared = ray.put(arguments[0][0])
        window: deque = deque()
        with progress_bar(show_progress, len(arguments), "index shards") as bar:
            for args in arguments:
                window.append(remote.remote(shared, *args[1:]))
                if len(window) >= max(2, 2 * int(cpus)):
                    yield ray.get(window.popleft())
                    bar.update(1)
            while window:
                yield ray.get(window.popleft())
                bar.update(1)

    return run


def build_index_on_ray(executor, store: str | os.PathLike, out: str | os.PathLike, index: faiss.Index | str,
                       pca_dim: int | None = None, pca_variance: float | None = None, seed: int = 0,
                       show_progress: bool | None = None) -> VectorIndex:
    """Build and save an index over a store with the shards added on Ray.

    Args:
        executor: a :class:`~oneshot.pipelines.engines.ray.RayEngine`.
        index: a trained empty FAISS index or a factory string of an IVF kind (its parts are
            added in parallel and merged). Other kinds are built on one node by
            :func:`oneshot.pipelines.jobs.index.build_index`, which calls this for IVF kinds.
    """
    opened = DatasetStore.open(store)
    metric = get_metric(opened.manifest["metric"])
    built, rows = build_from_shards(index, opened, metric, seed=seed, map_parts=ray_map_parts(executor, show_progress))
    inner = unwrap(built)
    pca = None
    if isinstance(inner, faiss.IndexPreTransform):
        pca = {"dim": int(faiss.downcast_index(inner.index).d), "variance": None}
    metadata = {"model_fingerprint": opened.manifest.get("model_fingerprint"), "source": str(store)}
    result = VectorIndex(built, rows, metric, pca, metadata)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    return result

