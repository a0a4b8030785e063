"""Shared fixtures: where the real Omniglot data lives."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The Omniglot folder named by ``$OMNIGLOT_DIR`` (relative paths from the working directory).

    Skips the test when the variable is unset or the folder is missing.
    """
    value = os.environ.get("OMNIGLOT_DIR")
    if not value:
        pytest.skip("OMNIGLOT_DIR is not set; these tests need the real Omniglot zips")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        pytest.skip(f"OMNIGLOT_DIR={value!r} is not a folder; these tests need the real Omniglot zips")
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
