"""The clustering jobs: cluster a store's groups, export each cluster as a folder for review, and
assign new drawings to the existing clusters (or flag them new) without clustering again.

Exported folders are laid out ``DIR/<group>/cluster_<n>/<id>_<name>.png`` (``DIR/cluster_<n>/...``
when the store has no groups), the layout ``oneshot embed`` reads as ``group/class/image``: once
the folders are renamed after their characters, ``DIR`` is a labelled gallery.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from oneshot.atomic import atomic_folder
from oneshot.data.source import ImageSource, rows_of_groups
from oneshot.embedder.artifact import as_model
from oneshot.embedder.model import Embedder
from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.metric import Metric, get_metric
from oneshot.index.store import EmbeddingSet, read_embeddings, write_embeddings
from oneshot.pipelines.engines.local import encode_source
from oneshot.pipelines.evaluation.clustering import Clustering, centres_of, cluster_groups
from oneshot.pipelines.evaluation.thresholds import resolve_cluster_thresholds
from oneshot.pipelines.jobs.store import load_store
from oneshot.pipelines.reading import Rejects, open_queries, open_store_source, read_each, rejects_path

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._()-]+")


def cluster_folder_name(cluster: int) -> str:
    return f"cluster_{int(cluster):04d}"


def export_clusters(assignments: pd.DataFrame, source: str | os.PathLike | ImageSource,
                    out_dir: str | os.PathLike, batch_size: int = 512, rejects: Rejects | None = None) -> Path:
    """Write each cluster's images as PNG files into its own folder, all or nothing.

    Args:
        assignments: ``id``, ``path``, ``group``, ``cluster`` and ``outlier`` columns
            (:attr:`oneshot.pipelines.evaluation.clustering.Clustering.assignments`).
        source: where the images are read (the store's ``source``), or an opened source.
        out_dir: the folder to create; it must not exist or be empty.
        rejects: images that can no longer be read are left out and recorded here (default:
            skipped), and listed in ``<out_dir>.rejects.csv``.

    Returns:
        ``out_dir``. Outliers keep their cluster and get the name prefix ``outlier_``.
    """
    out_dir = Path(out_dir)
    rejects = rejects if rejects is not None else Rejects()
    with atomic_folder(out_dir) as temporary:
        reader = open_store_source(source)
        paths = assignments["path"].astype(str).tolist()
        for start in range(0, len(paths), batch_size):
            rows = assignments.iloc[start:start + batch_size]
            for (_, row), image in zip(rows.iterrows(), read_each(reader, paths[start:start + batch_size], rejects)):
                if image is None:
                    continue
                folder = temporary
                if str(row["group"]):
                    folder = folder / _UNSAFE.sub("_", str(row["group"]))
                folder = folder / cluster_folder_name(row["cluster"])
                folder.mkdir(parents=True, exist_ok=True)
                stem = _UNSAFE.sub("_", Path(str(row["path"])).stem)
                name = f"{'outlier_' if row.get('outlier', False) else ''}{int(row['id'])}_{stem}.png"
                ok, encoded = cv2.imencode(".png", np.asarray(image))
                if not ok:
                    raise InvalidInputError(f"{row['path']}: PNG encoding failed")
                (folder / name).write_bytes(encoded.tobytes())
    rejects.write(rejects_path(out_dir))
    logger.info("exported %d images in %d clusters to %s", len(assignments) - len(rejects),
                assignments["cluster"].nunique(), out_dir)
    return out_dir


def cluster_centres(assignments: pd.DataFrame, embeddings: np.ndarray,
                    metric: Metric | str) -> tuple[pd.DataFrame, np.ndarray]:
    """Centre of every cluster of a clustering.

    Args:
        assignments: N rows with ``group`` and ``cluster``.
        embeddings: (N, D), one row per assignment.

    Returns:
        (a table of ``cluster``, ``group``, ``size``; (n_clusters, D) float32 centres in its order).
    """
    metric = get_metric(metric)
    clusters, index = np.unique(assignments["cluster"].to_numpy(np.int64), return_inverse=True)
    centres = centres_of(metric.prepare(embeddings), index.astype(np.int64), metric)
    first = pd.Series(np.arange(len(index))).groupby(index).first().to_numpy()
    table = pd.DataFrame({"cluster": clusters, "group": assignments["group"].astype(str).to_numpy()[first],
                          "size": np.bincount(index)})
    return table, centres


def assign_new(embeddings: np.ndarray, centre_table: pd.DataFrame, centres: np.ndarray, metric: Metric | str,
               cluster_radius: float, groups: list[str] | None = None) -> pd.DataFrame:
    """Assign new drawings to the nearest existing cluster centre, or flag them new.

    Args:
        embeddings: (Q, D) new drawings.
        centre_table, centres: from :func:`cluster_centres`.
        cluster_radius: a drawing farther than this from every centre is flagged ``new``.
        groups: consider only the clusters of these groups (default: all).

    Returns:
        Q rows: ``cluster`` and ``group`` of the nearest centre, ``distance`` to it, ``new``.
    """
    metric = get_metric(metric)
    keep = np.ones(len(centre_table), dtype=bool)
    if groups:
        keep = rows_of_groups(centre_table, groups, "the clustering")
    table, centres = centre_table[keep].reset_index(drop=True), centres[keep]
    if len(table) == 0:
        raise InvalidInputError("no clusters to assign to")
    distance = metric.distance(metric.similarity(embeddings, centres))
    nearest = np.argmin(distance, axis=1)
    best = distance[np.arange(len(nearest)), nearest]
    return pd.DataFrame({"cluster": table["cluster"].to_numpy()[nearest], "group": table["group"].to_numpy()[nearest],
                         "distance": best, "new": best > cluster_radius})


def cluster_store(store: str | os.PathLike | EmbeddingSet, clusters: int | str = "auto",
                  groups: list[str] | None = None, method: str = "spectral", pca_variance: float | None = None,
                  seed: int = 0, model: str | os.PathLike | None = None, cluster_distance: float | None = None,
                  cluster_radius: float | None = None, out: str | os.PathLike | None = None,
                  export: str | os.PathLike | None = None,
                  source: str | os.PathLike | ImageSource | None = None, affinity: str = "knn") -> Clustering:
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
            :func:`oneshot.pipelines.jobs.cluster.export_clusters`).
        source: where the images are for ``export`` (default: the store's ``source``).
        affinity: the spectral graph, ``"knn"`` or ``"shared"``
            (:func:`oneshot.pipelines.evaluation.clustering.affinity_graph`).

    Returns:
        A :class:`Clustering`; ``settings["threshold_source"]`` says where the thresholds came from.
    """
    stored = load_store(store, groups)
    thresholds, threshold_source = resolve_cluster_thresholds(
        stored.metadata, model, {"cluster_distance": cluster_distance, "cluster_radius": cluster_radius})
    result = cluster_groups(stored.embeddings, stored.table, stored.metadata["metric"], clusters,
                            thresholds["cluster_distance"], thresholds["cluster_radius"], method=method,
                            pca_variance=pca_variance, seed=seed, affinity=affinity)
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
                  groups: list[str] | None = None, batch_size: int | None = None,
                  rejects: Rejects | None = None) -> tuple[pd.DataFrame, str]:
    """Assign new drawings to the clusters of a ``cluster --out`` file, or flag them new.

    Args:
        images: a folder, zip or list of images (labels not needed).
        clusters: the Parquet file written by :func:`cluster_store` with ``out``.
        model: the model that made the clustered store (default: shipped); fingerprints are compared.
        cluster_radius: farther than this from every centre is new (default: the clustering's).
        groups: only the clusters of these groups.
        rejects: images that cannot be read get no row and are recorded here (default: skipped).

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
    rejects = rejects if rejects is not None else Rejects()
    gallery = open_queries(images, strict=rejects.policy.fail)
    table, embeddings = encode_source(model, gallery, rejects, batch_size)
    if not len(table):
        raise InvalidInputError(f"{images}: no image could be read ({len(rejects)} rejected)")
    answers = assign_new(embeddings, centre_table, centres, stored.metadata["metric"], cluster_radius, groups)
    answers.insert(0, "path", table["path"].astype(str).to_numpy())
    return answers, source
