"""Glue between data sources and the training loop, used by ``oneshot train`` and the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from data.lake_runs import read_lake_runs
from data.omniglot import OmniglotSplit, omniglot_root
from data.synthetic import make_alphabets
from embedder.artifact import load_model
from embedder.dataset import LabelledImages
from embedder.encode import encode
from embedder.model import Embedder
from embedder.preprocess import Recipe
from embedder.train import TrainConfig, TrainResult, train
from pipelines.evaluate import lake_run_errors

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
        raise ValueError(f"validation alphabets not in the data: {sorted(missing)}")
    if held.all() or not held.any():
        raise ValueError("validation must hold out some, but not all, alphabets")
    return (LabelledImages.from_table(table[~held], read, recipe, rotations),
            LabelledImages.from_table(table[held], read, recipe))


def train_from_cli(out: str | os.PathLike, options: dict, data: str | None = None, split: str = "background",
                   synthetic: bool = False, val_alphabets: list[str] | None = None, resume: bool = True,
                   command: str | None = None, show_progress: bool | None = None) -> TrainResult:
    """Train on Omniglot (``data`` or ``$OMNIGLOT_DIR``) or, with ``synthetic``, the synthetic alphabets."""
    config = TrainConfig.from_dict(options)
    recipe = Recipe.from_dict(config.recipe)
    if synthetic:
        source, held_out = synthetic_background(config.seed)
        table, read = source.table, source.read
        validation = tuple(val_alphabets or held_out)
        described = "synthetic"
    else:
        source = OmniglotSplit(omniglot_root(data), split)
        table, read = source.table, source.read
        validation = tuple(val_alphabets or VALIDATION_ALPHABETS[split])
        described = f"omniglot/{split}"
    train_set, val_set = training_sets(table, read, recipe, validation, config.rotations)
    info = {"command": command, "data": described, "validation_alphabets": list(validation)}
    return train(config, train_set, val_set, out, resume=resume, show_progress=show_progress, info=info)


def lake_errors(data: str | os.PathLike | None = None, model=None, tta: bool = False) -> pd.DataFrame:
    """Per-run error of a model (file, ``Embedder`` or ``None`` for the shipped one) on Lake's runs."""
    model = model if isinstance(model, Embedder) else load_model(model)
    runs = read_lake_runs(data if data is not None else omniglot_root())
    return lake_run_errors(runs, lambda images: encode(model, images, tta=tta, show_progress=False), model.metric)
