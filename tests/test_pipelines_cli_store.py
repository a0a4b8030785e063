"""CLI tests for store folders: embed --append, store info/remove/compact/migrate, downstream commands."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner

from oneshot.index.store import read_embeddings, write_embeddings
from oneshot.pipelines.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def test_store_lifecycle_through_the_cli(tmp_path, synthetic_gallery, tiny_model_path):
    store = tmp_path / "g.parquet"
    run("embed", synthetic_gallery, "--out", store, "--model", tiny_model_path, "--shard-rows", "16")
    assert "appended; 0 images encoded" in run("embed", synthetic_gallery, "--out", store, "--model",
                                               tiny_model_path, "--append").output
    info = json.loads(run("store", "info", store).output)
    assert info["rows"] == 60 and info["shards"] == 4 and info["labels"] == 10
    label = read_embeddings(store).table["label"].iloc[0]
    paths = tmp_path / "leavers.txt"
    paths.write_text(read_embeddings(store).table["path"].iloc[-1] + "\n")
    assert "removed 7 rows" in run("store", "remove", store, "--label", label, "--paths", paths).output
    assert "4 shards -> 3" in run("store", "compact", store, "--shard-rows", "20").output
    stored = read_embeddings(store)
    assert len(stored) == 53 and label not in set(stored.table["label"])
    # downstream commands read the folder
    run("index", "build", store, "--out", tmp_path / "g.faiss")
    assert "accuracy" in run("eval", store, "--way", "5", "--episodes", "20", "--within-group").output
    answers = tmp_path / "answers"
    out = run("identify", store, "--index", tmp_path / "g.faiss", "--top", "2", "--out", answers)
    assert "wrote 53 answers" in out.output
    frame = pd.read_parquet(answers)
    assert (frame["label"] == frame["true_label"]).all() and frame["candidates"].map(len).eq(2).all()


def test_migrate_then_read_everywhere(tmp_path):
    table = pd.DataFrame({"id": np.arange(5), "path": [f"c/{i}.png" for i in range(5)], "label": "c", "group": ""})
    vectors = np.eye(5, 4, dtype=np.float32) + 0.1
    old = write_embeddings(tmp_path / "old.parquet", table, vectors)
    out = tmp_path / "new.parquet"
    assert "migrated 5 rows into 3 shards" in run("store", "migrate", old, "--out", out, "--shard-rows", "2").output
    np.testing.assert_array_equal(read_embeddings(out).embeddings, read_embeddings(old).embeddings)
    assert json.loads(run("store", "info", old).output)["layout"] == "single-file"


def test_bf16_through_the_cli(tmp_path, synthetic_gallery, tiny_model_path):
    store = tmp_path / "b.parquet"
    run("embed", synthetic_gallery, "--out", store, "--model", tiny_model_path, "--precision", "bf16")
    assert json.loads((store / "_oneshot.json").read_text())["job"]["precision"] == "bfloat16"
    refused = CliRunner().invoke(main, ["embed", str(synthetic_gallery), "--out", str(store), "--model",
                                        str(tiny_model_path), "--append"])
    assert refused.exit_code != 0 and "--precision bf16" in refused.output
    run("index", "build", store, "--out", tmp_path / "b.faiss")
    answers = tmp_path / "answers.jsonl"
    run("identify", synthetic_gallery, "--index", tmp_path / "b.faiss", "--model", tiny_model_path,
        "--precision", "bfloat16", "--threshold", "none", "--out", answers)  # inference's own spelling too
    frame = pd.read_json(answers, lines=True)
    assert len(frame) == 60 and (frame["label"] == frame["true_label"]).mean() >= 0.9
