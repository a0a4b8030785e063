"""High-level jobs behind the CLI, importable as a Python API.

``embed_gallery`` (images -> Parquet), ``build_index`` (Parquet -> FAISS index; ``add_to_index`` and
``remove_from_index`` change it), ``identify_images``
(query images -> nearest labels or "unknown"), ``verify_images`` (1:1), ``evaluate_store`` and ``cluster_store``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from oneshot.data.archive import read_image_file
from oneshot.data.source import ImageSource, describe_source, open_source
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode, progress_bar
from oneshot.embedder.model import Embedder
from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.gallery_index import AddReport, add_from_store, build_from_store
from oneshot.index.gallery_index import remove_from_index as remove_rows
from oneshot.index.kinds import parse_memory
from oneshot.index.metric import get_metric
from oneshot.index.store import EmbeddingSet, read_embeddings, write_embeddings
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluate import clustering, evaluate
from oneshot.pipelines.identify import identify

log = logging.getLogger(__name__)


def _model(model: Embedder | str | os.PathLike | None) -> Embedder:
    return model if isinstance(model, Embedder) else load_model(model)


def encode_gallery(model: Embedder, gallery: ImageSource, batch_size: int = 256,
                   show_progress: bool | None = None, tta: bool = False) -> np.ndarray:
    """Read, preprocess and encode an image source chunk by chunk -> float32 (N, D), table order."""
    paths = list(gallery.table["path"])
    chunks = []
    with progress_bar(show_progress, len(paths), "encode") as bar:
        for start in range(0, len(paths), batch_size):
            images = gallery.read(paths[start : start + batch_size])
            chunks.append(encode(model, images, batch_size=batch_size, show_progress=False, tta=tta))
            bar.update(len(images))
    if not chunks:
        return np.zeros((0, model.dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def embed_gallery(source: str | os.PathLike | ImageSource, out: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, batch_size: int = 256,
                  labelled: bool = True, show_progress: bool | None = None, tta: bool = False) -> EmbeddingSet:
    """Encode every image of a source into a Parquet embedding store.

    Args:
        source: a folder, zip, list file, MNIST IDX file or Omniglot folder (see
            :func:`oneshot.data.source.open_source`), or an opened image source.
        out: the ``.parquet`` file to write (atomically).
        model: a model, a model file, or ``None`` for the shipped default.
    """
    model = _model(model)
    gallery = open_source(source, labelled=labelled)
    embeddings = encode_gallery(model, gallery, batch_size, show_progress, tta)
    metadata = {"metric": model.metric, "model_fingerprint": getattr(model, "fingerprint", None),
                "source": describe_source(gallery), "recipe": model.recipe.to_dict(), "tta": tta}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_embeddings(out, gallery.table, embeddings, metadata)
    return read_embeddings(out)


def build_index(store: str | os.PathLike, out: str | os.PathLike, pca_dim: int | None = None,
                pca_variance: float | None = None, seed: int = 0, kind: str = "auto",
                max_memory: int | str | None = None, recall: float = 0.99,
                use_gpu: bool | None = None) -> VectorIndex:
    """Build a FAISS index from a Parquet store and save it (index file plus metadata sidecar).

    Args:
        kind: ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq`` or a FAISS factory string.
        max_memory: byte budget for ``auto`` (an int or ``"600M"``, ``"4G"``).
        recall: recall@1 target the search parameter of approximate kinds is tuned to.
        use_gpu: train IVF k-means on a GPU (None: when FAISS sees one).
    """
    return build_from_store(store, out, pca_dim=pca_dim, pca_variance=pca_variance, seed=seed, kind=kind,
                            max_memory=parse_memory(max_memory), recall=recall, use_gpu=use_gpu)


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


def identify_images(queries: str | os.PathLike, index: VectorIndex | str | os.PathLike,
                    model: Embedder | str | os.PathLike | None = None, threshold: float | None = None,
                    k: int = 1, batch_size: int = 256) -> pd.DataFrame:
    """Identify query images (a folder, zip or list; labels not needed) against an index.

    Returns:
        One row per query: ``path``, ``label`` (``"unknown"`` when the best score is below
        ``threshold``), ``score``, ``known``, ``candidate``, and ``true_label`` when the queries'
        layout carries labels.
    Raises:
        ValueError: when the index was built with another model than ``model``.
    """
    model = _model(model)
    index = index if isinstance(index, VectorIndex) else VectorIndex.load(index)
    expected = index.metadata.get("model_fingerprint")
    actual = getattr(model, "fingerprint", None)
    if expected and actual and expected != actual:
        raise ModelMismatchError(f"the index was built with model {expected} but the queries use model {actual}; "
                                 "pass the same --model used for `oneshot embed`")
    try:
        gallery = open_source(queries)
    except InvalidInputError:
        gallery = open_source(queries, labelled=False)
    embeddings = encode_gallery(model, gallery, batch_size)
    result = identify(index, embeddings, threshold, k=k)
    result.insert(0, "path", gallery.table["path"].to_numpy())
    if (gallery.table["label"] != "").all():
        result["true_label"] = gallery.table["label"].to_numpy()
    return result


def verify_images(image_a: str | os.PathLike, image_b: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, threshold: float | None = None) -> dict:
    """1:1 verification of two image files: their similarity and, with ``threshold``, "same or not"."""
    model = _model(model)
    vectors = encode(model, [read_image_file(image_a), read_image_file(image_b)], show_progress=False)
    score = float(get_metric(model.metric).pairwise(vectors[:1], vectors[1:])[0])
    return {"a": str(image_a), "b": str(image_b), "metric": model.metric, "score": score,
            "same": None if threshold is None else bool(score >= threshold)}


def load_store(store: str | os.PathLike | EmbeddingSet, groups: list[str] | None = None) -> EmbeddingSet:
    """A Parquet store, optionally restricted to some groups (alphabets); unknown groups raise."""
    stored = store if isinstance(store, EmbeddingSet) else read_embeddings(store)
    if not groups:
        return stored
    missing = sorted(set(groups) - set(stored.table["group"]))
    if missing:
        raise InvalidInputError(f"groups not in the store: {missing}")
    keep = stored.table["group"].isin(groups).to_numpy()
    return EmbeddingSet(stored.table[keep].reset_index(drop=True), np.ascontiguousarray(stored.embeddings[keep]),
                        stored.metadata)


def evaluate_store(store: str | os.PathLike | EmbeddingSet, n_way: int = 20, k_shot: int = 1,
                   episodes: int = 1000, within_group: bool = True, knn_k: int = 3,
                   gallery_fraction: float = 0.3, seed: int = 0, groups: list[str] | None = None) -> dict:
    """N-way k-shot, KNN and 1:1 verification accuracy of a Parquet store (of ``groups`` only, if given)."""
    stored = load_store(store, groups)
    return evaluate(stored.embeddings, stored.table, stored.metadata["metric"], ("oneshot", "knn", "verification"),
                    n_way, k_shot, episodes, within_group, knn_k, gallery_fraction, seed=seed)


def cluster_store(store: str | os.PathLike | EmbeddingSet, pca_variance: float | None = None,
                  seed: int = 0, groups: list[str] | None = None) -> tuple[dict, pd.DataFrame]:
    """KMeans per group of a Parquet store: (mean ARI/NMI, per-group table)."""
    stored = load_store(store, groups)
    return clustering(stored.embeddings, stored.table, stored.metadata["metric"], pca_variance, seed)
