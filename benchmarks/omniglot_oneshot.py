"""Benchmark: Lake's 20 official one-shot runs, plus random 20-way and 5-way episodes.

Trains a model with ``oneshot train``'s code (or loads one) on background alphabets only, then
reports on the evaluation alphabets: error per official run, mean error with a 95% interval,
training wall time, and within-alphabet 20-way / 5-way one-shot accuracy over random episodes of
all 20 evaluation alphabets. Prints a table and writes JSON.

Run from the repository root::

    python -m benchmarks.omniglot_oneshot --data ../shared/data/omniglot --model embedder/weights/default.safetensors
    python -m benchmarks.omniglot_oneshot --data ../shared/data/omniglot --train-config benchmarks/configs/full.json \
        --split background --run-dir runs/bench-full --out runs/bench-full.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import write_result
from oneshot.data.folders import read_gallery
from oneshot.data.omniglot import omniglot_root, split_location
from oneshot.embedder.artifact import load_model
from oneshot.pipelines.evaluation.evaluate import oneshot_accuracy
from oneshot.pipelines.evaluation.metrics import confidence_interval95
from oneshot.pipelines.jobs import encode_gallery
from oneshot.pipelines.jobs.train import lake_errors, train_from_cli


def evaluate_model(model, data: Path, tta: bool, episodes: int, seed: int) -> dict:
    """Lake's runs and random within-alphabet episodes on the evaluation split."""
    runs = lake_errors(data, model, tta)
    gallery = read_gallery(split_location(data, "evaluation"))
    embeddings = encode_gallery(model, gallery, tta=tta)
    episodes_20 = oneshot_accuracy(embeddings, gallery.table, model.metric, 20, 1, episodes, True, seed)
    episodes_5 = oneshot_accuracy(embeddings, gallery.table, model.metric, 5, 1, episodes, True, seed)
    rates = runs["error_rate"].to_numpy()
    return {
        "tta": tta,
        "lake_runs": {"mean_error": float(rates.mean()), "ci95": confidence_interval95(rates),
                      "errors": int(runs["errors"].sum()), "trials": int(runs["trials"].sum()),
                      "per_run": dict(zip(runs["run"], map(float, rates)))},
        "evaluation_20way_within_alphabet": episodes_20,
        "evaluation_5way_within_alphabet": episodes_5,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR)")
    parser.add_argument("--model", default=None, help="evaluate this model file (default: train one, or the shipped model)")
    parser.add_argument("--train-config", default=None, help="JSON training options: train a model first")
    parser.add_argument("--split", default="background", choices=["background", "small1", "small2"])
    parser.add_argument("--run-dir", default="runs/benchmark", help="training folder (with --train-config)")
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    data = omniglot_root(args.data)
    result = {"data": str(data), "split": args.split}
    if args.train_config:
        options = json.loads(Path(args.train_config).read_text())
        command = f"python -m benchmarks.omniglot_oneshot --train-config {args.train_config} --split {args.split}"
        trained = train_from_cli(args.run_dir, options, data=str(data), split=args.split, command=command)
        model = trained.model
        result.update(model=str(trained.model_path), train_seconds=round(trained.seconds, 1),
                      validation_accuracy=trained.best_accuracy, best_step=trained.best_step, train_config=options)
    else:
        model = load_model(args.model)
        result.update(model=str(args.model or "shipped default"), train_seconds=model.info.get("train_seconds"),
                      validation_accuracy=model.info.get("val_accuracy"), train_command=model.info.get("command"))
    result["model_fingerprint"] = getattr(model, "fingerprint", None)  # which model a path such as the default's meant
    started = time.perf_counter()
    result["results"] = [evaluate_model(model, data, tta, args.episodes, args.seed) for tta in (False, True)]
    result["eval_seconds"] = round(time.perf_counter() - started, 1)
    result["cpu_threads"] = os.cpu_count()

    print(f"model: {result['model']}  (training: {result.get('train_seconds')} s, split {args.split})")
    print(f"{'':8s} {'Lake runs error':>18s} {'20-way acc':>11s} {'5-way acc':>10s}")
    for r in result["results"]:
        lake = r["lake_runs"]
        print(f"{'TTA' if r['tta'] else 'plain':8s} {lake['mean_error']:10.4f} +- {lake['ci95']:.4f}"
              f" {r['evaluation_20way_within_alphabet']['accuracy']:11.4f} {r['evaluation_5way_within_alphabet']['accuracy']:10.4f}")
    print("per run (plain):", " ".join(f"{v:.2f}" for v in result["results"][0]["lake_runs"]["per_run"].values()))
    write_result(result, args.out)
    if args.out:
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
