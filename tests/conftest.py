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
