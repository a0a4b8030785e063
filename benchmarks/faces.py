"""Faces zero-shot: the shipped face model beside raw pixels and the handwriting model, on people
that no training, selection or calibration step saw.

Data: public face sets fetched to a scratch folder outside the repo (README, "Faces", names the sets
and commits), each laid out ``<set>/<person>/<photo>``. ``split`` divides a set's people in two by
a hash of the name (``sha1(name)`` first hex digit 0-7: ``dev``, else ``test``): the face model's
thresholds are calibrated on ``dev`` (``oneshot calibrate``), every figure here is on ``test``.

For each model, on the same rows (photos in which the face model found a face, so every model sees
the same people and photos) and the same seeded episodes and pairs:

- 20-way 1-shot accuracy (2,000 episodes, one query per person);
- 1:1 verification: EER and accuracy at the threshold calibrated on ``dev`` (10,000 balanced pairs);
- open set: half the test people enrolled with one photo each, queries are their other photos and
  every photo of the other half; and the face-database case, 200 seeded databases of 20 people
  (one photo each) queried with another photo of each and a photo of 20 people not enrolled;
  "unknown" below the threshold calibrated on ``dev`` for a database of that size (the face model:
  the ones it carries; raw pixels and the handwriting model: the same rules on the same ``dev`` photos);
- time: photos per second through ``encode_source`` (decode, detection, alignment, forward), in process.

Run from the repository root::

    python -m benchmarks.faces split --data SCRATCH/faces/lfw --out SCRATCH/splits
    oneshot calibrate embedder/weights/face.safetensors --data SCRATCH/splits/lfw_dev
    python -m benchmarks.faces zero-shot --dev SCRATCH/splits/lfw_dev --test SCRATCH/splits/lfw_test \\
        --out benchmarks/results/faces_lfw.json

``fine-tune`` runs ``oneshot train --data`` on a small gallery (``take``: N people x K photos) and
scores the trained model beside its start on other people (README, "Faces", gives the commands).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import command_line, link_photos, write_result
from oneshot.data.source import open_source, read_images
from oneshot.embedder.artifact import load_model
from oneshot.embedder.face_model import FACE_MODEL
from oneshot.embedder.preprocess import Recipe
from oneshot.index.metric import get_metric
from oneshot.index.search import ExactSearch
from oneshot.pipelines.engines.local import encode_source
from oneshot.pipelines.evaluation.evaluate import oneshot_accuracy
from oneshot.pipelines.evaluation.open_set import open_set_report
from oneshot.pipelines.evaluation.thresholds import calibrate_thresholds, resolve_threshold
from oneshot.pipelines.evaluation.verification import pair_scores, sample_pairs, verification_report
from oneshot.pipelines.reading import Rejects

RAW = Recipe(size=32, kind="photo", channels=1)  # what a user gets without a model: grey 32x32, centred


def half_of(name: str) -> str:
    """``dev`` or ``test``: the half of a set a person falls in (by a hash of the name, no seed needed)."""
    return "dev" if int(hashlib.sha1(name.encode()).hexdigest()[0], 16) < 8 else "test"


def split(data: Path, out: Path) -> dict:
    """Hard-link ``data/<person>/`` into ``out/<set>_dev`` and ``out/<set>_test``; returns the counts."""
    counts = {"dev": 0, "test": 0}
    for person in sorted(p for p in data.iterdir() if p.is_dir()):
        half = half_of(person.name)
        link_photos([photo for photo in person.iterdir() if photo.is_file()], out / f"{data.name}_{half}" / person.name)
        counts[half] += 1
    return counts


def take(data: Path, out: Path, people: int | None, photos: int | None, skip: int = 0) -> dict:
    """Hard-link a small gallery: people ``skip`` to ``skip + people`` of ``data`` in name order (all
    when None) among those with at least ``photos`` photos, each with ``photos`` photos spread evenly
    over its sorted photos (all when None)."""
    folders = sorted(p for p in data.iterdir() if p.is_dir()
                     and (photos is None or sum(f.is_file() for f in p.iterdir()) >= photos))[skip:]
    folders = folders[:people] if people is not None else folders
    count = 0
    for person in folders:
        files = sorted(f for f in person.iterdir() if f.is_file())
        if photos is not None:
            files = files[:: max(1, len(files) // photos)][:photos]
        count += link_photos(files, out / person.name)
    return {"people": len(folders), "photos": count}


def raw_vectors(source, table: pd.DataFrame) -> np.ndarray:
    """Flattened grey 32x32 pixels of ``table``'s photos, float32 (N, 1024)."""
    chunks = []
    paths = list(table["path"])
    for start in range(0, len(paths), 1024):
        chunks.append(RAW.batch(read_images(source, paths[start : start + 1024])).reshape(-1, RAW.size ** 2))
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def face_rows(folder: Path) -> tuple[object, pd.DataFrame, np.ndarray, dict]:
    """The face model's vectors of a folder, the rows it kept, and what it cost."""
    model = load_model(FACE_MODEL)
    source = open_source(folder)
    rejects = Rejects()
    started = time.perf_counter()
    table, vectors = encode_source(model, source, rejects, show_progress=False)
    seconds = time.perf_counter() - started
    cost = {"images": len(source.table), "faces_found": len(table), "no_face": len(rejects.items),
            "several_faces": len(rejects.notes), "seconds": round(seconds, 2),
            "images_per_second": round(len(source.table) / seconds, 1)}
    return source, table, vectors, cost


def vectors_of(kind: str, source, table: pd.DataFrame, face_vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """(vectors of ``table``'s rows, metric) for ``face``, ``handwriting`` or ``raw``."""
    if kind == "face":
        return face_vectors, "cosine"
    if kind == "raw":
        return raw_vectors(source, table), "cosine"
    subset = copy.copy(source)
    subset.table = table.reset_index(drop=True)
    model = load_model(None)
    _, vectors = encode_source(model, subset, Rejects(), show_progress=False)
    return vectors, model.metric


def with_two_photos(table: pd.DataFrame, vectors: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of people left with 2 or more photos once the faceless ones are out (one-shot needs 2)."""
    keep = (table["label"].map(table["label"].value_counts()) >= 2).to_numpy()
    return table[keep].reset_index(drop=True), vectors[keep]


def open_set(vectors: np.ndarray, table: pd.DataFrame, metric: str, threshold: float, seed: int) -> dict:
    """Half the people enrolled (one photo each), the rest unknown: :func:`open_set_report` at ``threshold``."""
    rng = np.random.default_rng(seed)
    labels = table["label"].to_numpy(dtype=str)
    people = np.unique(labels)
    enrolled = set(rng.choice(people, size=len(people) // 2, replace=False))
    gallery, known = [], []
    for person in sorted(enrolled):
        rows = np.flatnonzero(labels == person)
        first = rng.choice(rows)
        gallery.append(first)
        known.extend(r for r in rows if r != first)
    unknown = np.flatnonzero(~np.isin(labels, list(enrolled)))
    index = ExactSearch(vectors[gallery], pd.DataFrame({"id": np.arange(len(gallery)), "label": labels[gallery]}),
                        get_metric(metric))
    return open_set_report(index, vectors[known], labels[known], vectors[unknown], threshold)


def open_set_databases(vectors: np.ndarray, table: pd.DataFrame, metric: str, threshold: float, seed: int,
                       enrolled: int = 20, draws: int = 200) -> dict:
    """The face-database case: ``draws`` seeded databases of ``enrolled`` people (one photo each), queried
    with another photo of each of them and one photo of each of ``enrolled`` people not in it."""
    rng = np.random.default_rng(seed)
    labels = table["label"].to_numpy(dtype=str)
    people = np.unique(labels)
    rows_of = {person: np.flatnonzero(labels == person) for person in people}
    named, rejected = [], []
    for _ in range(draws):
        chosen = rng.choice(people, size=2 * enrolled, replace=False)
        pairs = [rng.choice(rows_of[person], size=2, replace=False) for person in chosen[:enrolled]]
        gallery, known = [p[0] for p in pairs], [p[1] for p in pairs]
        unknown = [rng.choice(rows_of[person]) for person in chosen[enrolled:]]
        index = ExactSearch(vectors[gallery], pd.DataFrame({"id": np.arange(enrolled), "label": labels[gallery]}),
                            get_metric(metric))
        found = open_set_report(index, vectors[known], labels[known], vectors[unknown], threshold)
        named.append(found["known_accuracy"])
        rejected.append(found["unknown_rejection_rate"])
    return {"enrolled": enrolled, "not_enrolled": enrolled, "draws": draws, "threshold": threshold,
            "known_named_right": float(np.mean(named)), "unknown_rejected": float(np.mean(rejected)),
            "known_named_right_ci95": float(1.96 * np.std(named) / np.sqrt(draws)),
            "unknown_rejected_ci95": float(1.96 * np.std(rejected) / np.sqrt(draws))}


def zero_shot(dev: Path, test: Path, seed: int = 0) -> dict:
    _, dev_table, dev_faces, _ = face_rows(dev)
    test_source, table, face_vectors, cost = face_rows(test)
    table, face_vectors = with_two_photos(table, face_vectors)
    dev_source = open_source(dev)
    model = load_model(FACE_MODEL)
    out = {"dev": str(dev), "test": str(test), "test_people": int(table["label"].nunique()),
           "test_photos_used": len(table), "face_model_cost": cost, "models": {}}
    a, b, same = sample_pairs(table["label"].to_numpy(dtype=str), 10_000, seed=seed)
    for kind in ("face", "handwriting", "raw"):
        vectors, metric = vectors_of(kind, test_source, table, face_vectors)
        if kind == "face":
            carrier, owner = model, "the model"
        else:  # the same rules on the same dev photos
            dev_vectors, _ = vectors_of(kind, dev_source, dev_table, dev_faces)
            found = calibrate_thresholds(dev_vectors, dev_table["label"].to_numpy(dtype=str), metric, str(dev), seed)
            carrier, owner = {"info": {"thresholds": found}}, "this benchmark"
        verify_at, source = resolve_threshold(carrier, "verification", "model", owner)
        half = int(table["label"].nunique()) // 2
        unknown_at, unknown_source = resolve_threshold(carrier, "unknown", "model", owner, enrolled=half)
        small_at, small_source = resolve_threshold(carrier, "unknown", "model", owner, enrolled=20)
        scores = pair_scores(vectors, a, b, metric)
        out["models"][kind] = {
            "metric": metric,
            "20_way_1_shot": oneshot_accuracy(vectors, table, metric, n_way=20, n_episodes=2000,
                                              within_group=False, seed=seed),
            "verification": {**verification_report(scores, same, verify_at), "threshold_source": source},
            "open_set": {**open_set(vectors, table, metric, unknown_at, seed), "threshold_source": unknown_source},
            "open_set_20_people": {**open_set_databases(vectors, table, metric, small_at, seed),
                                   "threshold_source": small_source},
        }
        print(kind, {k: v for k, v in out["models"][kind]["20_way_1_shot"].items() if k in ("accuracy", "ci95")},
              "EER", round(out["models"][kind]["verification"]["eer"], 4),
              "unknown rejected", round(out["models"][kind]["open_set"]["unknown_rejection_rate"], 3),
              "known named", round(out["models"][kind]["open_set"]["known_accuracy"], 3),
              "| 20 enrolled: unknown rejected", round(out["models"][kind]["open_set_20_people"]["unknown_rejected"], 3),
              "known named", round(out["models"][kind]["open_set_20_people"]["known_named_right"], 3), flush=True)
    return out


def fine_tune(train_dir: Path, test: Path, out_dir: Path, recipe: str | None, seed: int = 0) -> dict:
    """``oneshot train --data train_dir`` (with ``--recipe`` when given, else no flags), then N-way 1-shot
    (N = 20, or the test people when fewer) on the other people of ``test``: the trained model beside
    the model it started from, raw pixels and the handwriting model, on the same photos and episodes."""
    from oneshot.pipelines.jobs.train import train_from_cli

    started = time.perf_counter()
    result = train_from_cli(out_dir, {"seed": seed}, data=str(train_dir), recipe=recipe, show_progress=False,
                            command=f"oneshot train --data {train_dir}" + (f" --recipe {recipe}" if recipe else "")
                            + f" --out {out_dir}")
    seconds = time.perf_counter() - started
    trained = result.model
    start = load_model(FACE_MODEL)
    start.recipe = trained.recipe  # the same face finding (detect or whole crops) as the trained model
    source = open_source(test)
    rejects = Rejects()
    table, start_vectors = encode_source(start, source, rejects, show_progress=False)
    table, start_vectors = with_two_photos(table, start_vectors)
    subset = copy.copy(source)
    subset.table = table.reset_index(drop=True)
    _, trained_vectors = encode_source(trained, subset, Rejects(), show_progress=False)
    way = min(20, int(table["label"].nunique()))
    out = {"train": str(train_dir), "test": str(test), "recipe_flag": recipe,
           "train_seconds": trained.info.get("train_seconds"), "job_seconds": round(seconds, 1),
           "best_step": result.best_step, "validation": {"way": trained.info.get("train_config", {}).get("val_way"),
                                                         "start": trained.info.get("start_accuracy"),
                                                         "best": result.best_accuracy,
                                                         "noise": trained.info.get("val_noise"),
                                                         "described": trained.info.get("validation"),
                                                         "summary": trained.info.get("tuning", {}).get("summary")},
           "test_people": int(table["label"].nunique()), "test_photos": len(table), "no_face": len(rejects.items),
           "way": way, "models": {}}
    for kind, vectors in (("trained", trained_vectors), ("start (shipped face model)", start_vectors),
                          ("handwriting", None), ("raw", None)):
        if vectors is None:
            vectors, _ = vectors_of(kind, source, table, start_vectors)
        out["models"][kind] = oneshot_accuracy(vectors, table, "cosine", n_way=way, n_episodes=2000,
                                               within_group=False, seed=seed)
        print(kind, round(out["models"][kind]["accuracy"], 4), "+/-", round(out["models"][kind]["ci95"], 4), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split_parser = commands.add_parser("split", help="divide a set's people into dev and test halves")
    split_parser.add_argument("--data", type=Path, required=True)
    split_parser.add_argument("--out", type=Path, required=True)
    take_parser = commands.add_parser("take", help="a small gallery: N people x K photos of a set, by name order")
    take_parser.add_argument("--data", type=Path, required=True)
    take_parser.add_argument("--out", type=Path, required=True)
    take_parser.add_argument("--people", type=int, default=None)
    take_parser.add_argument("--photos", type=int, default=None)
    take_parser.add_argument("--skip", type=int, default=0, help="people to pass over first (name order)")
    zero = commands.add_parser("zero-shot", help="the shipped face model beside raw pixels and the handwriting model")
    zero.add_argument("--dev", type=Path, required=True)
    zero.add_argument("--test", type=Path, required=True)
    zero.add_argument("--seed", type=int, default=0)
    zero.add_argument("--out", type=Path, default=Path("benchmarks/results/faces_zero_shot.json"))
    tune = commands.add_parser("fine-tune", help="oneshot train on a small gallery, then one-shot on other people")
    tune.add_argument("--train", type=Path, required=True)
    tune.add_argument("--test", type=Path, required=True)
    tune.add_argument("--run", type=Path, required=True, help="training run folder")
    tune.add_argument("--recipe", default=None, help="as oneshot train's --recipe (default: inferred)")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--out", type=Path, default=Path("benchmarks/results/faces_fine_tune.json"))
    args = parser.parse_args(argv)
    if args.command == "split":
        print(split(args.data, args.out))
        return 0
    if args.command == "take":
        print(take(args.data, args.out, args.people, args.photos, args.skip))
        return 0
    if args.command == "fine-tune":
        result = fine_tune(args.train, args.test, args.run, args.recipe, args.seed)
        write_result({"command": command_line("faces", argv),
                      **result}, args.out)
        print(f"wrote {args.out}")
        return 0
    result = zero_shot(args.dev, args.test, args.seed)
    write_result({"command": command_line("faces", argv),
                  **result}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
