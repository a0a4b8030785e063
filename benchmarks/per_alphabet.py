"""Where the evaluation alphabets' errors are (issue 19): 20-way within-alphabet 1-shot accuracy of
each evaluation alphabet on its own, for each model.

The benchmark's evaluation figure mixes the 20 alphabets; this splits it, so the next attempt at
the 92% target knows which scripts hold the errors. Each alphabet gets ``--episodes`` seeded
20-way episodes of its own characters (all 20 Omniglot alphabets have at least 20). Reported only:
nothing is chosen here.

Run from the repository root::

    python -m benchmarks.per_alphabet --data ../shared/data/omniglot --models handwriting-ensemble default \\
        --out benchmarks/results/per_alphabet.json
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks import command_line, model_benchmark_parser, write_result
from benchmarks.ensemble import ensemble_encoder, load_weights
from oneshot.data.folders import read_gallery
from oneshot.data.omniglot import omniglot_root, split_location
from oneshot.pipelines.evaluation.evaluate import oneshot_accuracy


def accuracy_by_group(vectors: np.ndarray, table: pd.DataFrame, n_way: int, episodes: int, seed: int) -> dict:
    """{group: {"accuracy", "ci95", "classes"}} of ``n_way``-way 1-shot episodes drawn within each
    group alone (groups with fewer than ``n_way`` classes are left out).

    Args:
        vectors: (N, D) float32, row i for ``table``'s row i; table: ``label`` and ``group`` columns.
    """
    found = {}
    for group, part in table.groupby("group", sort=True):
        classes = int(part["label"].nunique())
        if classes < n_way:
            continue
        rows = part.index.to_numpy()
        scored = oneshot_accuracy(vectors[rows], part.reset_index(drop=True), "cosine", n_way, 1, episodes, True, seed)
        found[str(group)] = {"accuracy": scored["accuracy"], "ci95": scored["ci95"], "classes": classes}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = model_benchmark_parser(__doc__, "model files or shipped model names (cosine models)",
                                    "benchmarks/results/per_alphabet.json")
    parser.set_defaults(episodes=300)
    args = parser.parse_args(argv)
    gallery = read_gallery(split_location(omniglot_root(args.data), "evaluation"))
    table = gallery.table.reset_index(drop=True)
    images = gallery.read(list(table["path"]))
    result = {"command": command_line("per_alphabet", argv), "episodes_per_alphabet": args.episodes,
              "seed": args.seed, "models": {}}
    for name in args.models:
        model = load_weights(name)
        groups = accuracy_by_group(ensemble_encoder([model])(images), table, 20, args.episodes, args.seed)
        result["models"][name] = {"fingerprint": model.fingerprint, "alphabets": groups}
        for group, row in sorted(groups.items(), key=lambda item: item[1]["accuracy"]):
            print(f"{name}  {group:32s} {row['classes']:3d} classes  {row['accuracy']:.3f} +-{row['ci95']:.3f}")
    write_result(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
