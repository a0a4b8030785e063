"""``oneshot train`` on a small gallery of a family the starting model already knows (faces):
tune only its last linear layer, validated by folds over the gallery's people.

Why: 10-50 photos of 10-100 people are too few to move a 29-layer network safely, and a single
validation split of a few people cannot tell a better model from a lucky one. Features below the
last layer are computed once (each photo and its mirror image), so a fit takes about a second and
validation can afford *repeated two-fold cross-validation over the people*: every person is held
out ``repeats`` times, scored N-way 1-shot (N = 20, or the held-out people when fewer) by a model
that never trained on them, against the start on the same episodes. The gain of each checkpoint
is paired per person (averaged over repeats), and the best checkpoint replaces the start only
when its mean gain exceeds 1.96 standard errors across the people. The final model is then fitted
on all the people for that many steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from oneshot.embedder.head_tuning import (
    fit_last_linear,
    last_layer_features,
    last_linear,
    layer_bias,
    vectors_from_features,
    with_last_linear,
)
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError
from oneshot.pipelines.evaluation.validation import OneShotValidation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LastLayerOptions:
    """How last-layer tuning runs. Chosen by cross-validation over the people of the training
    galleries only (Extended Yale B people 1-20, LFW dev people, README "Faces"): ``lr`` 1e-4 and
    checkpoints up to 300 full-batch steps (1e-3 overshot within 25 steps; 3e-4 and 1e-4 peaked alike)."""

    steps: tuple[int, ...] = (25, 50, 100, 200, 300)
    lr: float = 1e-4
    folds: int = 2
    repeats: int = 3
    val_way: int = 20
    val_episodes: int = 2000
    seed: int = 0


@dataclass
class GalleryFeatures:
    """Last-layer features of a gallery's usable photos: (N, F) each, their labels (N,) and paths."""

    features: np.ndarray
    mirrored: np.ndarray
    labels: np.ndarray
    paths: list = field(default_factory=list)


def gallery_features(model: Embedder, table: pd.DataFrame, read: Callable, recipe: Recipe,
                     unusable: Callable[[str, str], None] | None = None, chunk: int = 256) -> GalleryFeatures:
    """Read, prepare and run the photos of ``table`` (``path``, ``label``) through ``model`` below its
    last layer, ``chunk`` at a time (memory holds features, never the gallery's pixels). Photos the
    recipe cannot use (no face) go to ``unusable(path, reason)``."""
    features, mirrored, labels, paths = [], [], [], []
    for start in range(0, len(table), chunk):
        rows = table.iloc[start : start + chunk]
        prepared = recipe.prepare(read(list(rows["path"])))
        for position, reason in sorted(prepared.reasons.items()):
            if unusable is not None:
                unusable(str(rows["path"].iloc[position]), reason)
        if not len(prepared.kept):
            continue
        features.append(last_layer_features(model, prepared.pixels))
        mirrored.append(last_layer_features(model, prepared.pixels, flip=True))
        labels.extend(rows["label"].astype(str).to_numpy()[prepared.kept])
        paths.extend(rows["path"].astype(str).to_numpy()[prepared.kept])
    width = last_linear(model).in_features
    stack = lambda parts: np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, width)), np.float32)  # noqa: E731
    return GalleryFeatures(stack(features), stack(mirrored), np.asarray(labels, dtype=str), paths)


def people_folds(labels: np.ndarray, folds: int, repeats: int, seed: int) -> list[np.ndarray]:
    """``repeats`` seeded partitions of the people into ``folds`` parts: a list of held-out people arrays."""
    people = np.unique(labels)
    if len(people) < 2 * folds:
        raise InvalidInputError(f"only {len(people)} classes: {folds}-fold validation needs {2 * folds} or more")
    held = []
    for repeat in range(repeats):
        order = np.random.default_rng(seed + repeat).permutation(people)
        held.extend(np.sort(order[k::folds]) for k in range(folds))
    return held


@dataclass
class LastLayerResult:
    """What :func:`tune_last_layer` found. ``step`` 0 means the start was kept."""

    model: Embedder
    step: int
    history: pd.DataFrame
    start_accuracy: float
    accuracy: float
    gain: float
    noise: float
    way: int
    described: str
    calibration: tuple[np.ndarray, np.ndarray, str]  # vectors (M, D), labels (M,), on what


def tune_last_layer(model: Embedder, gallery: GalleryFeatures, options: LastLayerOptions = LastLayerOptions(),
                    noun: str = "classes") -> LastLayerResult:
    """Cross-validate last-layer tuning over the classes (``noun``: what the sentences call them,
    ``"people"`` for faces), then fit the final layer (see the module)."""
    labels, o = gallery.labels, options
    counts = pd.Series(labels).value_counts()
    if (counts >= 2).sum() < 2 * o.folds:
        raise InvalidInputError(f"{(counts >= 2).sum()} {noun} with 2 or more usable photos: last-layer tuning "
                                f"needs {2 * o.folds} or more")
    start, bias = last_linear(model).weight.detach().cpu().numpy().copy(), layer_bias(model)
    scorable = labels[np.isin(labels, counts[counts >= 2].index)]
    held_sets = people_folds(scorable, o.folds, o.repeats, o.seed)
    way = int(min(o.val_way, min(len(h) for h in held_sets)))
    people = np.unique(scorable)
    gains = {step: np.zeros(len(people)) for step in o.steps}
    accuracy = {step: [] for step in (0, *o.steps)}
    losses = {step: [] for step in o.steps}
    intervals = []
    seen = np.zeros(len(people))
    calibration = None
    for number, held in enumerate(held_sets):
        rows = np.isin(labels, held)
        train = ~np.isin(labels, held)
        fits = fit_last_linear(start, np.concatenate([gallery.features[train], gallery.mirrored[train]]),
                               np.concatenate([labels[train], labels[train]]), o.steps, o.lr, seed=o.seed, bias=bias)
        episodes = OneShotValidation.on_labels(labels[rows], way, o.val_episodes, seed=o.seed + 1 + number)
        accuracy[0].append(episodes.score(vectors_from_features(gallery.features[rows], start, bias), "cosine"))
        reference = episodes.last_per_class
        where = np.searchsorted(people, np.unique(labels[rows]))  # the fold's classes in ``people`` order
        seen[where] += 1
        for step, (weight, loss) in fits.items():
            accuracy[step].append(episodes.score(vectors_from_features(gallery.features[rows], weight, bias), "cosine"))
            intervals.append(episodes.last_noise)
            gains[step][where] += episodes.last_per_class - reference
            losses[step].append(loss)
        if number == 0:
            calibration = (rows, fits)
    per_person = {step: gains[step] / np.maximum(seen, 1) for step in o.steps}
    spread = {step: 1.96 * per_person[step].std(ddof=1) / np.sqrt(len(people)) for step in o.steps}
    floor = float(np.mean(intervals)) if intervals else 0.0
    rows_out = [{"step": 0, "loss": float("nan"), "val_accuracy": float(np.mean(accuracy[0])), "val_gain": 0.0,
                 "val_noise": float("nan")}]
    for step in o.steps:
        rows_out.append({"step": step, "loss": float(np.mean(losses[step])), "val_accuracy": float(np.mean(accuracy[step])),
                         "val_gain": float(per_person[step].mean()), "val_noise": float(max(spread[step], floor))})
    history = pd.DataFrame(rows_out)
    candidates = history[history["step"] > 0]
    best = candidates.loc[candidates["val_gain"].idxmax()]
    beats = bool(best["val_gain"] > best["val_noise"])
    step = int(best["step"]) if beats else 0
    described = (f"{o.repeats} x {o.folds}-fold over {len(people)} {noun} (each held out {o.repeats} times, "
                 f"by a fit that never saw them), {way}-way 1-shot, {o.val_episodes} episodes a fold")
    rows, fits = calibration
    if step:
        everyone = fit_last_linear(start, np.concatenate([gallery.features, gallery.mirrored]),
                                   np.concatenate([labels, labels]), [step], o.lr, seed=o.seed, bias=bias)
        tuned = with_last_linear(model, everyone[step][0])
        vectors = vectors_from_features(gallery.features[rows], fits[step][0], bias)
        on = (f"{len(np.unique(labels[rows]))} {noun} held out of a fold's fit (the first of the validation folds; "
              f"the final model trained on all {len(np.unique(labels))})")
        calibration = (vectors, labels[rows], on)
    else:
        tuned = model
        calibration = (vectors_from_features(gallery.features, start, bias), labels,
                       f"the {len(np.unique(labels))} {noun} of the training gallery (the start never trained on them)")
    log.info("last-layer tuning: %s", history.to_dict("records"))
    return LastLayerResult(tuned, step, history, float(history["val_accuracy"].iloc[0]),
                           float(history.loc[history["step"] == step, "val_accuracy"].item()),
                           float(best["val_gain"]), float(best["val_noise"]), way, described, calibration)
