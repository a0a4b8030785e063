"""The MNIST protocols of the siamese write-ups, with this product's defaults.

1. ``pairs``: train on the MNIST training split (validation: 20% of its images, which also
   calibrate the verification threshold), then report balanced pair accuracy at that threshold,
   ROC AUC and EER on pairs of the test split, beside raw pixels and the shipped Omniglot model
   zero-shot on the same pairs (each at a threshold calibrated on training-split pairs).
2. ``transfer``: train on digits 0-4 of the training split only, with no flags (validation on
   whole held-out digits among 0-4; the run starts from the shipped handwriting model, as every
   handwriting gallery does by default), then 5-way one-shot on digits 5-9 of the test split,
   beside the shipped model zero-shot and raw pixels on the same episodes. ``transfer_scratch``
   does the same from scratch (``--init none``).

Run from the repository root (under ``nice``; the machine may be shared)::

    python -m benchmarks.mnist --data ../shared/data/mnist --protocols pairs,transfer,transfer_scratch --out benchmarks/results/mnist.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import command_line, write_result
from oneshot.data.source import open_source, read_all
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.embedder.preprocess import Recipe
from oneshot.pipelines.evaluation.evaluate import oneshot_accuracy
from oneshot.pipelines.evaluation.verification import (
    calibrate_threshold,
    pair_scores,
    sample_pairs,
    verification_report,
)
from oneshot.pipelines.jobs.train import GALLERY_DEFAULTS, train_from_cli

RAW_RECIPE = Recipe(size=28, crop_to_ink=True)


class Subset:
    """Rows of an image source (an image source itself)."""

    def __init__(self, source, keep: np.ndarray):
        self.source, self.table = source, source.table[keep].reset_index(drop=True)
        self.location = f"{getattr(source, 'location', 'source')} (subset)"

    def read(self, paths):
        return self.source.read(paths)


def _vectors(model, images) -> tuple[np.ndarray, str]:
    if model is None:
        return np.ascontiguousarray(RAW_RECIPE.batch(images).reshape(len(images), -1)), "cosine"
    return encode(model, images, batch_size=512, show_progress=False), model.metric


def pairs_protocol(data: str, out: Path, options: dict, n_pairs: int, seed: int) -> dict:
    started = time.perf_counter()
    result = train_from_cli(out / "mnist_pairs", options, data=data, val_split="images", resume=False,
                            command="python -m benchmarks.mnist (pairs)")
    train_seconds = time.perf_counter() - started
    test = open_source(data, split="test")
    train = open_source(data, split="train")
    test_images, labels = read_all(test), test.table["label"].to_numpy()
    a, b, same = sample_pairs(labels, n_pairs, seed)
    rng = np.random.default_rng(seed + 1)  # calibration pairs for the baselines: training split only
    cal_rows = rng.choice(len(train.table), 5000, replace=False)
    cal_images, cal_labels = train.read(list(train.table["path"].to_numpy()[cal_rows])), train.table["label"].to_numpy()[cal_rows]
    ca, cb, csame = sample_pairs(cal_labels, n_pairs, seed + 2)
    rows = {}
    for name, model in (("trained", result.model), ("shipped_zero_shot", load_model()), ("raw_pixels", None)):
        vectors, metric = _vectors(model, test_images)
        if name == "trained":
            threshold = model.info["thresholds"]["verification"]["value"]
            where = "the model's own threshold (its validation images of the training split)"
        else:
            cal_vectors, _ = _vectors(model, cal_images)
            threshold = calibrate_threshold(pair_scores(cal_vectors, ca, cb, metric), csame)
            where = "5000 training-split images"
        rows[name] = {**verification_report(pair_scores(vectors, a, b, metric), same, threshold),
                      "threshold_calibrated_on": where}
    return {"train_seconds": round(train_seconds, 1), "steps_run": result.model.info.get("steps_run"),
            "val_accuracy": result.best_accuracy, "val_way": result.model.info["train_config"]["val_way"],
            "test_pairs": n_pairs, **rows}


def transfer_protocol(data: str, out: Path, options: dict, episodes: int, seed: int, init: str | None = None) -> dict:
    """Train on digits 0-4 as a user with no flags would (validation: whole held-out digits), or
    with ``init="none"`` from scratch; then 5-way one-shot on test digits 5-9."""
    train = open_source(data, split="train")
    seen = train.table["label"].isin(list("01234")).to_numpy()
    started = time.perf_counter()
    name = "mnist_transfer" + (f"_{init}" if init else "")
    result = train_from_cli(out / name, options, data=Subset(train, seen), init=init, resume=False,
                            command=f"python -m benchmarks.mnist ({name})")
    train_seconds = time.perf_counter() - started
    test = open_source(data, split="test")
    new = test.table["label"].isin(list("56789")).to_numpy()
    table = test.table[new].reset_index(drop=True)
    images = test.read(list(table["path"]))
    rows = {}
    trained = "trained_on_0_4_from_scratch" if init == "none" else "trained_on_0_4"
    for name, model in ((trained, result.model), ("shipped_zero_shot", load_model()), ("raw_pixels", None)):
        vectors, metric = _vectors(model, images)
        rows[name] = oneshot_accuracy(vectors, table, metric, n_way=5, k_shot=1, n_episodes=episodes,
                                      within_group=False, seed=seed)
    return {"train_seconds": round(train_seconds, 1), "steps_run": result.model.info.get("steps_run"),
            "started_from": result.model.info.get("init_choice"), "validation": result.model.info.get("validation"),
            "kept_step": result.model.info.get("step"), "test_digits": "5-9 of the test split", **rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="folder of the MNIST IDX files")
    parser.add_argument("--protocols", default="pairs,transfer")
    parser.add_argument("--max-minutes", type=float, default=GALLERY_DEFAULTS["max_seconds"] / 60,
                        help="training time cap of each protocol (default: the product's)")
    parser.add_argument("--steps", type=int, default=GALLERY_DEFAULTS["steps"], help="default: the product's")
    parser.add_argument("--pairs", type=int, default=10000, help="test pairs (balanced)")
    parser.add_argument("--episodes", type=int, default=2000, help="5-way one-shot episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/benchmarks", help="folder for the trained models")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    options = {"steps": args.steps, "max_seconds": 60.0 * args.max_minutes, "seed": args.seed}
    runs = Path(args.runs)
    result = {"command": command_line("mnist", argv),
              "shipped_default_fingerprint": load_model().fingerprint,  # the start of --init default, the zero-shot model
              "machine": f"{os.cpu_count()} cores, load average before the run {os.getloadavg()[0]:.2f}; a time cap can stop training early"}
    protocols = args.protocols.split(",")
    if "pairs" in protocols:
        result["pairs"] = pairs_protocol(args.data, runs, {**options, "val_episodes": 200}, args.pairs, args.seed)
        print(json.dumps(result["pairs"], indent=2), flush=True)
    if "transfer" in protocols:
        result["transfer"] = transfer_protocol(args.data, runs, options, args.episodes, args.seed)
        print(json.dumps(result["transfer"], indent=2), flush=True)
    if "transfer_scratch" in protocols:
        result["transfer_scratch"] = transfer_protocol(args.data, runs, options, args.episodes, args.seed, init="none")
        print(json.dumps(result["transfer_scratch"], indent=2), flush=True)
    if args.out:
        if Path(args.out).exists():  # keep the other protocols' figures (each records its command)
            previous = json.loads(Path(args.out).read_text())
            for key in ("pairs", "transfer", "transfer_scratch"):
                if key in previous and key not in result:
                    result[key] = {**previous[key], "command": previous.get("command")}
        write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
