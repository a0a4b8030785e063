"""SIGKILL at several points of embed, index build and train: files on disk stay good, a re-run completes.

The kills happen in a separate process (tests/_crash_driver.py) that imports the libraries once
and forks one child per kill point; after each kill the output folder is snapshotted. Each file
found under its final name must be either the old good one or a new good one; re-running the same
command must then complete and leave no temporary files or locks behind.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from oneshot.embedder.artifact import load_model
from oneshot.embedder.train import load_checkpoint
from oneshot.errors import CorruptFileError
from oneshot.index.store import read_embeddings
from oneshot.index.vector_index import VectorIndex, sidecar_path
from oneshot.pipelines.cli import main

DRIVER = Path(__file__).with_name("_crash_driver.py")
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash driver forks (POSIX only)")


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def drive(watched: Path, snapshots: Path, points: list[str], *args) -> list[Path]:
    """Run the command under the driver; return one snapshot folder per kill point (all killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(DRIVER), str(watched), str(snapshots), *points, "--",
                             *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((snapshots / "status.json").read_text())
    assert [s["point"] for s in status] == points
    assert all(s["killed"] for s in status), status
    return [snapshots / str(i) for i in range(len(points))]


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def no_leftovers(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files, no lock


def subset(gallery: Path, tmp_path: Path) -> Path:
    """The first group of a gallery only: to make an 'old' output that differs from the new one."""
    small = tmp_path / "small"
    first = sorted(gallery.iterdir())[0]
    shutil.copytree(first, small / first.name)
    return small


def test_embed_killed_anywhere_resumes_to_the_same_store(tmp_path, synthetic_gallery, tiny_model_path):
    """A store folder commits shard by shard, its manifest last: after a kill at any point the same
    command continues it to the store an uninterrupted run makes, and leaves no temporary file."""
    args = ["--model", tiny_model_path, "--shard-rows", 16, "--batch-size", 8]
    cli("embed", synthetic_gallery, "--out", tmp_path / "ref" / "g.parquet", *args)
    reference = read_embeddings(tmp_path / "ref" / "g.parquet")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    store = out_dir / "g.parquet"
    # 60 images in shards of 16: each shard is written under a temporary name and renamed, then the
    # manifest is replaced; kill inside a shard write, before a rename and after a commit.
    points = ["write_table:2:after", "replace:3:before", "replace:6:after"]
    snapshots = drive(out_dir, tmp_path / "snaps", points, "embed", synthetic_gallery, "--out", store, *args)
    for snapshot, point in zip(snapshots, points):
        cli("embed", synthetic_gallery, "--out", snapshot / "g.parquet", *args)  # the same command again
        resumed = read_embeddings(snapshot / "g.parquet")
        order_a, order_b = np.argsort(reference.table["id"].to_numpy()), np.argsort(resumed.table["id"].to_numpy())
        assert np.array_equal(reference.table["id"].to_numpy()[order_a], resumed.table["id"].to_numpy()[order_b]), point
        np.testing.assert_allclose(reference.embeddings[order_a], resumed.embeddings[order_b], atol=1e-6)
        no_leftovers(snapshot)
        assert not [p for p in (snapshot / "g.parquet").iterdir() if p.name.startswith(".")], point


def test_index_build_killed_anywhere_leaves_good_files(tmp_path, synthetic_gallery, tiny_model_path):
    stores = tmp_path / "stores"
    stores.mkdir()
    cli("embed", synthetic_gallery, "--out", stores / "new.parquet", "--model", tiny_model_path)
    cli("embed", subset(synthetic_gallery, tmp_path), "--out", stores / "old.parquet", "--model", tiny_model_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    index = out_dir / "g.faiss"
    cli("index", "build", stores / "old.parquet", "--out", index)
    old = {index.name: index.read_bytes(), sidecar_path(index).name: sidecar_path(index).read_bytes()}
    # 1: the new index written under a temporary name; 2: the new sidecar renamed into place, the
    # index not yet (between the two renames); 3: both renamed
    points = ["write_index:1:after", "replace:1:after", "replace:2:after"]
    snapshots = drive(out_dir, tmp_path / "snaps", points, "index", "build", stores / "new.parquet", "--out", index)
    for snapshot, point in zip(snapshots, points):
        assert visible(snapshot) == sorted(old), point
        for name, old_bytes in old.items():
            found = snapshot / name
            if found.read_bytes() == old_bytes:
                continue
            if name.endswith(".faiss"):
                assert faiss.read_index(str(found)).ntotal == 60, point  # a complete new index
            else:
                assert pq.read_table(found).num_rows == 60, point  # a complete new sidecar
        if point == "replace:1:after":  # killed between the two renames: the pair disagrees, and says so
            with pytest.raises(CorruptFileError, match="g.faiss"):
                VectorIndex.load(snapshot / index.name)
        else:  # the old pair or the new one, whole
            assert len(VectorIndex.load(snapshot / index.name)) == (60 if point == "replace:2:after" else 30)
    cli("index", "build", stores / "new.parquet", "--out", index)
    assert len(VectorIndex.load(index)) == 60
    no_leftovers(out_dir)


def test_train_killed_anywhere_resumes_to_completion(tmp_path, synthetic_gallery, tiny_train_config):
    config = tiny_train_config(steps=4)
    run = tmp_path / "run"
    run.mkdir()
    args = ("train", "--data", synthetic_gallery, "--val-alphabets", "synth_a02", "--config", config, "--out", run)
    points = ["train_step:3:before", "torch_save:1:after", "save_file:1:after"]
    snapshots = drive(run, tmp_path / "snaps", points, *args)
    for snapshot, point in zip(snapshots, points):
        assert {"checkpoint.pt", "model.safetensors"} <= set(visible(snapshot)), point
        assert load_checkpoint(snapshot / "checkpoint.pt")["state"]["step"] in (2, 4), point
        assert load_model(snapshot / "model.safetensors").dim == 8, point
    result = cli(*args)
    assert "best validation" in result.output
    assert load_checkpoint(run / "checkpoint.pt")["state"]["step"] == 4
    assert load_model(run / "model.safetensors").info["steps_run"] == 4
    no_leftovers(run)


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, synthetic_gallery, tiny_model_path):
    store = tmp_path / "g.parquet"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from oneshot.locks import exclusive_lock\n"
         f"with exclusive_lock({str(store)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (("embed", synthetic_gallery, "--out", store, "--model", tiny_model_path),):
            result = CliRunner().invoke(main, [str(a) for a in args])
            assert result.exit_code == 1 and "Traceback" not in result.output
            assert "another oneshot process is writing it" in result.stderr and "g.parquet" in result.stderr
        assert not store.exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait(timeout=30)
    time.sleep(0.05)
    cli("embed", synthetic_gallery, "--out", store, "--model", tiny_model_path)
    assert len(read_embeddings(store)) == 60


def test_index_build_refused_while_another_process_writes_it(tmp_path, synthetic_gallery, tiny_model_path):
    store, index = tmp_path / "g.parquet", tmp_path / "g.faiss"
    cli("embed", synthetic_gallery, "--out", store, "--model", tiny_model_path)
    from oneshot.locks import exclusive_lock

    with exclusive_lock(index):  # another open file description: flock refuses it even in-process
        result = CliRunner().invoke(main, ["index", "build", str(store), "--out", str(index)])
    assert result.exit_code == 1 and "another oneshot process is writing it" in result.stderr
    assert not index.exists()
