"""Shared fixtures: where the real Omniglot data lives."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The Omniglot folder named by ``$OMNIGLOT_DIR`` (relative paths from the working directory).

    Skips the test (with the reason) only when the variable is unset. When it is set but names no
    folder, or a folder without the Omniglot zips or split folders, the test FAILS: a CI job that
    sets a wrong path must not go green without the real-data tests.
    """
    value = os.environ.get("OMNIGLOT_DIR")
    if not value:
        pytest.skip("OMNIGLOT_DIR is not set; these tests need the real Omniglot zips")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        pytest.fail(f"OMNIGLOT_DIR={value!r} is set but is not a folder; fix it or unset it to skip "
                    "the real-data tests", pytrace=False)
    expected = ("images_background", "images_evaluation")
    if not any((path / name).exists() or (path / f"{name}.zip").exists() for name in expected):
        pytest.fail(f"OMNIGLOT_DIR={value!r} is set but holds neither {expected[0]}(.zip) nor "
                    f"{expected[1]}(.zip); fix it or unset it to skip the real-data tests", pytrace=False)
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny, deterministic, untrained embedder saved as a model file (conv, 16x16 in, 8-D out)."""
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    torch.manual_seed(0)
    model = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
    return save_model(model, tmp_path_factory.mktemp("tiny_model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def synthetic_gallery(tmp_path_factory) -> Path:
    """A labelled gallery folder ``group/class/image``: 2 alphabets x 5 characters x 6 drawers (60 PNGs)."""
    from oneshot.data.synthetic import make_alphabets

    return make_alphabets(2, 5, drawers=6, seed=3).write(tmp_path_factory.mktemp("synthetic") / "gallery")


@pytest.fixture(scope="module")
def tiny_training_sets():
    """(train, val) LabelledImages at 16 px: train 2 synthetic alphabets x 5 characters x 4 drawers with
    rotations (40 virtual classes), val 1 alphabet; one pair per test module."""
    from oneshot.data.synthetic import make_alphabets
    from oneshot.embedder.dataset import LabelledImages
    from oneshot.embedder.preprocess import Recipe

    train_set = make_alphabets(2, 5, drawers=4, seed=0)
    val_set = make_alphabets(1, 5, drawers=4, seed=0, prefix="val")
    return (LabelledImages.from_table(train_set.table, train_set.read, Recipe(size=16), rotations=True),
            LabelledImages.from_table(val_set.table, val_set.read, Recipe(size=16)))


@pytest.fixture()
def tiny_train_config(tmp_path):
    """Write a training config for a seconds-long run (a tiny conv net, 16x16 input); returns a
    function ``(steps) -> path of the JSON file``."""
    def write(steps: int) -> Path:
        config = tmp_path / "tiny.json"
        config.write_text(json.dumps({
            "backbone": "conv", "backbone_options": {"channels": 4, "blocks": 2}, "dim": 8, "recipe": {"size": 16},
            "steps": steps, "val_every": 2, "checkpoint_every": 2, "classes_per_batch": 3, "items_per_class": 2,
            "val_episodes": 5, "val_way": 3}))
        return config
    return write
