"""How far ensembling goes (issue 19): members chosen one at a time on validation, evaluation reported.

Greedy forward selection over a pool of trained models: start from the model with the best
20-way within-alphabet 1-shot accuracy on the background *validation* alphabets, then add, one at
a time, the model that raises the ensemble's validation accuracy most (an ensemble's vector is its
members' unit vectors side by side over sqrt(M), as ``oneshot ensemble`` writes it). The chosen
size is the last step that gained ``--min-gain`` or more on validation. Random 20-way
within-alphabet episodes of the evaluation alphabets are reported at every size, never used to
choose. Each model is encoded once; the cost of an ensemble is the sum of its members'.

Run from the repository root::

    python -m benchmarks.ensemble_selection --data ../shared/data/omniglot \\
        --models embedder/weights/default.safetensors runs/a/model.safetensors runs/b/model.safetensors \\
        --out benchmarks/results/ensemble_selection.json
"""
from __future__ import annotations

import time
from itertools import pairwise

import numpy as np

from benchmarks import command_line, model_benchmark_parser, validation_alphabets, write_result
from benchmarks.ensemble import ensemble_encoder, load_weights, provenance
from oneshot.data.folders import read_gallery
from oneshot.data.omniglot import omniglot_root, split_location
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.evaluate import oneshot_episodes
from oneshot.pipelines.evaluation.prototypes import evaluate_episodes

COSINE = get_metric("cosine")


def joined(vectors: list[np.ndarray]) -> np.ndarray:
    """Members' unit vectors, each (N, D_m), side by side over sqrt(M): (N, sum of D_m) float32."""
    return np.ascontiguousarray(np.hstack(vectors) / np.sqrt(len(vectors)), dtype=np.float32)


def greedy_selection(score, names: list[str], max_members: int) -> list[dict]:
    """Forward selection: ``score(list of names) -> float``; returns each step's
    ``{"size", "added", "members", "score"}``, best first member first."""
    chosen: list[str] = []
    path = []
    for size in range(1, min(max_members, len(names)) + 1):
        scored = {name: score(chosen + [name]) for name in names if name not in chosen}
        added = max(scored, key=scored.get)  # ties: the first in the pool's order
        chosen.append(added)
        path.append({"size": size, "added": added, "members": list(chosen), "score": scored[added]})
    return path


def chosen_size(path: list[dict], min_gain: float) -> int:
    """The last size whose step gained at least ``min_gain`` over the one before (1 if none did)."""
    size = 1
    for before, step in pairwise(path):
        if step["score"] - before["score"] >= min_gain:
            size = step["size"]
    return size


def main(argv: list[str] | None = None) -> int:
    parser = model_benchmark_parser(__doc__, "the pool: model files (cosine models)",
                                    "benchmarks/results/ensemble_selection.json")
    parser.add_argument("--max-members", type=int, default=10)
    parser.add_argument("--min-gain", type=float, default=0.001,
                        help="validation accuracy a step must add to count (0.001 = 0.1 points)")
    args = parser.parse_args(argv)
    data = omniglot_root(args.data)
    split, validation_table = validation_alphabets(data)
    gallery = read_gallery(split_location(data, "evaluation"))
    validation_images = split.read(list(validation_table["path"]))
    evaluation_images = gallery.read(list(gallery.table["path"]))
    # The same seeded episodes as benchmarks.ensemble's oneshot_accuracy, sampled once for every score here.
    episodes = {which: oneshot_episodes(table, n_way=20, k_shot=1, n_episodes=args.episodes, within_group=True,
                                        seed=args.seed)
                for which, table in (("validation", validation_table), ("evaluation", gallery.table))}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    files = {}
    for path in args.models:
        started = time.perf_counter()
        model = load_weights(path)
        encode_images = ensemble_encoder([model])
        vectors[path] = {"validation": COSINE.prepare(encode_images(validation_images)),
                         "evaluation": COSINE.prepare(encode_images(evaluation_images))}
        files[path] = provenance(model)
        print(f"encoded {path} in {time.perf_counter() - started:.0f} s", flush=True)

    def accuracy(members: list[str], which: str) -> float:
        return evaluate_episodes(joined([vectors[name][which] for name in members]), episodes[which], COSINE).accuracy

    single = {path: {"validation_20way_within_alphabet": accuracy([path], "validation"),
                     "evaluation_20way_within_alphabet": accuracy([path], "evaluation")} for path in args.models}
    path = greedy_selection(lambda members: accuracy(members, "validation"), list(args.models), args.max_members)
    size = chosen_size(path, args.min_gain)
    for step in path:
        step["validation_20way_within_alphabet"] = step.pop("score")
        step["evaluation_20way_within_alphabet"] = accuracy(step["members"], "evaluation")
        print({key: step[key] for key in ("size", "added", "validation_20way_within_alphabet",
                                          "evaluation_20way_within_alphabet")}, flush=True)
    result = {"command": command_line("ensemble_selection", argv), "model_files": files, "models": single,
              "greedy": path, "chosen_size": size, "chosen": path[size - 1],
              "rule": f"the last step gaining >= {args.min_gain} validation accuracy; evaluation reported only"}
    print("chosen", size, path[size - 1]["members"], flush=True)
    write_result(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
