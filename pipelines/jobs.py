"""High-level jobs behind the CLI, importable as a Python API.

``embed_to_store`` (images -> a store folder of Parquet shards: streaming, resumable, appendable),
``identify_job`` (streamed queries -> answer shards), ``remove_from_store``, ``embed_gallery``
(images -> one Parquet file, in memory; small galleries), ``build_index`` (store -> FAISS index;
``add_to_index`` and ``remove_from_index`` change it), ``identify_images`` (query images -> nearest
labels or "unknown"), ``verify_images`` (1:1), ``evaluate_store``, ``cluster_store`` (cluster,
score, export) and ``assign_images`` (new drawings -> existing clusters).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from oneshot.data.archive import read_image_file
from oneshot.data.source import ImageSource, describe_source, listing_rejects, open_source
from oneshot.embedder.artifact import as_model
from oneshot.embedder.encode import encode, progress_bar
from oneshot.embedder.model import Embedder
from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.gallery_index import AddReport, add_from_store, build_from_store, nonfinite_rows
from oneshot.index.gallery_index import remove_from_index as remove_rows
from oneshot.index.kinds import parse_memory
from oneshot.index.metric import get_metric
from oneshot.index.store import EmbeddingSet, read_embeddings, write_embeddings
from oneshot.index.vector_index import VectorIndex
from oneshot.locks import exclusive_lock
from oneshot.pipelines.cluster import Clustering, cluster_groups
from oneshot.pipelines.cluster_calibration import resolve_thresholds
from oneshot.pipelines.cluster_review import assign_new, cluster_centres, export_clusters
from oneshot.pipelines.embedding import EmbedResult, embed_to_store  # noqa: F401  (streaming, sharded)
from oneshot.pipelines.identify import identify
from oneshot.pipelines.identify_job import IdentifySummary, identify_job  # noqa: F401  (streaming)
from oneshot.pipelines.rejects import RejectPolicy, Rejects, finite_rows, read_batch, rejects_path
from oneshot.pipelines.store_jobs import remove_from_store  # noqa: F401
from oneshot.pipelines.thresholds import resolve_threshold

log = logging.getLogger(__name__)


def encode_gallery(model: Embedder, gallery: ImageSource, batch_size: int = 256,
                   show_progress: bool | None = None, tta: bool = False) -> np.ndarray:
    """Encode every image of a source -> float32 (N, D), table order (:func:`encode_source` that
    stops at the first file it cannot use, so every row has its vector)."""
    _, vectors = encode_source(model, gallery, Rejects(RejectPolicy(on_error="fail")), batch_size, show_progress,
                               tta)
    return vectors


# --- bad input (issue 8): encode what can be read, name the rest ------------------------------------
def encode_source(model: Embedder, source: ImageSource, rejects: Rejects, batch_size: int = 256,
                  show_progress: bool | None = None, tta: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Encode every readable image of a source; unreadable ones go to ``rejects``.

    Returns:
        (the source's table without the rejected rows, float32 (N, D) in that table's order).
    Raises:
        ImageReadError: at the first bad file when ``rejects`` is in ``fail`` mode.
    """
    rejects.extend(listing_rejects(source))
    paths = list(source.table["path"])
    kept_paths, chunks = [], []
    with progress_bar(show_progress, len(paths), "encode") as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            images, good = read_batch(source, batch, rejects, color=model.recipe.channels == 3)
            if images:
                vectors = encode(model, images, batch_size=batch_size, show_progress=False, tta=tta)
                ok = finite_rows(vectors, good, rejects)
                chunks.append(vectors[ok])
                kept_paths += [p for p, keep in zip(good, ok) if keep]
            bar.update(len(batch))
    table = source.table.set_index("path", drop=False).loc[kept_paths].reset_index(drop=True)
    if not chunks:
        return table, np.zeros((0, model.dim), dtype=np.float32)
    return table, np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def embed_gallery(source: str | os.PathLike | ImageSource, out: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, batch_size: int = 256,
                  labelled: bool = True, show_progress: bool | None = None, tta: bool = False,
                  rejects: Rejects | None = None) -> EmbeddingSet:
    """Encode every image of a source into a Parquet embedding store.

    Files that cannot be read are left out and listed in ``<out>.rejects.csv`` (path, reason);
    with a ``fail`` policy the first one stops the job and nothing is written. A lock refuses a
    second process writing the same ``out``.

    Args:
        source: a folder, zip, list file, MNIST IDX file or Omniglot folder (see
            :func:`oneshot.data.source.open_source`), or an opened image source.
        out: the ``.parquet`` file to write (atomically).
        model: a model, a model file, or ``None`` for the shipped default.
        rejects: the collector and its policy (default: skip every bad file, no limit); read
            ``rejects.items`` and ``rejects.summary()`` afterwards.
    Raises:
        InvalidInputError: when no image at all could be encoded.
    """
    rejects = rejects if rejects is not None else Rejects()
    model = as_model(model)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        gallery = open_source(source, labelled=labelled, strict=rejects.policy.fail)
        table, embeddings = encode_source(model, gallery, rejects, batch_size, show_progress, tta)
        if not len(table):
            raise InvalidInputError(f"{describe_source(gallery)}: no image could be read ({len(rejects)} rejected, "
                                    f"e.g. {rejects.items[0][0] if rejects.items else '-'}); nothing written")
        metadata = {"metric": model.metric, "model_fingerprint": getattr(model, "fingerprint", None),
                    "source": describe_source(gallery), "recipe": model.recipe.to_dict(), "tta": tta,
                    "rejected": len(rejects)}
        rejects.write(rejects_path(out))
        write_embeddings(out, table, embeddings, metadata)
    return read_embeddings(out)


def build_index(store: str | os.PathLike, out: str | os.PathLike, pca_dim: int | None = None,
                pca_variance: float | None = None, seed: int = 0, kind: str = "auto",
                max_memory: int | str | None = None, recall: float = 0.99,
                use_gpu: bool | None = None, rejects: Rejects | None = None) -> VectorIndex:
    """Build a FAISS index from a store (file or folder) block by block and save it (index file
    plus metadata sidecar; both renamed into place, a writer lock refuses a second writer).

    Rows whose vector has NaN or infinite values are left out and listed in ``<out>.rejects.csv``
    (with a ``fail`` policy the first one stops the job before anything is written).

    Args:
        kind: ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq`` or a FAISS factory string.
        max_memory: byte budget for ``auto`` (an int or ``"600M"``, ``"4G"``).
        recall: recall@1 target the search parameter of approximate kinds is tuned to.
        use_gpu: train IVF k-means on a GPU (None: when FAISS sees one).
    """
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


def identify_images(queries: str | os.PathLike, index: VectorIndex | str | os.PathLike,
                    model: Embedder | str | os.PathLike | None = None, threshold: float | str | None = "model",
                    k: int = 1, batch_size: int = 256, rejects: Rejects | None = None) -> pd.DataFrame:
    """Identify query images (a folder, zip or list; labels not needed) against an index.

    Query files that cannot be read get no row; they are recorded in ``rejects`` (default: skip
    them), which the caller may write beside its output. With a ``fail`` policy the first stops the job.

    Args:
        threshold: a number, ``"model"`` (the model's own "unknown" threshold, calibrated on its
            validation split) or ``None`` (no "unknown" answers).
    Returns:
        One row per query: ``path``, ``label`` (``"unknown"`` when the best score is below
        ``threshold``), ``score``, ``known``, ``candidate``, and ``true_label`` when the queries'
        layout carries labels. ``result.attrs`` holds ``threshold`` and ``threshold_source``.
    Raises:
        ValueError: when the index was built with another model than ``model``.
    """
    model = as_model(model)
    index = index if isinstance(index, VectorIndex) else VectorIndex.load(index)
    expected = index.metadata.get("model_fingerprint")
    actual = getattr(model, "fingerprint", None)
    if expected and actual and expected != actual:
        raise ModelMismatchError(f"the index was built with model {expected} but the queries use model {actual}; "
                                 "pass the same --model used for `oneshot embed`")
    rejects = rejects if rejects is not None else Rejects()
    strict = rejects.policy.fail
    try:
        gallery = open_source(queries, strict=True)
    except InvalidInputError:
        try:
            gallery = open_source(queries, strict=strict)
        except InvalidInputError:
            gallery = open_source(queries, labelled=False, strict=strict)
    table, embeddings = encode_source(model, gallery, rejects, batch_size)
    if not len(table):
        raise InvalidInputError(f"{queries}: no query image could be read ({len(rejects)} rejected)")
    threshold, source = resolve_threshold(model, "unknown", threshold)
    if threshold is not None and index.metadata.get("pca") and source.startswith("the model's"):
        log.warning("the index reduces vectors with PCA; the model's threshold was calibrated without it")
    result = identify(index, embeddings, threshold, k=k)
    result.attrs.update(threshold=threshold, threshold_source=source)
    result.insert(0, "path", table["path"].to_numpy())
    if (table["label"] != "").all():
        result["true_label"] = table["label"].to_numpy()
    return result


def verify_images(image_a: str | os.PathLike, image_b: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, threshold: float | str | None = "model") -> dict:
    """1:1 verification of two image files: their similarity and "same or not" at ``threshold``
    (a number, ``"model"``: the model's calibrated verification threshold, or ``None``)."""
    model = as_model(model)
    colour = model.recipe.channels == 3
    vectors = encode(model, [read_image_file(image_a, color=colour), read_image_file(image_b, color=colour)],
                     show_progress=False)
    score = float(get_metric(model.metric).pairwise(vectors[:1], vectors[1:])[0])
    threshold, source = resolve_threshold(model, "verification", threshold)
    return {"a": str(image_a), "b": str(image_b), "metric": model.metric, "score": score,
            "same": None if threshold is None else bool(score >= threshold), "threshold": threshold,
            "threshold_source": source}


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
                   gallery_fraction: float = 0.3, seed: int = 0, groups: list[str] | None = None,
                   threshold: float | None = None, baseline: bool = True) -> dict:
    """N-way k-shot, KNN and 1:1 verification accuracy of a Parquet store (of ``groups`` only, if given).

    Beside the model, ``raw_pixels`` scores the store's own images as raw pixels on the same
    episodes and pairs (``baseline``). Forgery stores (a ``forged`` column) are scored on genuine
    images for writer identification, plus genuine-vs-forgery verification (``forgery``).
    ``threshold``: the verification threshold; ``None`` calibrates it on classes disjoint from
    those reported on.
    """
    from oneshot.pipelines.evaluate_gallery import evaluate_gallery_store

    return evaluate_gallery_store(load_store(store, groups), n_way, k_shot, episodes, within_group, knn_k,
                                  gallery_fraction, seed, threshold, baseline)


def cluster_store(store: str | os.PathLike | EmbeddingSet, clusters: int | str = "auto",
                  groups: list[str] | None = None, method: str = "spectral", pca_variance: float | None = None,
                  seed: int = 0, model: str | os.PathLike | None = None, cluster_distance: float | None = None,
                  cluster_radius: float | None = None, out: str | os.PathLike | None = None,
                  export: str | os.PathLike | None = None,
                  source: str | os.PathLike | ImageSource | None = None) -> Clustering:
    """Cluster each group of a Parquet store on its own; score it when every row has a label.

    Args:
        store: a store from ``oneshot embed`` (labelled or ``--unlabelled``), or a loaded one.
        clusters: ``"auto"`` (estimated per group), ``"truth"`` (each group's number of labels) or an int.
        groups: only these groups.
        model: a model file whose carried thresholds to use (default: the shipped model's when the
            store was made with it, else the documented defaults).
        cluster_distance, cluster_radius: override the thresholds.
        out: write the assignments, with the embeddings, to this Parquet file (a store that
            :func:`assign_images` reads).
        export: write each cluster as a folder of its images here (see
            :func:`oneshot.pipelines.cluster_review.export_clusters`).
        source: where the images are for ``export`` (default: the store's ``source``).

    Returns:
        A :class:`Clustering`; ``settings["threshold_source"]`` says where the thresholds came from.
    """
    stored = load_store(store, groups)
    thresholds, threshold_source = resolve_thresholds(
        stored.metadata, model, {"cluster_distance": cluster_distance, "cluster_radius": cluster_radius})
    result = cluster_groups(stored.embeddings, stored.table, stored.metadata["metric"], clusters,
                            thresholds["cluster_distance"], thresholds["cluster_radius"], method=method,
                            pca_variance=pca_variance, seed=seed)
    result.settings["threshold_source"] = threshold_source
    if out is not None:
        metadata = {k: v for k, v in stored.metadata.items() if k not in ("count", "dimension", "normalized")}
        metadata.update({"clustering": result.settings, "clustered_store": str(store) if not isinstance(store, EmbeddingSet) else None})
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_embeddings(out, result.assignments, stored.embeddings, metadata)
    if export is not None:
        export_clusters(result.assignments, source or stored.metadata.get("source"), export)
    return result


def assign_images(images: str | os.PathLike, clusters: str | os.PathLike | EmbeddingSet,
                  model: Embedder | str | os.PathLike | None = None, cluster_radius: float | None = None,
                  groups: list[str] | None = None, batch_size: int = 256) -> tuple[pd.DataFrame, str]:
    """Assign new drawings to the clusters of a ``cluster --out`` file, or flag them new.

    Args:
        images: a folder, zip or list of images (labels not needed).
        clusters: the Parquet file written by :func:`cluster_store` with ``out``.
        model: the model that made the clustered store (default: shipped); fingerprints are compared.
        cluster_radius: farther than this from every centre is new (default: the clustering's).
        groups: only the clusters of these groups.

    Returns:
        (one row per image: ``path``, ``cluster``, ``group``, ``distance``, ``new``; where the radius came from).
    """
    stored = clusters if isinstance(clusters, EmbeddingSet) else read_embeddings(clusters)
    if "cluster" not in stored.table.columns:
        raise InvalidInputError(f"{clusters}: not a clustering (no 'cluster' column); write one with `oneshot cluster --out`")
    model = as_model(model)
    expected, actual = stored.metadata.get("model_fingerprint"), getattr(model, "fingerprint", None)
    if expected and actual and expected != actual:
        raise ModelMismatchError(f"the clusters were made with model {expected} but the images use model {actual}; "
                                 "pass the same --model used for `oneshot embed`")
    if cluster_radius is None:
        cluster_radius = float(stored.metadata.get("clustering", {}).get("cluster_radius"))
        source = f"cluster_radius={cluster_radius:.4f} (from the clustering file: " \
                 f"{stored.metadata.get('clustering', {}).get('threshold_source', 'unknown')})"
    else:
        source = f"cluster_radius={cluster_radius:.4f} (given)"
    centre_table, centres = cluster_centres(stored.table, stored.embeddings, stored.metadata["metric"])
    try:
        gallery = open_source(images)
    except InvalidInputError:
        gallery = open_source(images, labelled=False)
    embeddings = encode_gallery(model, gallery, batch_size)
    answers = assign_new(embeddings, centre_table, centres, stored.metadata["metric"], cluster_radius, groups)
    answers.insert(0, "path", gallery.table["path"].to_numpy())
    return answers, source
