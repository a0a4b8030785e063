"""Glue between data sources and the training loop, used by ``oneshot train`` and the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from oneshot.data.lake_runs import read_lake_runs
from oneshot.data.omniglot import OmniglotSplit, omniglot_root
from oneshot.data.source import ImageSource, describe_source, open_source
from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.artifact import load_model
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.encode import encode
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.train import TrainConfig, TrainResult, train
from oneshot.errors import InvalidInputError
from oneshot.pipelines.evaluate import lake_run_errors
from oneshot.pipelines.locks import exclusive_lock
from oneshot.pipelines.rejects import Rejects, read_source
from oneshot.pipelines.validation import OneShotValidation

#: Background alphabets held out for validation (never trained on), per Omniglot split.
VALIDATION_ALPHABETS = {
    "background": ("Bengali", "Futurama", "Greek", "Japanese_(katakana)"),
    "small1": ("Greek",),
    "small2": ("Greek",),
}


SYNTHETIC_BACKGROUND = dict(n_alphabets=16, characters_per_alphabet=20)


def synthetic_background(seed: int):
    """The synthetic training alphabets and the three held out for validation: (SyntheticSet, names)."""
    source = make_alphabets(**SYNTHETIC_BACKGROUND, seed=seed, prefix="background")
    return source, tuple(sorted(source.table["group"].unique())[-3:])


def training_sets(table: pd.DataFrame, read, recipe: Recipe, validation: tuple[str, ...],
                  rotations: bool) -> tuple[LabelledImages, LabelledImages]:
    """Split a table by group into (training, validation) image sets."""
    held = table["group"].isin(validation)
    missing = set(validation) - set(table["group"])
    if missing:
        raise InvalidInputError(f"validation alphabets not in the data: {sorted(missing)}")
    if held.all() or not held.any():
        raise InvalidInputError("validation must hold out some, but not all, alphabets")
    return (LabelledImages.from_table(table[~held], read, recipe, rotations),
            LabelledImages.from_table(table[held], read, recipe))


def training_source(data: str | os.PathLike | ImageSource | None = None, split: str | None = None,
                    synthetic: bool = False, seed: int = 0, val_groups: list[str] | None = None,
                    strict: bool = True) -> tuple[ImageSource, tuple[str, ...], str]:
    """Where training images come from and which groups validation holds out.

    Args:
        data: any source :func:`~oneshot.data.source.open_source` reads; ``None`` means
            ``$OMNIGLOT_DIR``, or the synthetic alphabets with ``synthetic``.
        split: the Omniglot or MNIST split (Omniglot's ``background`` by default).
        val_groups: groups held out for validation; default: Omniglot's four validation
            alphabets, the synthetic set's last three.
    Returns:
        (source, validation groups, a short description for the model file).
    """
    if synthetic:
        source, held_out = synthetic_background(seed)
        return source, tuple(val_groups or held_out), "synthetic"
    source = open_source(data if data is not None else omniglot_root(), split=split, strict=strict)
    if isinstance(source, OmniglotSplit):
        name = split or "background"
        default = VALIDATION_ALPHABETS.get(name, ())
        return source, tuple(val_groups or default), f"omniglot/{name}"
    if not val_groups:
        raise InvalidInputError(f"{describe_source(source)}: name the groups held out for validation "
                                "(--val-alphabets)")
    return source, tuple(val_groups), describe_source(source)


def train_from_cli(out: str | os.PathLike, options: dict, data: str | None = None, split: str | None = None,
                   synthetic: bool = False, val_alphabets: list[str] | None = None, resume: bool = True,
                   command: str | None = None, show_progress: bool | None = None,
                   rejects: Rejects | None = None) -> TrainResult:
    """Train on any image source (``data`` or ``$OMNIGLOT_DIR``) or, with ``synthetic``, the synthetic alphabets.

    The data scan reads every image once: files that cannot be read are left out and listed in
    ``out/rejects.csv`` under ``rejects``' policy (default: skip them; ``fail`` stops at the first).
    """
    config = TrainConfig.from_dict(options)
    recipe = Recipe.from_dict(config.recipe)
    rejects = rejects if rejects is not None else Rejects()
    Path(out).mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        source, validation, described = training_source(data, split, synthetic, config.seed, val_alphabets,
                                                        strict=rejects.policy.fail)
        table, images = read_source(source, rejects)
        rejects.write(Path(out) / "rejects.csv")
        train_set, val_set = training_sets(table, lambda paths: [images[p] for p in paths], recipe, validation,
                                           config.rotations)
        del images
        info = {"command": command, "data": described, "validation_alphabets": list(validation)}
        validate = OneShotValidation.from_config(val_set, config)
        return train(config, train_set, validate, out, resume=resume, show_progress=show_progress, info=info)


def lake_errors(data: str | os.PathLike | None = None, model=None, tta: bool = False) -> pd.DataFrame:
    """Per-run error of a model (file, ``Embedder`` or ``None`` for the shipped one) on Lake's runs."""
    model = model if isinstance(model, Embedder) else load_model(model)
    runs = read_lake_runs(data if data is not None else omniglot_root())
    return lake_run_errors(runs, lambda images: encode(model, images, tta=tta, show_progress=False), model.metric)
