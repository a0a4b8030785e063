"""Calibrate the clustering thresholds and choose the clustering method on background validation alphabets.

Reads only Omniglot's background validation alphabets (Bengali, Futurama, Greek, Japanese
(katakana)), which the shipped model never trained on: calibrates ``cluster_distance`` and
``cluster_radius`` (:func:`oneshot.pipelines.evaluation.cluster_thresholds.calibrate_cluster_threshold`), then
compares the candidate methods with k unknown and k known, on all 20 drawings of each character
and on the first 10 and 5 drawers (to see how the choices hold when clusters are smaller).

Run from the repository root::

    python -m benchmarks.cluster_calibration --data ../shared/data/omniglot --out benchmarks/results/cluster_calibration.json
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pandas as pd

from benchmarks import command_line, validation_alphabets, write_result
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.cluster_scores import clustering_scores
from oneshot.pipelines.evaluation.cluster_thresholds import calibrate_cluster_threshold
from oneshot.pipelines.evaluation.clustering import cluster_groups
from oneshot.pipelines.jobs.train import VALIDATION_ALPHABETS


def sklearn_candidates(x: np.ndarray, n_true: int, average_threshold: float) -> dict:
    """Labels of the k-free scikit-learn references on one group (cosine vectors)."""
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdbscan = HDBSCAN(min_cluster_size=3).fit_predict(x)
    # Noise points join their nearest cluster, as `oneshot cluster` would report them.
    if (hdbscan >= 0).any() and (hdbscan < 0).any():
        centres = np.stack([x[hdbscan == c].mean(0) for c in range(hdbscan.max() + 1)])
        hdbscan[hdbscan < 0] = np.argmax(x[hdbscan < 0] @ centres.T, axis=1)
    return {
        "agglomerative_average_auto": AgglomerativeClustering(None, metric="cosine", linkage="average",
                                                              distance_threshold=average_threshold).fit_predict(x),
        "hdbscan_auto": hdbscan,
        "sklearn_kmeans10_truth": KMeans(n_true, n_init=10, random_state=0).fit_predict(x),
        "agglomerative_ward_truth": AgglomerativeClustering(n_true, linkage="ward").fit_predict(x),
    }


def average_link_threshold(embeddings: np.ndarray, table: pd.DataFrame) -> float:
    """The average-link cosine threshold giving each group its true number of clusters, averaged."""
    from sklearn.cluster import AgglomerativeClustering

    values = []
    for group in table["group"].unique():
        members = (table["group"] == group).to_numpy()
        k = table.loc[members, "label"].nunique()
        tree = AgglomerativeClustering(None, metric="cosine", linkage="average", distance_threshold=0,
                                       compute_distances=True).fit(embeddings[members])
        merges = np.sort(tree.distances_)[::-1]
        values.append(float((merges[k - 2] + merges[k - 1]) / 2))
    return float(np.mean(values))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR)")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    split, table = validation_alphabets(args.data)
    model = load_model(args.model)
    metric = get_metric(model.metric)
    embeddings = metric.prepare(encode(model, split.read(table["path"]), show_progress=False))
    thresholds = calibrate_cluster_threshold(embeddings, table, metric)
    print(json.dumps(thresholds, indent=2))
    average_threshold = average_link_threshold(embeddings, table)

    comparison = []
    for drawers in (20, 10, 5):
        keep = (table["drawer"] <= drawers).to_numpy()
        sub, x = table[keep].reset_index(drop=True), embeddings[keep]
        scores: dict[str, list] = {}
        for clusters, method in (("auto", "spectral"), ("truth", "spectral"), ("auto", "kmeans"), ("truth", "kmeans")):
            tick = time.perf_counter()
            result = cluster_groups(x, sub, metric, clusters, thresholds["cluster_distance"],
                                    thresholds["cluster_radius"], method=method, seed=args.seed)
            name = f"{method}_{clusters}" + ("_eigengap" if clusters == "auto" else "")
            scores[name] = [{**row, "seconds": time.perf_counter() - tick} for row in result.per_group.to_dict("records")]
        for group in sub["group"].unique():
            members = (sub["group"] == group).to_numpy()
            truth = sub.loc[members, "label"].to_numpy()
            for name, labels in sklearn_candidates(x[members], len(set(truth)), average_threshold).items():
                scores.setdefault(name, []).append({"group": group, **clustering_scores(truth, labels)})
        for name, rows in scores.items():
            frame = pd.DataFrame(rows)
            comparison.append({"drawers_per_character": drawers, "method": name,
                               **{k: float(frame[k].mean()) for k in ("accuracy", "ari", "nmi", "k_relative_error")},
                               "per_group": frame[["group", "accuracy", "ari", "n_clusters", "n_classes"]].to_dict("records")})
            print(f"drawers {drawers:2d}  {name:30s} accuracy {comparison[-1]['accuracy']:.3f}  "
                  f"ARI {comparison[-1]['ari']:.3f}  k error {comparison[-1]['k_relative_error']:.3f}")

    result = {"model": args.model or "shipped default", "model_fingerprint": model.fingerprint,
              "validation_alphabets": list(VALIDATION_ALPHABETS["background"]),
              "command": command_line("cluster_calibration", argv),
              "thresholds": {k: thresholds[k] for k in ("cluster_distance", "cluster_radius")},
              "calibration": thresholds, "average_link_threshold": average_threshold, "comparison": comparison}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
