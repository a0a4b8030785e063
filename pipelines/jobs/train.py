"""Glue between data sources and the training loop, used by ``oneshot train`` and the benchmarks.

Any source :func:`~oneshot.data.source.open_source` reads can be trained on. Validation holds out,
by default, whole groups when the data has several, else whole classes (the product is for classes
never seen in training); ``val_split="images"`` holds out images of every class instead (closed
set). After training, the best model's verification and "unknown" thresholds are calibrated on the
validation split and stored in the model file (:mod:`oneshot.pipelines.evaluation.thresholds`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from oneshot.atomic import atomic_path
from oneshot.data.augment import AugmentConfig
from oneshot.data.forgeries import has_forgeries
from oneshot.data.lake_runs import read_lake_runs
from oneshot.data.omniglot import OmniglotSplit, omniglot_root
from oneshot.data.source import ImageSource, describe_source, open_source, read_images
from oneshot.data.synthetic import SyntheticSet, make_alphabets
from oneshot.embedder.artifact import (
    DEFAULT_MODEL,
    FACE_MODEL,
    HANDWRITING_MODELS,
    as_model,
    load_model,
    model_path,
    read_model_config,
    save_model,
)
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.encode import encode
from oneshot.embedder.ensemble import reranks_by_trained_score
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.recipes import SIZES, infer_recipe, recipe_for, with_canvas, with_normalisation
from oneshot.embedder.shipped import choose_shipped_model
from oneshot.embedder.train import TrainConfig, TrainResult, train, write_curves
from oneshot.errors import InvalidInputError
from oneshot.locks import exclusive_lock
from oneshot.pipelines.evaluation.evaluate import lake_run_errors
from oneshot.pipelines.evaluation.thresholds import calibrate_thresholds
from oneshot.pipelines.evaluation.validation import OneShotValidation
from oneshot.pipelines.jobs.calibrate import calibrate_reranked_unknown
from oneshot.pipelines.jobs.last_layer import LastLayerOptions, gallery_features, tune_last_layer
from oneshot.pipelines.reading import Rejects, scan_source

log = logging.getLogger(__name__)

#: Background alphabets held out for validation (never trained on), per Omniglot split.
VALIDATION_ALPHABETS = {
    "background": ("Bengali", "Futurama", "Greek", "Japanese_(katakana)"),
    "small1": ("Greek",),
    "small2": ("Greek",),
}
VAL_SPLITS = ("classes", "images")
VAL_SHARE = 0.2   # share of groups, classes or images held out by default
RECIPE_SAMPLE = 200

#: Learning rate of a run that starts from another model (``--init``), when none is given: a
#: quarter of the from-scratch rate, so the first steps do not wash out what the model knows.
FINE_TUNE_LR = TrainConfig.lr / 4
#: Training options a user gallery gets when neither ``--config`` nor a flag sets them: a run that
#: ends within about 10 minutes on two CPU cores, whatever the gallery. 3,000 steps took 3-7.8 minutes
#: on the quiet 2-core development machine (so the step count, not the clock, ends the run there
#: and it is reproducible); the 8-minute cap ends it on a slower or busier machine.
GALLERY_DEFAULTS = dict(steps=3000, max_seconds=480.0, classes_per_batch=40, items_per_class=4, val_every=100,
                        warmup_steps=50)


def gallery_defaults(recipe: Recipe) -> dict:
    """:data:`GALLERY_DEFAULTS` for a recipe. The step budget is for the kind's square canvas
    (28x28 handwriting, 32x32 photos); a larger canvas, such as a signature's 28x96, gets
    proportionally fewer steps (about the same pixels, so about the same time), in whole
    validation intervals."""
    side = SIZES[recipe.kind]
    height, width = recipe.shape
    interval = GALLERY_DEFAULTS["val_every"]
    steps = GALLERY_DEFAULTS["steps"] * side * side / (height * width)
    return {**GALLERY_DEFAULTS, "steps": int(max(1, math.ceil(steps / interval)) * interval)}


SYNTHETIC_BACKGROUND = dict(n_alphabets=16, characters_per_alphabet=20)


def synthetic_background(seed: int):
    """The synthetic training alphabets and the three held out for validation: (SyntheticSet, names)."""
    source = make_alphabets(**SYNTHETIC_BACKGROUND, seed=seed, prefix="background")
    return source, tuple(sorted(source.table["group"].unique())[-3:])


def _pick(values, share: float, minimum: int, seed: int) -> list:
    values = sorted(values)
    count = min(len(values) - 1, max(minimum, int(round(share * len(values)))))
    return sorted(np.random.default_rng(seed).choice(values, count, replace=False).tolist())


def hold_out(table: pd.DataFrame, val_groups: list[str] | tuple[str, ...] | None = None,
             val_classes: list[str] | int | None = None, val_split: str = "classes",
             seed: int = 0) -> tuple[np.ndarray, str]:
    """Which rows validation holds out: (bool mask (N,), a description for the model file).

    Order of choice: ``val_split="images"`` (a seeded share of every class's images), the named
    ``val_groups``, ``val_classes`` (names, or a count drawn with ``seed``), else a seeded share of
    the groups when there are three or more, else a seeded share of the classes.
    """
    if val_split not in VAL_SPLITS:
        raise InvalidInputError(f"val_split must be one of {VAL_SPLITS}, got {val_split!r}")
    labels = table["label"].astype(str).to_numpy()
    groups = table["group"].astype(str).to_numpy()
    if val_split == "images":
        if val_groups or val_classes:
            raise InvalidInputError("--val-split images holds out images of every class; drop --val-groups/--val-classes")
        rng = np.random.default_rng(seed)
        held = np.zeros(len(table), bool)
        for rows in pd.Series(np.arange(len(table))).groupby(labels):
            rows = rows[1].to_numpy()
            if len(rows) >= 3:
                held[rng.choice(rows, max(1, int(round(VAL_SHARE * len(rows)))), replace=False)] = True
        if not held.any():
            raise InvalidInputError("--val-split images needs classes with 3 or more images")
        return held, f"{held.sum()} images ({VAL_SHARE:.0%} of each class with 3 or more, seed {seed}) of classes also trained on"
    if val_groups:
        missing = sorted(set(val_groups) - set(groups))
        if missing:
            raise InvalidInputError(f"validation groups not in the data: {missing}")
        held = np.isin(groups, list(val_groups))
        described = f"held-out groups {sorted(val_groups)}"
    elif val_classes:
        if isinstance(val_classes, int) or (len(val_classes) == 1 and str(val_classes[0]).isdigit()):
            count = int(val_classes if isinstance(val_classes, int) else val_classes[0])
            chosen = sorted(np.random.default_rng(seed).choice(np.unique(labels), count, replace=False).tolist()) \
                if count < len(np.unique(labels)) else list(np.unique(labels))
        else:
            chosen = list(val_classes)
            missing = sorted(set(chosen) - set(labels))
            if missing:
                raise InvalidInputError(f"validation classes not in the data: {missing[:5]}")
        held = np.isin(labels, chosen)
        described = f"{len(chosen)} held-out classes"
    else:
        named_groups = sorted(set(groups) - {""})
        if len(named_groups) >= 3 and (groups != "").all():
            chosen = _pick(named_groups, VAL_SHARE, 1, seed)
            held = np.isin(groups, chosen)
            described = f"held-out groups {chosen} (seeded default, seed {seed})"
        else:
            classes = np.unique(labels)
            if len(classes) < 4:
                raise InvalidInputError(f"only {len(classes)} classes: too few to hold whole classes out for "
                                        "validation; use --val-split images")
            chosen = _pick(classes, VAL_SHARE, 4 if len(classes) >= 10 else 2, seed)
            held = np.isin(labels, chosen)
            described = f"{len(chosen)} held-out classes (seeded default, seed {seed}): never trained on"
    if held.all() or not held.any():
        raise InvalidInputError("validation must hold out some, but not all, of the data")
    return held, described


def _training_labels(table: pd.DataFrame) -> pd.DataFrame:
    """Forgeries become negatives: a label of their own for the loss only (``writer/forged``, never
    a gallery or validation class), so training pushes them away from the writer's genuine images."""
    if "forged" not in table:
        return table
    out = table.copy()
    forged = out["forged"].astype(bool).to_numpy()
    out["group"] = out["label"].astype(str)
    out.loc[forged, "label"] = out.loc[forged, "label"].astype(str) + "/forged"
    return out


def training_sets(table: pd.DataFrame, read, recipe: Recipe, validation: tuple[str, ...] | np.ndarray,
                  rotations: bool, rejects: Rejects | None = None,
                  reflections: bool = False) -> tuple[LabelledImages, LabelledImages]:
    """Split a table into (training, validation) image sets, by held-out groups or a row mask
    (photos the recipe cannot use, such as one without a face, go to ``rejects``); rotations and
    mirror images as new classes apply to the training set only."""
    if isinstance(validation, np.ndarray) and validation.dtype == bool:
        held = validation
    else:
        held, _ = hold_out(table, val_groups=list(validation))
    train_table = _training_labels(table[~held])
    val_table = table[held]
    unusable = rejects.add if rejects is not None else None
    return (LabelledImages.from_table(train_table, read, recipe, rotations, unusable, reflections),
            LabelledImages.from_table(val_table, read, recipe, unusable=unusable))


@dataclass
class TrainingData:
    """What ``oneshot train`` trains on: the source, the validation rows and descriptions."""

    source: ImageSource
    held: np.ndarray
    described_source: str
    described_validation: str


def training_source(data: str | os.PathLike | ImageSource | None = None, split: str | None = None,
                    synthetic: bool = False, seed: int = 0, val_groups: list[str] | None = None,
                    strict: bool = True) -> tuple[ImageSource, tuple[str, ...], str]:
    """Where training images come from and which groups validation holds out (group validation only).

    Omniglot keeps its four validation alphabets, the synthetic set its last three; other sources
    need ``val_groups`` here (use :func:`training_data` for the seeded class/group defaults).
    """
    if synthetic:
        source, held_out = synthetic_background(seed)
        return source, tuple(val_groups or held_out), "synthetic"
    source = open_source(data if data is not None else omniglot_root(), split=split, strict=strict)
    if isinstance(source, OmniglotSplit):
        name = split or "background"
        return source, tuple(val_groups or VALIDATION_ALPHABETS.get(name, ())), f"omniglot/{name}"
    if not val_groups:
        raise InvalidInputError(f"{describe_source(source)}: name the groups held out for validation (--val-groups)")
    return source, tuple(val_groups), describe_source(source)


def training_data(data=None, split: str | None = None, synthetic: bool = False, seed: int = 0,
                  val_groups: list[str] | None = None, val_classes=None, val_split: str = "classes",
                  rejects: Rejects | None = None) -> TrainingData:
    """Open the training source, scan it for bad files and choose the validation rows (see :func:`hold_out`).

    The scan decodes every image once: files that cannot be used are left out and recorded in
    ``rejects`` under its policy (default: skip them; ``fail`` stops at the first).
    """
    rejects = rejects if rejects is not None else Rejects()
    strict = rejects.policy.fail
    if synthetic or (data is None and not val_classes and val_split == "classes"):
        source, groups, described = training_source(data, split, synthetic, seed, val_groups, strict=strict)
        source = scan_source(source, rejects)
        held, why = hold_out(source.table, val_groups=groups)
        return TrainingData(source, held, described, why)
    source = scan_source(open_source(data if data is not None else omniglot_root(), split=split, strict=strict),
                         rejects)
    if isinstance(source, OmniglotSplit):
        described = f"omniglot/{split or 'background'}"
        if not val_groups and not val_classes and val_split == "classes":
            val_groups = list(VALIDATION_ALPHABETS.get(split or "background", ()))
    else:
        described = describe_source(source)
    held, why = hold_out(source.table, val_groups, val_classes, val_split, seed)
    return TrainingData(source, held, described, why)


def choose_recipe(source: ImageSource, rows: np.ndarray, recipe: str | dict | None, seed: int = 0) -> tuple[Recipe, str]:
    """The recipe to train with: given (``handwriting``, ``photo``, ``photo-colour``, or a dict),
    or inferred from a seeded sample of the training images' pixels. Photos get per-channel
    mean/std measured on that sample. Returns (recipe, how it was chosen)."""
    size = None
    if isinstance(recipe, dict):
        if set(recipe) - {"size"}:
            return Recipe.from_dict(recipe), "given in the training options"
        size, recipe = recipe.get("size"), None
    rng = np.random.default_rng(seed)
    sample = rng.choice(rows, min(RECIPE_SAMPLE, len(rows)), replace=False)
    paths = list(source.table["path"].to_numpy()[np.sort(sample)])
    images = read_images(source, paths, color=True)
    if recipe is None:
        chosen, reason = infer_recipe(images, size)
        reason = "inferred: " + reason
        if chosen.kind == "photo":
            shipped, why = choose_shipped_model(images)
            if shipped == FACE_MODEL:
                return load_model(FACE_MODEL).recipe, f"inferred: face photos ({why.split(': ', 1)[1]})"
    elif recipe in ("face", "face-crop"):  # face-crop: the photos are already face crops (no detection)
        face = load_model(FACE_MODEL).recipe
        if recipe == "face-crop":
            face = Recipe.from_dict({**face.to_dict(), "faces": "whole"})
        return face, f"given (--recipe {recipe})"
    else:
        kind, _, colour = str(recipe).partition("-")
        chosen, reason = recipe_for(kind, colour == "colour", size), f"given (--recipe {recipe})"
    chosen, canvas = with_canvas(chosen, images)
    return with_normalisation(chosen, images), reason + (f"; {canvas}" if canvas else "")


ARCHITECTURE_KEYS = ("backbone", "dim", "backbone_options")


def _starting_model(init: str | None, recipe: Recipe, options: dict, keep_defaults: bool) -> tuple[str | None, str]:
    """The model a run starts from, and why: ``--init`` as given (``none``: from scratch); else, for
    a gallery of handwriting, the shipped handwriting model, which was trained on handwriting with the
    same recipe: the default when the run names no architecture (it then takes the default's), or
    the shipped one with the architecture the run names. Omniglot, the synthetic set and ``--config``
    runs start from scratch unless told otherwise."""
    if init == "none":
        return None, "from scratch (--init none)"
    if init is not None:
        return init, f"from {init!r} (--init)"
    if recipe.kind == "face" and not keep_defaults:
        return "face", ("from the shipped face model (every layer, --tune all; kept unless a validated step beats it "
                        "on the held-out people by more than the noise across them; --init none trains from scratch)")
    if keep_defaults or recipe.kind != "handwriting" or recipe.channels != 1:
        return None, ""
    kept = "the best of it and each validated step is kept; --init none trains from scratch"
    if not any(key in options for key in ARCHITECTURE_KEYS):
        return "default", f"from the shipped handwriting model (the start for handwriting galleries; {kept})"
    asked = _architecture(TrainConfig.from_dict({k: v for k, v in options.items()
                                                 if k in TrainConfig.__dataclass_fields__}).__dict__)
    for name, path in HANDWRITING_MODELS.items():
        if _architecture(read_model_config(path)["model"]) == asked:
            which = "the shipped handwriting model" + ("" if name == "default" else f" {name!r}")
            return name, f"from {which}, which has the architecture asked for ({kept})"
    return None, ""


def _architecture(settings: dict) -> dict:
    """The backbone, dimension and backbone options of a model config or training config."""
    return {"backbone": settings["backbone"], "dim": settings["dim"],
            "backbone_options": dict(settings.get("backbone_options") or {})}


def _take_starting_architecture(options: dict, start: dict | None) -> None:
    """A run that starts from a model (``start``: its file's config) and names no architecture takes
    the model's (in ``options``)."""
    if start is None or any(key in options for key in ARCHITECTURE_KEYS):
        return
    options.update(_architecture(start["model"]))


def _init_model(init: str | None) -> Embedder | None:
    if init is None:
        return None
    return load_model(DEFAULT_MODEL if init == "default" else init)


#: What ``train`` tunes when it starts from a model: ``last-layer`` (:mod:`~oneshot.pipelines.jobs.last_layer`,
#: the default for face galleries) or ``all`` (every layer, the training loop).
TUNES = ("last-layer", "all")

#: A face gallery's run with ``--tune all`` (fine-tuning the 150x150 face ResNet, ~0.6 s a step of 64 photos on 2 cores):
#: 16 people x 4 photos a step, validated every 25 steps on 2,000 seeded episodes; a step replaces
#: the start only when its gain, paired over the held-out people, exceeds 1.96 standard errors
#: across them (:meth:`~oneshot.pipelines.evaluation.validation.OneShotValidation.paired_noise`). The rate,
#: 1e-5, was chosen on the held-out validation people of a training gallery (Extended Yale B people
#: 1-21, README "Faces"): at 1e-4 every validated step fell below the start (0.96 -> 0.82-0.94), at
#: 1e-5 they rose above it (0.98).
FACE_GALLERY_DEFAULTS = dict(steps=300, max_seconds=480.0, classes_per_batch=16, items_per_class=4, val_every=25,
                             warmup_steps=20, val_episodes=2000, backbone="face-resnet29", dim=None,
                             backbone_options={}, lr=1e-5)


def calibrate_model_thresholds(model: Embedder, val_set: LabelledImages, forged: np.ndarray | None,
                               described: str, seed: int = 0) -> dict:
    """The model's thresholds on its (already preprocessed) validation images."""
    embeddings = encode(model, val_set.images, batch_size=512, show_progress=False)
    return calibrate_thresholds(embeddings, val_set.labels, model.metric, described, seed=seed, forged=forged,
                                groups=val_set.groups)


def _validation_way(val_set: LabelledImages, wanted: int) -> tuple[int, bool]:
    """N-way of validation episodes: the configured N, or fewer when validation has fewer classes."""
    table = pd.DataFrame({"label": val_set.labels, "group": val_set.groups})
    counts = table.groupby("label").size()
    eligible = table[table["label"].isin(counts[counts >= 2].index)]
    per_group = eligible.groupby("group")["label"].nunique()
    total = eligible["label"].nunique()
    if total < 2:
        raise InvalidInputError("validation has fewer than 2 classes with 2 images each; hold out more "
                                "(--val-classes N) or use --val-split images")
    if per_group.max() >= min(wanted, total):
        return min(wanted, int(per_group.max())), True
    return min(wanted, total), False


def train_from_cli(out: str | os.PathLike, options: dict, data: str | None = None, split: str | None = None,
                   synthetic: bool = False, val_alphabets: list[str] | None = None, resume: bool = True,
                   command: str | None = None, show_progress: bool | None = None, val_classes=None,
                   val_split: str = "classes", recipe: str | None = None, augment: str | None = None,
                   init: str | None = None, from_config_file: bool = False, on_recipe=None,
                   rejects: Rejects | None = None, tune: str | None = None) -> TrainResult:
    """Train on any image source (``data`` or ``$OMNIGLOT_DIR``) or, with ``synthetic``, the synthetic alphabets.

    Options not given take defaults suited to the data: the recipe from its pixels (printed and
    stored), the augmentation preset of that recipe, no 90-degree rotations unless asked, and for
    galleries other than Omniglot and the synthetic set (without ``--config``) a short run
    (:func:`gallery_defaults`). A face gallery starting from the face model tunes only its last
    layer, validated by folds over its people (``tune="last-layer"``, :mod:`.last_layer`); ``tune="all"``
    fine-tunes every layer. Files that cannot be read are left out and listed in
    ``out/rejects.csv`` under ``rejects``' policy; a lock refuses a second run writing ``out``.
    """
    rejects = rejects if rejects is not None else Rejects()
    Path(out).mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        return _train(out, dict(options), data, split, synthetic, val_alphabets, resume, command, show_progress,
                      val_classes, val_split, recipe, augment, init, from_config_file, on_recipe, rejects, tune)


def _choose_tune(tune: str | None, recipe: Recipe, init: str | None, keep_defaults: bool) -> str:
    """``last-layer`` for a face gallery starting from the face model (unless ``--config``), else ``all``."""
    if tune is not None and tune not in TUNES:
        raise InvalidInputError(f"tune must be one of {TUNES}, got {tune!r}")
    if tune == "last-layer" and init in (None, "none"):
        raise InvalidInputError("--tune last-layer tunes a starting model's last layer: give --init (a model file, "
                                "'default' or 'face')")
    if tune is not None:
        return tune
    return "last-layer" if recipe.kind == "face" and init == "face" and not keep_defaults else "all"


def _train(out, options: dict, data, split, synthetic, val_alphabets, resume, command, show_progress, val_classes,
           val_split, recipe, augment, init, from_config_file, on_recipe, rejects: Rejects, tune=None) -> TrainResult:
    found = training_data(data, split, synthetic, options.get("seed", 0), val_alphabets, val_classes, val_split,
                          rejects)
    rejects.write(Path(out) / "rejects.csv")
    source, table = found.source, found.source.table
    chosen, how = choose_recipe(source, np.flatnonzero(~found.held), options.pop("recipe", None) if recipe is None else recipe,
                                options.get("seed", 0))
    log.info("recipe: %s -> %s", how, chosen.to_dict())
    if on_recipe is not None:
        on_recipe(f"recipe {how}")
    options["recipe"] = chosen.to_dict()
    if augment is not None or "augment" not in options:
        preset = augment or ("photo" if chosen.kind in ("photo", "face") else "handwriting")
        options["augment"] = AugmentConfig.preset(preset).to_dict()
    options.setdefault("rotations", False)
    if options["rotations"] and chosen.kind != "handwriting":
        raise InvalidInputError("90-degree rotations as new classes are for handwriting only; drop --rotations")
    if options.get("reflections") and chosen.kind != "handwriting":
        raise InvalidInputError("mirror images as new classes are for handwriting only; drop --reflections")
    standard = synthetic or isinstance(source, (OmniglotSplit, SyntheticSet))
    face_start = "face" if chosen.kind == "face" and not (standard or from_config_file) else None
    tune = _choose_tune(tune, chosen, init if init is not None else face_start, standard or from_config_file)
    if tune == "last-layer":
        return _train_last_layer(out, options, found, chosen, how, init if init is not None else face_start,
                                 command, on_recipe, rejects)
    if not from_config_file and not standard:
        defaults = FACE_GALLERY_DEFAULTS if chosen.kind == "face" else gallery_defaults(chosen)
        for key, value in defaults.items():
            options.setdefault(key, value)
    init, init_reason = _starting_model(init, chosen, options, standard or from_config_file)
    start = read_model_config(model_path(init)) if init is not None else None
    _take_starting_architecture(options, start)
    if init is not None and not from_config_file:
        options.setdefault("lr", FINE_TUNE_LR)
    if on_recipe is not None and init_reason:
        on_recipe(f"start {init_reason}")
    n_train_classes = table.loc[~found.held, "label"].nunique()
    options.setdefault("classes_per_batch", TrainConfig.classes_per_batch)
    options["classes_per_batch"] = max(2, min(options["classes_per_batch"], n_train_classes))
    read = lambda paths: read_images(source, paths, color=chosen.channels == 3)  # noqa: E731
    config_probe = TrainConfig.from_dict(options)
    train_set, val_set = training_sets(table, read, chosen, found.held, config_probe.rotations, rejects,
                                       config_probe.reflections)
    rejects.write(Path(out) / "rejects.csv")
    forged = table.loc[found.held, "forged"].astype(bool).to_numpy() if has_forgeries(table) else None
    genuine_val = val_set if forged is None else LabelledImages(val_set.images[~forged], val_set.labels[~forged],
                                                                val_set.groups[~forged])
    way, within = _validation_way(genuine_val, config_probe.val_way)
    options["val_way"] = way
    config = TrainConfig.from_dict(options)
    info = {"command": command, "data": found.described_source, "validation": found.described_validation,
            "recipe_choice": how, "init": init, "init_fingerprint": start and start["fingerprint"], "init_choice": init_reason,
            "validation_within_group": within}
    if isinstance(source, OmniglotSplit) or synthetic:
        info["validation_alphabets"] = sorted(set(table.loc[found.held, "group"]))
    validate = OneShotValidation(genuine_val, config.val_way, config.val_episodes, config.seed + 1, within_group=within)
    result = train(config, train_set, validate, out, resume=resume, show_progress=show_progress, info=info,
                   init=_init_model(init))
    described = f"the validation split ({found.described_validation})"
    thresholds = calibrate_model_thresholds(result.model, val_set, forged, described, config.seed)
    if reranks_by_trained_score(result.model):  # a model with a map matcher: also its trained score's threshold
        genuine = ~forged if forged is not None else np.ones(len(val_set.labels), bool)
        thresholds["unknown_reranked"] = calibrate_reranked_unknown(result.model, val_set.images[genuine],
                                                                    val_set.labels[genuine], described, config.seed)
    save_model(result.model, result.model_path, {**result.model.info, "thresholds": thresholds})
    return result


#: Training options that mean nothing to last-layer tuning (they shape the network or its loss).
_WHOLE_NETWORK_OPTIONS = ("objective", "mining", "backbone", "dim", "classes_per_batch", "items_per_class", "teachers")


def _tuning_recipe(own: Recipe, gallery: Recipe) -> Recipe:
    """The recipe a tuned model reads the gallery with: its own (a model's input is fixed), except
    that a face model on face photos takes the gallery's way of finding faces (``face-crop``: no
    detection), and on other photos reads the whole photo at its size."""
    if own.kind != "face":
        return own
    return gallery if gallery.kind == "face" else Recipe.from_dict({**own.to_dict(), "kind": "photo"})


def _train_last_layer(out, options: dict, found: TrainingData, recipe: Recipe, how: str, init: str, command,
                      on_recipe, rejects: Rejects) -> TrainResult:
    """Tune the starting model's last layer on every usable photo, validated by folds over the people
    (:func:`~oneshot.pipelines.jobs.last_layer.tune_last_layer`); thresholds calibrated on people held
    out of a fit. Writes ``out/model.safetensors``, ``history.csv``, ``curves.png`` and ``config.json``."""
    given = sorted(key for key in _WHOLE_NETWORK_OPTIONS if key in options)
    if given:
        raise InvalidInputError(f"{given} are for --tune all (last-layer tuning keeps the network and its loss)")
    if has_forgeries(found.source.table):
        raise InvalidInputError("last-layer tuning has no forgery negatives; use --tune all")
    out, started = Path(out), time.perf_counter()
    settings = LastLayerOptions(seed=int(options.get("seed", 0)))
    if options.get("steps"):  # --steps N: the default checkpoints below N, and N
        settings = replace(settings, steps=tuple(sorted({s for s in settings.steps if s < options["steps"]}
                                                        | {int(options["steps"])})))
    for key in ("lr", "val_episodes"):
        if options.get(key) is not None:
            settings = replace(settings, **{key: options[key]})
    model = _init_model(init)
    start_fingerprint = model.fingerprint
    tuning_recipe = _tuning_recipe(model.recipe, recipe)
    if tuning_recipe != recipe:
        how = f"{how}; tuned with the starting model's own input recipe"
    recipe = model.recipe = tuning_recipe
    noun = "people" if recipe.kind == "face" else "classes"
    if on_recipe is not None:
        named = "the shipped face model" if init == "face" else repr(init)
        on_recipe(f"start from {named}: its last layer tuned on every photo, validated by "
                  f"{settings.repeats} x {settings.folds}-fold cross-validation over the {noun} (kept unless the "
                  "gain beats 1.96 standard errors across them; --tune all fine-tunes every layer)")
    source = found.source
    read = lambda paths: read_images(source, paths, color=recipe.channels == 3)  # noqa: E731
    gallery = gallery_features(model, source.table, read, recipe, rejects.add)
    rejects.write(out / "rejects.csv")
    found_tuning = tune_last_layer(model, gallery, settings, noun)
    vectors, labels, calibrated_on = found_tuning.calibration
    thresholds = calibrate_thresholds(vectors, labels, "cosine", calibrated_on, seed=settings.seed)
    r = found_tuning
    if r.step:
        summary = (f"last layer tuned for {r.step} steps: {r.way}-way 1-shot {r.start_accuracy:.4f} -> {r.accuracy:.4f} "
                   f"(gain {r.gain:+.4f} > noise {r.noise:.4f}, 1.96 standard errors across the {noun}), {r.described}")
    else:
        summary = (f"kept the start: {r.way}-way 1-shot {r.start_accuracy:.4f}; the best tuned step gained "
                   f"{r.gain:+.4f}, within the noise {r.noise:.4f} (1.96 standard errors across the {noun}), "
                   f"{r.described}")
    seconds = time.perf_counter() - started
    info = {**{k: v for k, v in model.info.items() if k not in ("thresholds",)},
            "command": command, "data": found.described_source, "recipe_choice": how, "init": init,
            "init_fingerprint": start_fingerprint, "validation": r.described,
            "tuning": {"tune": "last-layer", "summary": summary, "step": r.step, "gain": r.gain, "noise": r.noise,
                       "options": asdict(settings)},
            "train_config": {"val_way": r.way, "val_episodes": settings.val_episodes, "seed": settings.seed},
            "start_accuracy": r.start_accuracy, "val_noise": r.noise, "val_accuracy": r.accuracy,
            "step": r.step, "steps_run": max(settings.steps), "train_seconds": round(seconds, 1),
            "thresholds": thresholds}
    model_path = out / "model.safetensors"
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps({"tune": "last-layer", **asdict(settings)}, indent=2) + "\n")
    write_curves(r.history, out)
    save_model(r.model, model_path, info)
    return TrainResult(load_model(model_path), r.history, r.accuracy, r.step, seconds, model_path)


def lake_errors(data: str | os.PathLike | None = None, model=None, tta: bool = False) -> pd.DataFrame:
    """Per-run error of a model (file, ``Embedder`` or ``None`` for the shipped one) on Lake's runs."""
    model = as_model(model)
    runs = read_lake_runs(data if data is not None else omniglot_root())
    return lake_run_errors(runs, lambda images: encode(model, images, tta=tta, show_progress=False), model.metric)
