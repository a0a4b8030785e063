"""The main job: train on background alphabets, index an unseen evaluation gallery, run the
pipelines on classes the model never saw, and compare with raw pixels.

On the embedded default it generates synthetic alphabets (no download); with ``data`` it uses
Omniglot (background for training, evaluation for the pipelines), read in place.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from oneshot.atomic import atomic_path
from oneshot.data.folders import read_gallery
from oneshot.data.omniglot import OmniglotSplit
from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.artifact import save_model
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.train import TrainConfig, train
from oneshot.pipelines.evaluation.evaluate import evaluate
from oneshot.pipelines.evaluation.validation import OneShotValidation
from oneshot.pipelines.jobs import build_index, embed_gallery
from oneshot.pipelines.jobs.train import calibrate_model_thresholds, training_sets, training_source
from oneshot.pipelines.reporting.report import write_report

SYNTHETIC_EVALUATION = dict(n_alphabets=5, characters_per_alphabet=20)


def demo_train_config(steps: int, seed: int) -> TrainConfig:
    """The demo's training recipe: a 4-block conv net, prototypical episodes, 28x28 input cropped to the ink."""
    return TrainConfig(objective="prototypical", backbone="conv4", dim=128, recipe=Recipe(size=28, crop_to_ink=True).to_dict(),
                       steps=steps, lr=2e-3, warmup_steps=min(100, steps // 10), classes_per_batch=40,
                       items_per_class=5, val_every=max(1, steps // 4), checkpoint_every=max(1, steps // 4),
                       seed=seed)


def raw_pixel_vectors(images: list[np.ndarray], recipe: Recipe) -> np.ndarray:
    """The baseline: preprocessed pixels, flattened -> float32 (N, size*size)."""
    return np.ascontiguousarray(recipe.batch(images).reshape(len(images), -1))


def demo_scores(embeddings: np.ndarray, table, metric: str, episodes: int, seed: int, n_way: int = 20) -> dict:
    """The demo's row: N-way one-shot (within alphabet), KNN (k=3) and KMeans per alphabet, flat."""
    result = evaluate(embeddings, table, metric, ("oneshot", "knn", "clustering"), n_way=n_way, n_episodes=episodes,
                      seed=seed)
    return {"oneshot_accuracy": result["oneshot"]["accuracy"], "oneshot_ci95": result["oneshot"]["ci95"],
            "knn_accuracy": result["knn"]["accuracy"], "ari": result["clustering"]["ari"],
            "nmi": result["clustering"]["nmi"]}


def run_demo(out: str | os.PathLike, data: str | os.PathLike | None = None, seed: int = 0,
             steps: int | None = None, episodes: int = 1000, show_progress: bool | None = None) -> dict:
    """Run the whole pipeline; returns the summary also written to ``out/summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    background, validation, _ = training_source(data, "background" if data else None, data is None, seed)
    if data is None:
        evaluation = make_alphabets(**SYNTHETIC_EVALUATION, seed=seed + 1, prefix="evaluation")
        gallery_dir = out / "evaluation"
        if gallery_dir.exists():
            shutil.rmtree(gallery_dir)
        evaluation.write(gallery_dir)
        gallery_source = gallery_dir
        steps = steps or 1000
    else:
        gallery_source = OmniglotSplit(data, "evaluation").location
        steps = steps or 800
    timings["data"] = time.perf_counter() - started

    config = demo_train_config(steps, seed)
    recipe = Recipe.from_dict(config.recipe)
    train_set, val_set = training_sets(background.table, background.read, recipe, validation, config.rotations,
                                       reflections=config.reflections)
    tick = time.perf_counter()
    result = train(config, train_set, OneShotValidation.from_config(val_set, config), out / "model", resume=False,
                   show_progress=show_progress, info={"command": "oneshot demo", "data": "omniglot" if data else "synthetic"})
    thresholds = calibrate_model_thresholds(result.model, val_set, None,
                                            f"the demo's validation alphabets {sorted(validation)}", seed)
    save_model(result.model, result.model_path, {**result.model.info, "thresholds": thresholds})
    timings["train"] = time.perf_counter() - tick

    tick = time.perf_counter()
    gallery = read_gallery(gallery_source)
    _remove(out / "gallery.parquet")  # an earlier demo's store: this run's model is a new one
    store = embed_gallery(gallery, out / "gallery.parquet", result.model, show_progress=show_progress)
    build_index(out / "gallery.parquet", out / "gallery.faiss")
    timings["embed_and_index"] = time.perf_counter() - tick

    tick = time.perf_counter()
    scores = {"embedder": demo_scores(store.embeddings, store.table, store.metadata["metric"], episodes, seed)}
    pixels = raw_pixel_vectors(gallery.read(list(gallery.table["path"])), recipe)
    scores["raw pixels"] = demo_scores(pixels, gallery.table, "cosine", episodes, seed)
    timings["pipelines"] = time.perf_counter() - tick

    tick = time.perf_counter()
    history = Path(result.model_path).parent / "history.csv"
    write_report(out / "gallery.parquet", out / "report.html", history=history if history.is_file() else None,
                 model=result.model_path, episodes=min(episodes, 300), seed=seed,
                 title="oneshot demo: alphabets the model never saw")
    timings["report"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started

    summary = {
        "data": str(data) if data else "synthetic",
        "seed": seed,
        "train_steps": steps,
        "validation_accuracy": result.best_accuracy,
        "gallery": {"images": len(gallery), "classes": int(gallery.table["label"].nunique()),
                    "groups": int(gallery.table["group"].nunique())},
        "scores": scores,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "files": {"model": str(result.model_path), "store": str(out / "gallery.parquet"),
                  "index": str(out / "gallery.faiss"), "report": str(out / "report.html")},
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """The demo's table: 20-way one-shot, KNN, ARI and NMI for the embedder and raw pixels."""
    lines = [f"{'':12s} {'20-way 1-shot':>14s} {'KNN (k=3)':>10s} {'ARI':>7s} {'NMI':>7s}"]
    for name, s in summary["scores"].items():
        lines.append(f"{name:12s} {s['oneshot_accuracy']:14.3f} {s['knn_accuracy']:10.3f} {s['ari']:7.3f} {s['nmi']:7.3f}")
    g = summary["gallery"]
    lines.append(f"gallery: {g['images']} images, {g['classes']} classes never seen in training, "
                 f"{g['groups']} alphabets; {summary['seconds']['total']:.0f} s in all")
    return "\n".join(lines)


def _remove(path: Path) -> None:
    """Remove what an earlier demo wrote at ``path`` (a store folder, or the single file older versions wrote)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
