"""The clustering thresholds: calibration on labelled held-out classes, and where a run takes them from.

Two values, both distances in the model's metric (cosine: 1 - similarity):

- ``cluster_distance``: the median distance between two drawings of the same class. The
  clustering graph gives each item as many neighbours as the median item has within this distance.
- ``cluster_radius``: the ``radius_quantile`` (0.95) of the distance of a drawing to its own
  class's centre. Items farther from their cluster's centre are flagged outliers, and new drawings
  farther than this from every centre are flagged new by :func:`oneshot.pipelines.jobs.cluster.assign_new`.

A run takes them, first found first (:func:`oneshot.pipelines.evaluation.thresholds.resolve_cluster_thresholds`):
values given by the caller; the model's file (``info["thresholds"]`` of the model passed, or of the
shipped model the store was made with); the defaults below, calibrated for the first shipped
handwriting model (``handwriting-v1``).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, get_metric

logger = logging.getLogger(__name__)

THRESHOLD_KEYS = ("cluster_distance", "cluster_radius")

# Measured by `python -m benchmarks.cluster_calibration --data ../shared/data/omniglot` (the first
# shipped handwriting model, handwriting-v1, 18869941def97f3f; Omniglot background validation
# alphabets Bengali, Futurama, Greek and Japanese (katakana); benchmarks/results/cluster_calibration.json).
DEFAULT_THRESHOLDS = {"cluster_distance": 0.0892, "cluster_radius": 0.1040}
DEFAULT_FINGERPRINT = "18869941def97f3f"
DEFAULT_SOURCE = ("built-in default, calibrated for the shipped model handwriting-v1 (18869941def97f3f) on the "
                  "background validation alphabets by benchmarks/cluster_calibration.py")


def calibrate_cluster_threshold(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str,
                                radius_quantile: float = 0.95) -> dict:
    """Calibrate ``cluster_distance`` and ``cluster_radius`` on labelled held-out classes.

    Distances are only taken within a class of one group, so nothing but the labels is needed.

    Args:
        embeddings: (N, D) of classes the model never trained on.
        table: N rows with ``label`` and ``group``.
        radius_quantile: share of drawings that lie within ``cluster_radius`` of their class centre.

    Returns:
        ``{"cluster_distance", "cluster_radius", "same_class_pairs", "images", "classes",
        "new_class_flagged"}``; the last is the share of drawings flagged new when their own class
        is left out of the centres (leave-one-class-out within each group).
    """
    from oneshot.pipelines.evaluation.clustering import centres_of, distances_to

    metric = get_metric(metric)
    x = metric.prepare(embeddings)
    if len(table) != x.shape[0] or x.shape[0] == 0:
        raise InvalidInputError(f"table: expected {x.shape[0]} rows (one per embedding), got {len(table)}")
    keys = (table["group"].astype(str) + "\x00" + table["label"].astype(str)).to_numpy()
    classes, labels = np.unique(keys, return_inverse=True)
    pair_distances, centre_distances = [], []
    for c in range(classes.size):
        xc = x[labels == c]
        if xc.shape[0] < 2:
            continue
        d = metric.distance(metric.similarity(xc, xc))
        pair_distances.append(d[np.triu_indices(xc.shape[0], 1)])
        centre_distances.append(distances_to(metric, xc, centres_of(xc, np.zeros(len(xc), np.int64), metric)[[0] * len(xc)]))
    if not pair_distances:
        raise InvalidInputError("calibration needs classes with at least two items")
    pairs = np.concatenate(pair_distances)
    radius = float(np.quantile(np.concatenate(centre_distances), radius_quantile))
    centres = centres_of(x, labels.astype(np.int64), metric)
    groups = table["group"].astype(str).to_numpy()
    group_of_class = np.array([k.split("\x00")[0] for k in classes])
    flagged = []
    for c in range(classes.size):
        others = np.flatnonzero((group_of_class == group_of_class[c]) & (np.arange(classes.size) != c))
        if others.size == 0:
            continue
        members = x[labels == c]
        nearest = metric.distance(metric.similarity(members, centres[others])).min(axis=1)
        flagged.append(nearest > radius)
    return {"cluster_distance": float(np.median(pairs)), "cluster_radius": radius,
            "radius_quantile": radius_quantile, "same_class_pairs": int(pairs.size), "images": int(x.shape[0]),
            "classes": int(classes.size), "groups": int(np.unique(groups).size),
            "new_class_flagged": float(np.concatenate(flagged).mean()) if flagged else None}


def model_thresholds(config: dict | None) -> dict:
    """The clustering thresholds a model file's config carries, possibly none (``{key: value}``).

    Deprecated, kept for the old ``oneshot.pipelines.cluster_calibration`` name for one version:
    :func:`~oneshot.pipelines.evaluation.thresholds.resolve_cluster_thresholds` is the resolver.
    """
    from oneshot.pipelines.evaluation.thresholds import config_threshold

    carried = {key: config_threshold(config or {}, key) for key in THRESHOLD_KEYS}
    return {key: float(found["value"]) for key, found in carried.items() if found.get("value") is not None}
