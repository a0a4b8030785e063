"""Colour object photos: what each starting point and ``oneshot train --data`` (no flags) give on
objects that no training or selection step saw.

Data: COIL-100 (Nene, Nayar and Murase 1996; 128x128 colour photos of objects on a turntable, 72
views 5 degrees apart), fetched to a scratch folder outside the repo (README, "Faces", names the
commit), laid out ``<set>/objN/<view>.png``. ``split`` hard-links the photos of objects 1-50 into
``train`` and 51-100 into ``test`` (by the number in the name, so the split needs no choice).

On the test objects, the same seeded 20-way 1-shot episodes (2,000, one query per object) for:
raw pixels (grey and colour, 32x32, each vector centred), the shipped handwriting model, the
shipped face model's network on the whole photo (resized to 150x150, no face detection), that
network with its last layer tuned on the training objects (``oneshot train --data <train> --init
face --tune last-layer``), and the model that ``oneshot train --data <train>`` makes with no flags
(from scratch: the photo recipe has no shipped starting model).

Run from the repository root::

    python -m benchmarks.objects split --data SCRATCH/faces/coil100 --out SCRATCH/coil
    python -m benchmarks.objects run --train SCRATCH/coil/train --test SCRATCH/coil/test --run SCRATCH/runs/coil \\
        --out benchmarks/results/objects_coil100.json
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from benchmarks import command_line, link_photos, write_result
from oneshot.data.source import open_source, read_images
from oneshot.embedder.artifact import FACE_MODEL, load_model
from oneshot.embedder.encode import encode
from oneshot.embedder.preprocess import Recipe
from oneshot.pipelines.evaluation.validation import OneShotValidation


def split(data: Path, out: Path) -> dict:
    """Hard-link the photos of ``data``'s object folders numbered 1-50 into ``out/train``, 51-100 into
    ``out/test`` (gallery readers do not follow folder links)."""
    counts = {"train": 0, "test": 0}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        number = re.search(r"(\d+)$", folder.name)
        if number is None:
            continue
        half = "train" if int(number.group(1)) <= 50 else "test"
        link_photos(sorted(folder.glob("*.png")), out / half / folder.name)
        counts[half] += 1
    return counts


def raw_vectors(images: list, channels: int) -> np.ndarray:
    """32x32 pixels (grey or colour), flattened and centred per image: float32 (N, 1024 * channels)."""
    pixels = Recipe(kind="photo", size=32, channels=channels).batch(images).reshape(len(images), -1)
    return np.ascontiguousarray(pixels - pixels.mean(axis=1, keepdims=True), dtype=np.float32)


def run(train_dir: Path, test: Path, out_dir: Path, seed: int = 0, episodes: int = 2000) -> dict:
    from oneshot.pipelines.jobs.train import train_from_cli

    lines: list[str] = []
    started = time.perf_counter()
    trained = train_from_cli(out_dir, {"seed": seed}, data=str(train_dir), show_progress=False, on_recipe=lines.append,
                             command=f"oneshot train --data {train_dir} --out {out_dir}").model
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    face_tuned = train_from_cli(out_dir.with_name(out_dir.name + "_face"), {"seed": seed}, data=str(train_dir),
                                init="face", tune="last-layer", show_progress=False,
                                command=f"oneshot train --data {train_dir} --init face --tune last-layer").model
    face_seconds = time.perf_counter() - started
    source = open_source(test)
    table = source.table
    images = read_images(source, list(table["path"]), color=True)
    labels = table["label"].astype(str).to_numpy()
    way = min(20, len(np.unique(labels)))
    trials = OneShotValidation.on_labels(labels, way, episodes, seed=seed)
    handwriting = load_model(None)
    face = load_model(FACE_MODEL)
    face.recipe = Recipe.from_dict({**face.recipe.to_dict(), "kind": "photo"})  # the whole photo, no detection
    candidates = {
        "trained (oneshot train --data, no flags)": (lambda: encode(trained, images, show_progress=False),
                                                     trained.metric),
        "raw pixels, grey 32x32": (lambda: raw_vectors(images, 1), "cosine"),
        "raw pixels, colour 32x32": (lambda: raw_vectors(images, 3), "cosine"),
        "handwriting model (shipped)": (lambda: encode(handwriting, images, show_progress=False), handwriting.metric),
        "face model's network, whole photo 150x150": (lambda: encode(face, images, show_progress=False), "cosine"),
        "face model's network, last layer tuned on the training objects": (
            lambda: encode(face_tuned, images, show_progress=False), "cosine"),
    }
    out = {"train": str(train_dir), "test": str(test), "test_objects": int(len(np.unique(labels))),
           "test_photos": len(labels), "way": way, "episodes": episodes, "train_lines": lines,
           "train_job_seconds": round(seconds, 1), "trained_recipe": trained.recipe.to_dict(),
           "trained_steps_run": trained.info.get("steps_run"), "trained_best_step": trained.info.get("step"),
           "face_tuning": face_tuned.info["tuning"]["summary"], "face_tuning_job_seconds": round(face_seconds, 1),
           "models": {}}
    for name, (vectors, metric) in candidates.items():
        accuracy = trials.score(vectors(), metric)
        out["models"][name] = {"accuracy": accuracy, "ci95": trials.last_noise}
        print(f"{name}: {accuracy:.4f} +/- {trials.last_noise:.4f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split_parser = commands.add_parser("split", help="objects 1-50 -> train, 51-100 -> test (hard links)")
    split_parser.add_argument("--data", type=Path, required=True)
    split_parser.add_argument("--out", type=Path, required=True)
    run_parser = commands.add_parser("run", help="train with no flags, then 20-way 1-shot on the test objects")
    run_parser.add_argument("--train", type=Path, required=True)
    run_parser.add_argument("--test", type=Path, required=True)
    run_parser.add_argument("--run", type=Path, required=True, help="training run folder")
    run_parser.add_argument("--seed", type=int, default=0)
    run_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/objects_coil100.json"))
    args = parser.parse_args(argv)
    if args.command == "split":
        print(split(args.data, args.out))
        return 0
    result = run(args.train, args.test, args.run, args.seed)
    write_result({"command": command_line("objects", argv),
                  **result}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
