"""A map matcher trained with the embedder, as a second score beside the global vector (issue 19).

For each model trained with ``match_dim`` (see :mod:`oneshot.embedder.matching`), and for models
scored together (``--ensembles A,B``: the sum of each member's score; members without a matcher give
their cosine), on 20-way within-alphabet 1-shot episodes (the episodes of ``benchmarks.ensemble``:
same seed, same draws):

- ``global``: the global vectors' cosine alone (the FAISS path; equals ``benchmarks.ensemble``'s figure);
- ``match``: the map match distance alone;
- ``combined``: the score each model was trained with (its cosine minus its learned match weight times
  the match distance, :meth:`MapMatcher.similarity`): nothing is tuned after training.

On the background *validation* alphabets (where a choice would be made) also the paired gain of
``combined`` over ``global`` with its 95% interval, and, as a diagnostic only, the match weighted
by 0 to 4 times its trained scale, and the combined score's accuracy per alphabet. ``--validation
wide`` scores the eight alphabets of :data:`benchmarks.WIDE_VALIDATION_ALPHABETS` instead of the
four, for models trained without all eight. Lake's 20 official runs and the evaluation alphabets are
reported only.

Run from the repository root::

    python -m benchmarks.map_matching --data ../shared/data/omniglot --models runs/match_s0/model.safetensors \\
        --ensembles runs/match_s0/model.safetensors,runs/block_match_s0/model.safetensors \\
        --out benchmarks/results/map_matching.json
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmarks import command_line, model_benchmark_parser, validation_alphabets, write_result
from benchmarks.ensemble import provenance
from oneshot.data.folders import read_gallery
from oneshot.data.lake_runs import read_lake_runs
from oneshot.data.omniglot import omniglot_root, split_location
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode, encode_with_local
from oneshot.embedder.model import Embedder
from oneshot.pipelines.evaluation.evaluate import oneshot_episodes
from oneshot.pipelines.evaluation.metrics import confidence_interval95

MATCH_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class Encoded:
    """One model's vectors (N, D) and, with a matcher, local features (N, L, d) of a set of images."""

    model: Embedder
    vectors: np.ndarray
    local: np.ndarray | None


def encode_images(models: list[Embedder], images: list) -> list[Encoded]:
    found = []
    for model in models:
        if model.matcher is None:
            found.append(Encoded(model, encode(model, images), None))
        else:
            found.append(Encoded(model, *encode_with_local(model, images)))
    return found


@torch.inference_mode()
def episode_scores(members: list[Encoded], queries: np.ndarray, supports: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of one episode -> similarities (Q, S), higher closer, summed over the members:
    ``global`` (cosines), ``penalty`` (each matcher's trained weight s_m / (2 s_g) times its match distance;
    ``global - penalty`` is the trained score, :meth:`MapMatcher.similarity`) and ``match`` (minus the
    match distances alone)."""
    cosine, penalty, match = (np.zeros((len(queries), len(supports))) for _ in range(3))
    for member in members:
        cosine = cosine + member.vectors[queries] @ member.vectors[supports].T
        if member.local is not None:
            matcher = member.model.matcher
            distance = matcher.distances(torch.from_numpy(member.local[queries]),
                                         torch.from_numpy(member.local[supports])).double().numpy()
            penalty, match = penalty + matcher.match_weight * distance, match - distance
    return {"global": cosine, "penalty": penalty, "match": match}


def episode_correct(members: list[Encoded], episodes: list) -> dict[str, np.ndarray]:
    """Per query (episodes x 20) whether it was answered right, by each score (bool arrays): ``global``,
    ``match``, ``combined`` (the trained score) and the penalty weighted by each of ``MATCH_WEIGHTS``."""
    found: dict[str, list] = {"global": [], "match": [], "combined": [],
                              **{f"weight_{w:g}": [] for w in MATCH_WEIGHTS}}
    for episode in episodes:
        scores = episode_scores(members, episode.query, episode.support[:, 0])
        target = episode.query_target
        found["global"].append(scores["global"].argmax(1) == target)
        found["match"].append(scores["match"].argmax(1) == target)
        found["combined"].append((scores["global"] - scores["penalty"]).argmax(1) == target)
        for weight in MATCH_WEIGHTS:
            found[f"weight_{weight:g}"].append((scores["global"] - weight * scores["penalty"]).argmax(1) == target)
    return {name: np.concatenate(values) for name, values in found.items()}


def paired_gain(better: np.ndarray, base: np.ndarray) -> dict:
    """Mean per-query gain (fraction) with a normal 95% interval."""
    difference = better.astype(float) - base.astype(float)
    return {"gain": float(difference.mean()), "ci95": float(1.96 * difference.std(ddof=1) / np.sqrt(len(difference)))}


def lake_figures(models: list[Embedder], runs) -> dict:
    """Errors on Lake's runs by the global, match and combined scores."""
    errors = {"global": [], "match": [], "combined": []}
    for run in runs:
        members = encode_images(models, run.training_images() + run.test_images())
        n = len(run.training)
        scores = episode_scores(members, np.arange(n, n + len(run.test)), np.arange(n))
        for name, score in (("global", scores["global"]), ("match", scores["match"]),
                            ("combined", scores["global"] - scores["penalty"])):
            errors[name].append(float((score.argmax(1) != run.answers).mean()))
    return {name: {"error": float(np.mean(rates)), "ci95": confidence_interval95(np.array(rates)),
                   "errors": round(sum(rates) * len(runs[0].test))} for name, rates in errors.items()}


def by_alphabet(correct: np.ndarray, episodes: list, table) -> dict[str, float]:
    """Per-query correctness (episodes x 20, episode order) -> accuracy per alphabet of the episodes."""
    groups = np.repeat([table["group"].iat[int(episode.query[0])] for episode in episodes], len(episodes[0].query))
    return {str(group): float(correct[groups == group].mean()) for group in sorted(set(groups))}


def figures(models: list[Embedder], data, episodes: int, seed: int, validation_only: bool = False,
            validation_split: str = "background") -> dict:
    """The figures of ``models`` scored together (one model: alone), validation on ``validation_split``."""
    split, table = validation_alphabets(data, validation_split)
    members = encode_images(models, split.read(list(table["path"])))
    drawn = oneshot_episodes(table, 20, 1, episodes, True, seed)
    validation = episode_correct(members, drawn)
    result = {"matchers": [None if m.matcher is None else
                           {"scale_global": float(m.matcher.log_scale_global.detach().exp()),
                            "scale_match": float(m.matcher.log_scale_match.detach().exp()),
                            "ridge": float(m.matcher.log_ridge.detach().exp())} for m in models],
              "validation_split": validation_split,
              "validation_20way_within_alphabet": {name: float(v.mean()) for name, v in validation.items()},
              "validation_combined_by_alphabet": by_alphabet(validation["combined"], drawn, table),
              "validation_paired_gain_combined_over_global": paired_gain(validation["combined"], validation["global"])}
    print("validation", result, flush=True)
    if validation_only:
        return result
    result["lake_runs"] = lake_figures(models, read_lake_runs(data))
    gallery = read_gallery(split_location(data, "evaluation"))
    members = encode_images(models, gallery.read(list(gallery.table["path"])))
    evaluation = episode_correct(members, oneshot_episodes(gallery.table, 20, 1, episodes, True, seed))
    result["evaluation_20way_within_alphabet"] = {name: float(evaluation[name].mean())
                                                  for name in ("global", "match", "combined")}
    return result


def group_mean(groups: list[dict]) -> dict:
    """Each headline figure's mean and values over several models or ensembles (one recipe's seeds)."""
    picks = {"validation_combined": lambda g: g["validation_20way_within_alphabet"]["combined"],
             "validation_global": lambda g: g["validation_20way_within_alphabet"]["global"]}
    if "lake_runs" in groups[0]:
        picks.update({"lake_runs_error_combined": lambda g: g["lake_runs"]["combined"]["error"],
                      "lake_runs_error_global": lambda g: g["lake_runs"]["global"]["error"],
                      "evaluation_combined": lambda g: g["evaluation_20way_within_alphabet"]["combined"],
                      "evaluation_global": lambda g: g["evaluation_20way_within_alphabet"]["global"]})
    return {name: {"mean": float(np.mean([pick(g) for g in groups])), "values": [pick(g) for g in groups]}
            for name, pick in picks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = model_benchmark_parser(__doc__, "model files (with or without a map matcher), each scored alone",
                                    "benchmarks/results/map_matching.json")
    parser.add_argument("--ensembles", nargs="+", default=[], metavar="A,B",
                        help="comma-separated model files scored together (the sum of each member's trained "
                             "score), after --models alone")
    parser.add_argument("--validation-only", action="store_true",
                        help="the validation alphabets only (before a decision; the reported figures after it)")
    parser.add_argument("--validation", choices=["background", "wide"], default="background",
                        help="validation split: the 4 alphabets `oneshot train` holds out, or the 8 of "
                             "benchmarks.WIDE_VALIDATION_ALPHABETS (for models trained without them)")
    args = parser.parse_args(argv)
    data = omniglot_root(args.data)
    result = {"command": command_line("map_matching", argv), "episodes": args.episodes, "seed": args.seed,
              "models": {}, "ensembles": {}}
    for path in args.models:
        model = load_model(path)
        result["models"][path] = {**figures([model], data, args.episodes, args.seed, args.validation_only, args.validation),
                                  **provenance(model)}
        print(path, result["models"][path], flush=True)
    for group in args.ensembles:
        models = [load_model(path) for path in group.split(",")]
        result["ensembles"][group] = {**figures(models, data, args.episodes, args.seed, args.validation_only, args.validation),
                                      "members": [provenance(m) for m in models]}
        print(group, result["ensembles"][group], flush=True)
    for kind in ("models", "ensembles"):
        if len(result[kind]) > 1:
            result[f"{kind}_mean"] = group_mean(list(result[kind].values()))
            print(f"mean over {kind}", result[f"{kind}_mean"], flush=True)
    write_result(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
