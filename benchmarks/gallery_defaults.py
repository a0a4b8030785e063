"""No-flag training on generated galleries: is the default run clearly better than raw pixels and
the shipped Omniglot model zero-shot, on classes it never saw?

For each family (handwritten characters, colour photo-like scenes, signatures with forgeries) a
training gallery and a test gallery of *other* classes are generated; ``oneshot train --data
<train gallery> --out <run>`` runs with no flags (its recipe inferred, its defaults, its time cap);
then the test gallery is embedded with the trained model and with the shipped model, and ``oneshot
eval`` scores both (the trained store's eval carries the raw-pixel baseline on the same episodes).

Run from the repository root (under ``nice``; the machine may be shared)::

    python -m benchmarks.gallery_defaults --out benchmarks/results/gallery_defaults.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import command_line, write_result
from oneshot.data.synthetic import make_alphabets
from oneshot.data.synthetic_photos import make_photo_gallery
from oneshot.data.synthetic_signatures import make_signature_gallery
from oneshot.pipelines.jobs import embed_gallery, evaluate_store
from oneshot.pipelines.jobs.train import train_from_cli

FAMILIES = ("handwriting", "colour_photos", "signatures")


def _make(family: str, folder: Path, test: bool, seed: int) -> Path:
    if folder.exists():
        return folder
    if family == "handwriting":  # 60 training classes (3 alphabets x 20), 40 test classes, 20 images each
        make_alphabets(2 if test else 3, 20, drawers=20, seed=seed, prefix="test" if test else "train").write(folder)
    elif family == "colour_photos":  # 60 training classes, 40 test classes, 20 images each
        make_photo_gallery(folder, 40 if test else 60, 20, seed=seed + (1000 if test else 0))
    else:  # 40 training writers, 20 test writers, 10 genuine + 5 forged each
        make_signature_gallery(folder, 20 if test else 40, 10, 5, seed=seed + (1000 if test else 0))
    return folder


def _brief(report: dict) -> dict:
    keep = {"oneshot": "accuracy", "knn": "accuracy", "verification": "eer", "forgery": "eer"}
    return {f"{task}_{field}": round(report[task][field], 4) for task, field in keep.items() if task in report}


def run_family(family: str, root: Path, episodes: int, seed: int, n_way: int) -> dict:
    train_dir, test_dir = _make(family, root / family / "train", False, seed), _make(family, root / family / "test", True, seed)
    run = root / family / "run"
    started = time.perf_counter()
    recipe_line = []
    result = train_from_cli(run, {}, data=str(train_dir), resume=False, on_recipe=recipe_line.append,
                            command=f"oneshot train --data {train_dir} --out {run}")
    seconds = time.perf_counter() - started
    scores = {}
    for name, model in (("trained", result.model), ("shipped_zero_shot", None)):
        store = embed_gallery(test_dir, root / family / f"test_{name}.parquet", model)
        report = evaluate_store(store, n_way=n_way, episodes=episodes, seed=seed, baseline=name == "trained")
        scores[name] = _brief(report)
        if name == "trained":
            scores["raw_pixels"] = _brief(report["raw_pixels"])
            scores["n_way"] = report["oneshot"]["n_way"]
    return {"recipe": recipe_line[0] if recipe_line else None, "train_wall_seconds": round(seconds, 1),
            "steps_run": result.model.info.get("steps_run"), "kept_step": result.best_step,
            "started_from": result.model.info.get("init"), "val_accuracy": result.best_accuracy, **scores}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--root", default="runs/benchmarks/galleries", help="where galleries and runs are written")
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from oneshot.embedder.artifact import load_model

    result = {"command": command_line("gallery_defaults", argv),
              "shipped_default_fingerprint": load_model().fingerprint,  # the trained runs' start, the zero-shot model
              "machine": f"{os.cpu_count()} cores, load average before the run {os.getloadavg()[0]:.2f}"}
    for family in args.families.split(","):
        result[family] = run_family(family, Path(args.root), args.episodes, args.seed, args.way)
        print(json.dumps({family: result[family]}, indent=2), flush=True)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
