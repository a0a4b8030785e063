"""The index jobs: build a FAISS index from a store, add a store's new rows to it, remove rows, load it."""
from __future__ import annotations

import os

import numpy as np

from oneshot.index.gallery_index import AddReport, add_from_store, build_from_store, nonfinite_rows
from oneshot.index.gallery_index import remove_from_index as remove_rows
from oneshot.index.kinds import parse_memory
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.reading import Rejects, rejects_path


def build_index(store: str | os.PathLike, out: str | os.PathLike, pca_dim: int | None = None,
                pca_variance: float | None = None, seed: int = 0, kind: str = "auto",
                max_memory: int | str | None = None, recall: float = 0.99,
                use_gpu: bool | None = None, rejects: Rejects | None = None, executor=None) -> VectorIndex:
    """Build a FAISS index from a store (file or folder) block by block and save it (index file
    plus metadata sidecar; both renamed into place, a writer lock refuses a second writer).

    Rows whose vector has NaN or infinite values are left out and listed in ``<out>.rejects.csv``
    (with a ``fail`` policy the first one stops the job before anything is written).

    Args:
        kind: ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq`` or a FAISS factory string.
        max_memory: byte budget for ``auto`` (an int or ``"600M"``, ``"4G"``).
        recall: recall@1 target the search parameter of approximate kinds is tuned to.
        use_gpu: train IVF k-means on a GPU (None: when FAISS sees one).
        executor: a :class:`~oneshot.pipelines.engines.ray.RayEngine` to add the shards of an IVF
            factory ``kind`` (e.g. ``"IVF4096,Flat"``) in parallel on Ray; other kinds, or None,
            build here.
    """
    if executor is not None and "IVF" in kind:
        return executor.build_index(store, out, pca_dim, pca_variance, seed=seed, index=kind)
    rejects = rejects if rejects is not None else Rejects()
    bad = nonfinite_rows(store)
    for path in bad["path"]:
        rejects.add(path, "its embedding has NaN or infinite values")
    bad_ids = bad["id"].to_numpy(dtype=np.int64)
    keep = (lambda ids: ~np.isin(ids, bad_ids)) if len(bad_ids) else None
    index = build_from_store(store, out, keep=keep, pca_dim=pca_dim, pca_variance=pca_variance, seed=seed, kind=kind,
                             max_memory=parse_memory(max_memory), recall=recall, use_gpu=use_gpu)
    rejects.write(rejects_path(out))
    return index


def add_to_index(index: str | os.PathLike, store: str | os.PathLike, recall: float | None = None,
                 recheck: bool = False) -> AddReport:
    """Add the store's rows not yet in the index (removed ids stay out); re-check recall when grown."""
    return add_from_store(index, store, recall=recall, recheck=recheck)


def remove_from_index(index: str | os.PathLike, ids: list[int] | None = None, labels: list[str] | None = None,
                      paths: list[str] | None = None) -> tuple[int, int]:
    """Remove rows by ids, labels or paths (recorded: ``add_to_index`` skips them) -> (removed, left)."""
    return remove_rows(index, ids=ids, labels=labels, paths=paths)


def load_index(path: str | os.PathLike) -> VectorIndex:
    """A saved index (FAISS file plus its ``.meta.parquet`` sidecar), checked on load."""
    return VectorIndex.load(path)
