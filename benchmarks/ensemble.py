"""Seeds and ensembles on Omniglot (issue 19): each model's figures, their mean, and the ensemble's.

For each model file (e.g. one recipe trained with several seeds: ``seed_mean`` gives each figure's
mean and spread over them), and for the ensemble of all of them (every model's unit vector concatenated
and divided by sqrt(M), so its cosine is the mean of the models' cosines; M times the encoding
cost): 20-way within-alphabet 1-shot accuracy on the background *validation* alphabets (where a
choice would be made), then Lake's 20 official runs and random 20-way within-alphabet episodes of
the evaluation alphabets (reported only).

Run from the repository root::

    python -m benchmarks.ensemble --data ../shared/data/omniglot --models embedder/weights/default.safetensors \\
        runs/seed1/model.safetensors --out benchmarks/results/ensemble.json
"""
from __future__ import annotations

import numpy as np

from benchmarks import command_line, model_benchmark_parser, validation_alphabets, write_result
from oneshot.data.folders import read_gallery
from oneshot.data.lake_runs import read_lake_runs
from oneshot.data.omniglot import omniglot_root, split_location
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.embedder.ensemble import ensemble_models
from oneshot.embedder.train import TrainConfig, build_model, load_checkpoint
from oneshot.pipelines.evaluation.evaluate import lake_run_errors, oneshot_accuracy
from oneshot.pipelines.evaluation.metrics import confidence_interval95


def load_weights(path: str):
    """A model file, or a training ``checkpoint.pt`` read as its *raw* weights at the last step
    (with weight averaging, the kept model is the average: this gives the pair to compare)."""
    if not path.endswith(".pt"):
        return load_model(path)
    saved = load_checkpoint(path)
    model = build_model(TrainConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["model"])
    model.info = {"seed": saved["config"]["seed"], "command": f"raw weights at step {saved['state']['step']} of {path}"}
    return model.eval()


def ensemble_encoder(models: list):
    """``images -> float32 (N, sum of D)``: each model's unit vectors side by side, over sqrt(M)
    (one model: its own vectors), as the model file ``oneshot ensemble`` writes encodes them."""
    model = models[0] if len(models) == 1 else ensemble_models(models)
    return lambda images: encode(model, images, show_progress=False)


def figures(encode_images, data, episodes: int, seed: int) -> dict:
    split, table = validation_alphabets(data)
    validation = oneshot_accuracy(encode_images(split.read(list(table["path"]))), table, "cosine", 20, 1, episodes,
                                  True, seed)
    runs = lake_run_errors(read_lake_runs(data), encode_images, "cosine")
    rates = runs["error_rate"].to_numpy()
    gallery = read_gallery(split_location(data, "evaluation"))
    evaluation = oneshot_accuracy(encode_images(gallery.read(list(gallery.table["path"]))), gallery.table, "cosine",
                                  20, 1, episodes, True, seed)
    return {"validation_20way_within_alphabet": validation["accuracy"],
            "lake_runs_error": float(rates.mean()), "lake_runs_ci95": confidence_interval95(rates),
            "lake_runs_errors": int(runs["errors"].sum()),
            "evaluation_20way_within_alphabet": evaluation["accuracy"]}


def seed_mean(per_model: list[dict]) -> dict:
    """Each figure's mean, sample standard deviation and values over the models (one recipe's seeds)."""
    names = ("validation_20way_within_alphabet", "lake_runs_error", "evaluation_20way_within_alphabet")
    return {name: {"mean": float(np.mean([m[name] for m in per_model])),
                   "sd": float(np.std([m[name] for m in per_model], ddof=1)),
                   "values": [m[name] for m in per_model]} for name in names}


def provenance(model) -> dict:
    """Where a model came from, as its file records it: fingerprint (which model a path meant, should the
    file at that path change, as the shipped default's does), seed, command and training seconds."""
    return {"fingerprint": getattr(model, "fingerprint", None), "train_seed": model.info.get("seed"),
            "train_command": model.info.get("command"), "train_seconds": model.info.get("train_seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = model_benchmark_parser(__doc__, "model files (cosine models), or checkpoint.pt files for a run's raw "
                                    "last weights", "benchmarks/results/ensemble.json")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-ensemble", action="store_true", help="each model and their mean only")
    group.add_argument("--ensemble-only", action="store_true",
                       help="the ensemble's figures only (the models' own are in another run's JSON)")
    args = parser.parse_args(argv)
    data = omniglot_root(args.data)
    models = [load_weights(path) for path in args.models]
    result = {"command": command_line("ensemble", argv), "models": {},
              "model_files": {path: provenance(model) for path, model in zip(args.models, models)}}
    for path, model in zip(args.models, [] if args.ensemble_only else models):
        found = figures(ensemble_encoder([model]), data, args.episodes, args.seed)
        result["models"][path] = {**found, **provenance(model)}
        print(path, found, flush=True)
    if len(models) > 1:
        if not args.ensemble_only:
            result["seed_mean"] = seed_mean(list(result["models"].values()))
            print("mean over models", result["seed_mean"], flush=True)
        if not args.no_ensemble:
            result["ensemble"] = figures(ensemble_encoder(models), data, args.episodes, args.seed)
            print("ensemble", result["ensemble"], flush=True)
    write_result(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
