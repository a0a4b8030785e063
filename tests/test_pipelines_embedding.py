"""Tests for the streaming embed job: shards, stable ids, append, refusals, resume after SIGKILL."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from oneshot.data.source import open_source
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.dataset_store import DatasetStore, path_ids
from oneshot.index.store import read_embeddings
from oneshot.pipelines.engines.local import batch_plan, stream_batches
from oneshot.pipelines.jobs.embed import embed_to_store


@pytest.fixture()
def gallery(tmp_path, synthetic_gallery) -> Path:
    return Path(shutil.copytree(synthetic_gallery, tmp_path / "gallery"))


def test_store_matches_the_eager_encoder_and_ids_come_from_paths(tmp_path, gallery, tiny_model_path):
    result = embed_to_store(gallery, tmp_path / "g.parquet", tiny_model_path, batch_size=7, workers=2, shard_rows=25)
    assert result.action == "created" and result.encoded == 60
    assert [s["rows"] for s in result.store.manifest["shards"]] == [25, 25, 10]
    stored = read_embeddings(tmp_path / "g.parquet")
    source = open_source(gallery)
    assert stored.table["path"].tolist() == source.table["path"].tolist()
    assert stored.table["id"].tolist() == path_ids(source.table["path"]).tolist()
    expected = encode(load_model(tiny_model_path), source.read(list(source.table["path"])))
    cos = (stored.embeddings * expected).sum(1)
    assert cos.min() >= 0.9999
    assert stored.table["content_hash"].str.len().eq(16).all()
    assert stored.metadata["job"]["model_fingerprint"] == load_model(tiny_model_path).fingerprint


def test_same_image_under_two_paths_shares_its_content_hash(tmp_path, gallery, tiny_model_path):
    first = next(gallery.rglob("*.png"))
    shutil.copy(first, first.with_name("copy_of_first.png"))
    stored = read_embeddings(embed_to_store(gallery, tmp_path / "g", tiny_model_path).store.folder)
    hashes = stored.table.set_index("path")["content_hash"]
    rel = first.relative_to(gallery).as_posix()
    assert hashes[rel] == hashes[rel.replace(first.name, "copy_of_first.png")]
    assert stored.table["content_hash"].duplicated().sum() == 1


def test_stream_prepares_batches_in_order_with_any_worker_count(gallery, tiny_model_path):
    source, recipe = open_source(gallery), load_model(tiny_model_path).recipe
    plan = batch_plan(len(source.table), 8, 20)
    assert [stop - start for start, stop in plan] == [8, 8, 4, 8, 8, 4, 8, 8, 4]  # never across a shard
    for workers in (1, 3):
        batches = list(stream_batches(source, source.table, plan, recipe, workers))
        assert pd.concat([b.rows for b in batches])["path"].tolist() == source.table["path"].tolist()


def test_append_encodes_only_new_or_changed_images_and_keeps_ids(tmp_path, gallery, tiny_model_path):
    out = tmp_path / "g.parquet"
    moved = sorted(gallery.rglob("*.png"))[-5:]
    later = tmp_path / "later"
    for path in moved:  # five images arrive later
        target = later / path.relative_to(gallery)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    embed_to_store(gallery, out, tiny_model_path, shard_rows=20)
    before = read_embeddings(out)
    for path in moved:
        shutil.move(later / path.relative_to(gallery), path)
    changed = sorted(gallery.rglob("*.png"))[0]
    image = cv2.imread(str(changed), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(changed), 255 - image)
    result = embed_to_store(gallery, out, tiny_model_path, append=True, shard_rows=20)
    assert result.action == "appended" and result.encoded == 6
    after = read_embeddings(out)
    assert len(after) == 60 and not after.table["id"].duplicated().any()
    assert set(after.table["id"]) == set(path_ids(open_source(gallery).table["path"]))
    old = before.table.set_index("id")
    new = after.table.set_index("id")
    kept = old.index.intersection(new.index)
    changed_id = path_ids([changed.relative_to(gallery).as_posix()])[0]
    assert (old.loc[kept.drop(changed_id), "content_hash"] == new.loc[kept.drop(changed_id), "content_hash"]).all()
    assert old.loc[changed_id, "content_hash"] != new.loc[changed_id, "content_hash"]
    assert embed_to_store(gallery, out, tiny_model_path, append=True).encoded == 0  # nothing new
    assert DatasetStore.open(out).manifest["history"][0]["replaced"] == 1


def test_existing_store_is_refused_unless_resuming_or_appending(tmp_path, gallery, tiny_model_path):
    out = tmp_path / "g.parquet"
    embed_to_store(gallery, out, tiny_model_path)
    with pytest.raises(InvalidInputError, match="already complete.*--append"):
        embed_to_store(gallery, out, tiny_model_path)
    with pytest.raises(InvalidInputError, match="another command.*shard_rows"):
        embed_to_store(gallery, out, tiny_model_path, shard_rows=7)
    with pytest.raises(InvalidInputError, match="no store to append"):
        embed_to_store(gallery, tmp_path / "none", tiny_model_path, append=True)


def test_another_model_is_refused_and_needs_a_new_store(tmp_path, gallery, tiny_model_path):
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    torch.manual_seed(5)
    other = save_model(Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2}),
                       tmp_path / "other.safetensors")
    out = tmp_path / "g.parquet"
    embed_to_store(gallery, out, tiny_model_path)
    for append in (False, True):
        with pytest.raises(ModelMismatchError, match="another model makes a new store"):
            embed_to_store(gallery, out, other, append=append)
    assert len(embed_to_store(gallery, tmp_path / "other.parquet", other).store) == 60


def test_single_file_out_is_refused_with_a_pointer_to_migrate(tmp_path, gallery, tiny_model_path):
    legacy = tmp_path / "old.parquet"
    legacy.write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="store migrate"):
        embed_to_store(gallery, legacy, tiny_model_path)


def _committed(out: Path) -> int:
    try:
        return len(DatasetStore.open(out).manifest["shards"])
    except Exception:  # not created yet, or being replaced
        return 0


def test_killed_embed_resumes_to_the_same_store(tmp_path, tiny_model_path):
    from oneshot.data.synthetic import make_alphabets

    gallery = make_alphabets(3, 5, drawers=10, seed=1).write(tmp_path / "big")  # 150 images
    command = [sys.executable, "-m", "oneshot.pipelines.cli", "embed", str(gallery), "--model", str(tiny_model_path),
               "--batch-size", "1", "--workers", "1", "--shard-rows", "5"]
    reference = tmp_path / "reference.parquet"  # uninterrupted, in this process (one start-up less)
    embed_to_store(gallery, reference, tiny_model_path, batch_size=1, workers=1, shard_rows=5)
    out = tmp_path / "killed.parquet"
    kills = []
    for target in (3, 12, 21):  # kill after at least this many committed shards, mid-run
        process = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and _committed(out) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills.append(_committed(out))
    assert kills and kills[0] < 30, "the job finished before it could be killed"
    finished = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "resumed" in finished.stdout
    want, got = read_embeddings(reference), read_embeddings(out)
    assert got.table.drop(columns=[]).equals(want.table)
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-6)
    assert [s["rows"] for s in DatasetStore.open(out).manifest["shards"]] == [5] * 30
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_device_choice_is_neutral(monkeypatch, tmp_path, gallery, tiny_model_path):
    """CUDA is chosen when present (batch size for it too) and CPU runs explicitly, with one code path."""
    import torch

    from oneshot.embedder import encode as encode_module
    from oneshot.embedder.inference import InferenceModel, choose_batch_size

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert encode_module.default_device().type == "cuda"
    model = load_model(tiny_model_path)
    assert choose_batch_size(model, torch.device("cuda")) == 2048
    monkeypatch.undo()
    engine = InferenceModel(model, device="cpu")
    assert engine.device.type == "cpu" and engine(np.zeros((3, 1, 16, 16), np.float32)).shape == (3, 8)
    result = embed_to_store(gallery, tmp_path / "cpu.parquet", tiny_model_path, device="cpu")
    assert len(result.store) == 60


def test_reembedding_a_store_with_another_model_reads_its_source_images(tmp_path, gallery, tiny_model_path):
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    first = embed_to_store(gallery, tmp_path / "a.parquet", tiny_model_path).store
    torch.manual_seed(6)
    other = save_model(Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2}),
                       tmp_path / "other.safetensors")
    second = embed_to_store(first.folder, tmp_path / "b.parquet", other).store
    a, b = read_embeddings(first.folder), read_embeddings(second.folder)
    assert a.table["id"].tolist() == b.table["id"].tolist()
    assert a.metadata["model_fingerprint"] != b.metadata["model_fingerprint"]
    migrated = tmp_path / "legacy"
    from oneshot.index.dataset_store import migrate_store
    from oneshot.index.store import write_embeddings

    migrate_store(write_embeddings(tmp_path / "old.parquet", a.table.drop(columns="content_hash"), a.embeddings),
                  migrated)
    with pytest.raises(InvalidInputError, match="not made by `oneshot embed`"):
        embed_to_store(gallery, migrated, tiny_model_path, append=True)


def test_a_resumed_embed_keeps_the_rejects_of_the_interrupted_run(tmp_path, gallery, tiny_model_path, monkeypatch):
    from oneshot.pipelines.reading import Rejects

    bad = sorted(gallery.rglob("*.png"))[0]  # in the first shard
    bad.write_bytes(b"<html>not a png</html>")
    out = tmp_path / "store.parquet"
    real_commit, calls = DatasetStore._commit_shard, []

    def commit_then_stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies after committing its first shard
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(DatasetStore, "_commit_shard", commit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        embed_to_store(gallery, out, tiny_model_path, batch_size=8, shard_rows=16, show_progress=False)
    monkeypatch.setattr(DatasetStore, "_commit_shard", real_commit)
    rejects = Rejects()
    result = embed_to_store(gallery, out, tiny_model_path, batch_size=8, shard_rows=16, show_progress=False,
                            rejects=rejects)
    assert result.action == "resumed"
    listed = pd.read_csv(str(out) + ".rejects.csv")
    assert listed["path"].tolist() == [bad.relative_to(gallery).as_posix()]
    assert len(result.store) == len(open_source(gallery).table) - 1


def test_bfloat16_store_records_its_precision_and_appends_only_in_it(tmp_path, gallery, tiny_model_path):
    full = embed_to_store(gallery, tmp_path / "f.parquet", tiny_model_path)
    out = tmp_path / "b.parquet"
    half = embed_to_store(gallery, out, tiny_model_path, precision="bfloat16")
    assert half.store.manifest["job"]["precision"] == "bfloat16"
    assert "precision" not in full.store.manifest["job"]  # float32 stores keep their old job record
    a, b = read_embeddings(tmp_path / "f.parquet"), read_embeddings(out)
    assert (a.table["id"].to_numpy() == b.table["id"].to_numpy()).all()
    assert ((a.embeddings * b.embeddings).sum(1) >= 0.99).all()
    with pytest.raises(InvalidInputError, match="another precision.*--precision bf16"):
        embed_to_store(gallery, out, tiny_model_path, append=True)
    with pytest.raises(InvalidInputError, match="another command.*precision"):
        embed_to_store(gallery, tmp_path / "f.parquet", tiny_model_path, precision="bfloat16")
    assert embed_to_store(gallery, out, tiny_model_path, append=True, precision="bfloat16").encoded == 0
    with pytest.raises(InvalidInputError, match="precision must be one of"):
        embed_to_store(gallery, tmp_path / "x.parquet", tiny_model_path, precision="half")
    # the Python API's two whole-result helpers take it too
    from oneshot.index.vector_index import VectorIndex
    from oneshot.pipelines.jobs.embed import embed_gallery
    from oneshot.pipelines.jobs.identify import identify_images

    gallery_set = embed_gallery(gallery, tmp_path / "g.parquet", tiny_model_path, precision="bfloat16")
    index = VectorIndex.build(gallery_set.embeddings, gallery_set.table, "cosine")
    answers = identify_images(gallery, index, tiny_model_path, threshold=None, precision="bfloat16")
    assert len(answers) == len(gallery_set) and (answers["label"] == answers["true_label"]).mean() >= 0.9
