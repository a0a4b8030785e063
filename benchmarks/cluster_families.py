"""Does a clustering choice carry over between image families? The spectral graph's affinities
(``knn``, ``shared``) side by side, with k known and estimated, on three families none of which is
reported elsewhere as a clustering figure:

- Omniglot's background validation alphabets (Bengali, Futurama, Greek, Japanese (katakana)), all
  20 drawers of each character, then the first 10 and 5;
- the project's synthetic alphabets (3 sets of 6 alphabets x 20 characters, seeds 3-5, prefix
  ``families``), all 20 drawers, then the first 5;
- MNIST's test digits in 5 slices of 1,000 (one group of 10 digits each), when ``--mnist`` is given.

Each row is the mean over a family's groups of one-to-one (Hungarian) accuracy, with the model's
own clustering thresholds (calibrated on the Omniglot validation alphabets for the shipped model).

Run from the repository root::

    python -m benchmarks.cluster_families --data ../shared/data/omniglot --mnist ../shared/data/mnist \\
        --out benchmarks/results/cluster_families.json
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import command_line, validation_alphabets, write_result
from oneshot.data.mnist import read_mnist
from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.clustering import AFFINITIES, cluster_groups
from oneshot.pipelines.evaluation.thresholds import resolve_cluster_thresholds

MNIST_SLICES, MNIST_SLICE = 5, 1000


def family_sets(model, data: str | None, mnist: str | None):
    """Yield ``(family, set name, vectors (N, D), table)`` for every set compared."""
    split, table = validation_alphabets(data)
    vectors = encode(model, split.read(table["path"]), show_progress=False)
    for drawers in (20, 10, 5):
        keep = (table["drawer"] <= drawers).to_numpy()
        yield "omniglot validation", f"{drawers} drawers", vectors[keep], table[keep].reset_index(drop=True)
    for seed in (3, 4, 5):
        synthetic = make_alphabets(6, 20, 20, seed=seed, prefix="families")
        vectors = encode(model, synthetic.read(), show_progress=False)
        for drawers in (20, 5):
            keep = (synthetic.table["drawer"] <= drawers).to_numpy()
            yield "synthetic", f"seed {seed}, {drawers} drawers", vectors[keep], synthetic.table[keep].reset_index(drop=True)
    if mnist is None:
        return
    images, labels = read_mnist(Path(mnist) / "t10k-images-idx3-ubyte.gz", Path(mnist) / "t10k-labels-idx1-ubyte.gz")
    for start in range(0, MNIST_SLICES * MNIST_SLICE, MNIST_SLICE):
        rows = slice(start, start + MNIST_SLICE)
        table = pd.DataFrame({"id": np.arange(MNIST_SLICE), "path": [f"t10k/{i}" for i in range(start, start + MNIST_SLICE)],
                              "label": labels[rows].astype(str), "group": "mnist"})
        yield "mnist test", f"digits {start}-{start + MNIST_SLICE - 1}", encode(model, list(images[rows]),
                                                                                show_progress=False), table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR)")
    parser.add_argument("--mnist", default=None, help="folder of the MNIST IDX files (MNIST rows skipped without it)")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    model = load_model(args.model)
    metric = get_metric(model.metric)
    thresholds, source = resolve_cluster_thresholds({"model_fingerprint": model.fingerprint}, args.model)
    print(f"thresholds: {source}")
    rows = []
    for family, name, vectors, table in family_sets(model, args.data, args.mnist):
        for affinity in AFFINITIES:
            for clusters in ("truth", "auto"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = cluster_groups(vectors, table, metric, clusters, thresholds["cluster_distance"],
                                            thresholds["cluster_radius"], seed=args.seed, affinity=affinity)
                rows.append({"family": family, "set": name, "affinity": affinity, "clusters": clusters,
                             "accuracy": float(result.per_group["accuracy"].mean()),
                             "k_relative_error": float(result.per_group["k_relative_error"].mean())})
                print(f"{family:20s} {name:24s} {affinity:6s} {clusters:5s} accuracy {rows[-1]['accuracy']:.3f}  "
                      f"k error {rows[-1]['k_relative_error']:.3f}", flush=True)
    frame = pd.DataFrame(rows)
    means = frame.groupby(["family", "affinity", "clusters"], sort=False)[["accuracy", "k_relative_error"]].mean()
    print(means.round(4).to_string())
    result = {"command": command_line("cluster_families", argv), "model": args.model or "shipped default",
              "model_fingerprint": model.fingerprint, "thresholds": thresholds, "threshold_source": source,
              "family_means": [{"family": f, "affinity": a, "clusters": c, **v}
                               for (f, a, c), v in means.to_dict("index").items()],
              "sets": rows}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
