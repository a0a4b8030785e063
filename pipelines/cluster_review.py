"""The review loop after clustering: export each cluster as a folder of its images for a person to
check and rename, and assign new drawings to the existing clusters (or flag them new) without
clustering everything again.

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
from oneshot.data.source import ImageSource, open_source
from oneshot.errors import InvalidInputError, MissingDataError
from oneshot.index.metric import Metric, get_metric
from oneshot.pipelines.cluster import centres_of

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._()-]+")


def open_store_source(source: str | os.PathLike | ImageSource) -> ImageSource:
    """The images behind a store (its metadata's ``source``), labelled layout first, then unlabelled."""
    if isinstance(source, ImageSource):
        return source
    if not source or not Path(str(source)).exists():
        raise MissingDataError(f"{source}: the store's image source is not there any more; pass --source")
    try:
        return open_source(source)
    except InvalidInputError:  # not a labelled layout: any depth, no labels
        return open_source(source, labelled=False)


def cluster_folder_name(cluster: int) -> str:
    return f"cluster_{int(cluster):04d}"


def export_clusters(assignments: pd.DataFrame, source: str | os.PathLike | ImageSource,
                    out_dir: str | os.PathLike, batch_size: int = 512) -> Path:
    """Write each cluster's images as PNG files into its own folder, all or nothing.

    Args:
        assignments: ``id``, ``path``, ``group``, ``cluster`` and ``outlier`` columns
            (:attr:`oneshot.pipelines.cluster.Clustering.assignments`).
        source: where the images are read (the store's ``source``), or an opened source.
        out_dir: the folder to create; it must not exist or be empty.

    Returns:
        ``out_dir``. Outliers keep their cluster and get the name prefix ``outlier_``.
    """
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as temporary:
        reader = open_store_source(source)
        paths = assignments["path"].astype(str).tolist()
        for start in range(0, len(paths), batch_size):
            rows = assignments.iloc[start:start + batch_size]
            for (_, row), image in zip(rows.iterrows(), reader.read(paths[start:start + batch_size])):
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
    logger.info("exported %d images in %d clusters to %s", len(assignments), assignments["cluster"].nunique(), out_dir)
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
        missing = sorted(set(groups) - set(centre_table["group"]))
        if missing:
            raise InvalidInputError(f"groups not in the clustering: {missing}")
        keep = centre_table["group"].isin(groups).to_numpy()
    table, centres = centre_table[keep].reset_index(drop=True), centres[keep]
    if len(table) == 0:
        raise InvalidInputError("no clusters to assign to")
    distance = metric.distance(metric.similarity(embeddings, centres))
    nearest = np.argmin(distance, axis=1)
    best = distance[np.arange(len(nearest)), nearest]
    return pd.DataFrame({"cluster": table["cluster"].to_numpy()[nearest], "group": table["group"].to_numpy()[nearest],
                         "distance": best, "new": best > cluster_radius})
