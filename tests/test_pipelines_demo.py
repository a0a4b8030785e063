"""Tests for pipelines.jobs.demo: the whole job on the synthetic default, and its summary table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneshot.embedder.artifact import load_model
from oneshot.index.store import read_embeddings
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.jobs.demo import format_summary, run_demo

SCORES = ("oneshot_accuracy", "knn_accuracy", "ari", "nmi")


@pytest.mark.slow
def test_run_demo_synthetic(tmp_path):
    summary = run_demo(tmp_path, steps=3, episodes=50, show_progress=False)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["data"] == "synthetic" and summary["train_steps"] == 3
    assert set(summary["scores"]) == {"embedder", "raw pixels"}
    for name, scores in summary["scores"].items():
        for key in SCORES:
            assert 0.0 <= scores[key] <= 1.0, (name, key, scores[key])
    assert summary["gallery"] == {"images": 2000, "classes": 100, "groups": 5}

    files = summary["files"]
    assert Path(files["model"]) == tmp_path / "model" / "model.safetensors"
    assert Path(files["store"]) == tmp_path / "gallery.parquet"
    assert Path(files["index"]) == tmp_path / "gallery.faiss"
    model = load_model(files["model"])
    store = read_embeddings(files["store"])
    index = VectorIndex.load(files["index"])
    assert len(store) == len(index) == 2000
    assert store.metadata["model_fingerprint"] == model.fingerprint
    assert (tmp_path / "gallery.faiss.meta.parquet").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    assert set(summary["seconds"]) == {"data", "train", "embed_and_index", "pipelines", "report", "total"}
    report = Path(files["report"])
    assert report == tmp_path / "report.html" and "<h2>Training curves</h2>" in report.read_text()
    assert "No training history" not in report.read_text()  # the demo's history.csv is drawn
    print(f"run_demo(steps=3, episodes=50) seconds: {summary['seconds']}")


def test_format_summary_has_both_rows():
    summary = {
        "scores": {"embedder": {"oneshot_accuracy": 0.9123, "knn_accuracy": 0.8, "ari": 0.5, "nmi": 0.75},
                   "raw pixels": {"oneshot_accuracy": 0.25, "knn_accuracy": 0.3, "ari": 0.05, "nmi": 0.4}},
        "gallery": {"images": 2000, "classes": 100, "groups": 5},
        "seconds": {"total": 42.4},
    }
    text = format_summary(summary)
    lines = text.splitlines()
    assert "20-way 1-shot" in lines[0] and "ARI" in lines[0] and "NMI" in lines[0]
    assert lines[1].split() == ["embedder", "0.912", "0.800", "0.500", "0.750"]
    assert lines[2].split() == ["raw", "pixels", "0.250", "0.300", "0.050", "0.400"]
    assert "2000 images, 100 classes" in lines[3] and "5 alphabets" in lines[3] and "42 s" in lines[3]
