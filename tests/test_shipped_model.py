"""The shipped default model: provenance in its file, and its error on Lake's official runs
stays within one point of the figure the README states."""
from __future__ import annotations

import re
from pathlib import Path

from oneshot.embedder.artifact import DEFAULT_MODEL, load_model, read_model_config
from oneshot.pipelines.jobs.train import lake_errors

README = Path(__file__).resolve().parents[1] / "README.md"
STATED = re.compile(r"shipped model's error on Lake's 20 official runs: \*\*([0-9.]+)%\*\*")


def stated_error_percent() -> float:
    match = STATED.search(README.read_text())
    if match is None:
        raise AssertionError(f"{README}: no sentence 'shipped model's error on Lake's 20 official runs: **X%**'")
    return float(match.group(1))


def test_shipped_model_records_how_it_was_trained():
    config = read_model_config(DEFAULT_MODEL)
    info = config["info"]
    assert info["command"].startswith("oneshot train ")
    assert isinstance(info["seed"], int)
    assert 0 < info["train_seconds"] <= 30 * 60
    assert info["data"] == "omniglot/background"
    assert DEFAULT_MODEL.stat().st_size < 5 * 2**20


def test_shipped_model_error_on_lake_runs_matches_readme(omniglot_dir):
    table = lake_errors(omniglot_dir, load_model())
    assert table["trials"].sum() == 400
    measured = 100 * table["error_rate"].mean()
    assert abs(measured - stated_error_percent()) <= 1.0, f"measured {measured:.2f}% error"
