"""The Ray engine gives what the local engine gives: embed stores, index builds, identify answers.

One Ray session (2 CPUs, as in CI) is shared by the module; the tests skip only when Ray is not
installed (``pip install 'oneshot[ray]'``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oneshot.errors import ImageReadError
from oneshot.index.dataset_store import MANIFEST_NAME, DatasetStore
from oneshot.index.metric import get_metric
from oneshot.index.pca import training_sample
from oneshot.index.shard_build import build_from_shards, local_map
from oneshot.index.store import read_embeddings
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.engines.ray import RayEngine
from oneshot.pipelines.engines.ray_decode import decode_batch
from oneshot.pipelines.engines.ray_index import build_index_on_ray, ray_map_parts
from oneshot.pipelines.jobs.embed import embed_to_store
from oneshot.pipelines.jobs.identify import identify_job

VOLATILE = {"created", "updated"}


class _Box:
    """Stands in for an object-store reference in tests of the per-batch step (no Ray needed)."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'oneshot[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _engine(**options) -> RayEngine:
    """One encode actor: each actor start costs seconds on the 2-core CI machine."""
    return RayEngine(actors=1, **options)


@pytest.fixture()
def gallery(tmp_path, synthetic_gallery) -> Path:
    return Path(shutil.copytree(synthetic_gallery, tmp_path / "gallery"))


def _manifest(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / MANIFEST_NAME).read_text()).items() if k not in VOLATILE}


def test_decode_step_returns_good_rows_and_rejects_with_reasons(gallery, tiny_model_path):
    from oneshot.data.source import open_source
    from oneshot.embedder.artifact import load_model

    bad = sorted(gallery.rglob("*.png"))[1]
    bad.write_bytes(b"not a png")
    source = open_source(gallery)
    rows = source.table.iloc[:4]
    batch = {"id": rows["id"].to_numpy(), "path": rows["path"].to_numpy(dtype=object), "_batch": np.zeros(4, int)}
    out = decode_batch(batch, _Box(source), load_model(tiny_model_path).recipe, None)
    reasons = list(out["reason"])
    assert [r != "" for r in reasons] == [False, True, False, False]
    assert "not an image" in reasons[1]  # the reason; the path is its own column
    assert list(out["encode"]) == [True, False, True, True]
    assert out["pixels"].shape == (4, 1, 16, 16) and not out["pixels"][1].any()
    # appending: an unchanged image (same content hash under its id) is not encoded again
    known = pd.Series([out["content_hash"][0], "changed"], index=[int(rows["id"].iloc[0]), int(rows["id"].iloc[2])])
    again = decode_batch(batch, _Box(source), load_model(tiny_model_path).recipe, _Box(known))
    assert list(again["encode"]) == [False, False, True, True]
    # the pixels take the recipe's channels and canvas (colour photos, wide signatures)
    from oneshot.embedder.preprocess import Recipe

    colour = decode_batch(batch, _Box(source), Recipe(size=8, width=20, kind="photo", channels=3), None)
    assert colour["pixels"].shape == (4, 3, 8, 20)


def test_embed_gives_the_local_store_and_resumes_after_a_crash(ray_session, tmp_path, gallery, tiny_model_path):
    local = embed_to_store(gallery, tmp_path / "local", tiny_model_path, batch_size=7, shard_rows=25)
    remote = embed_to_store(gallery, tmp_path / "ray", tiny_model_path, batch_size=7, shard_rows=25,
                            executor=_engine())
    assert remote.action == "created" and remote.encoded == 60
    assert _manifest(local.store.folder) == _manifest(remote.store.folder)  # shards, job, counts, recipe
    a, b = read_embeddings(tmp_path / "local"), read_embeddings(tmp_path / "ray")
    pd.testing.assert_frame_equal(a.table, b.table)  # same ids, paths, labels, content hashes
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    # a crash after the first shard: the re-run encodes only what is missing
    store = DatasetStore.open(tmp_path / "ray")
    for shard in store.manifest["shards"][1:]:
        (store.folder / shard["name"]).unlink()
    store.manifest["shards"] = store.manifest["shards"][:1]
    store.set_state("writing")
    resumed = embed_to_store(gallery, tmp_path / "ray", tiny_model_path, batch_size=7, shard_rows=25,
                             executor=_engine())
    assert resumed.action == "resumed" and resumed.encoded == 35
    np.testing.assert_allclose(read_embeddings(tmp_path / "ray").embeddings, a.embeddings, atol=1e-5)


def test_the_pool_prepare_starts_is_the_one_the_job_uses(ray_session, tmp_path, gallery, tiny_model_path):
    """prepare() (the CLI calls it while the job lists its source) keys the pool by the mode asked
    for and the precision; the job must find that pool, not start a second one inside its first batch."""
    local = embed_to_store(gallery, tmp_path / "local", tiny_model_path, batch_size=16)
    engine = _engine()
    try:
        engine.prepare(tiny_model_path, wait=True)
        prepared = engine._pool
        started = []
        original = RayEngine._encode_pool

        def counting(self, key, model):
            started.append(self._pool is None or self._pool.key != key)
            return original(self, key, model)

        RayEngine._encode_pool = counting
        try:
            embed_to_store(gallery, tmp_path / "ray", tiny_model_path, batch_size=16, executor=engine)
            assert started == [False] and engine._pool is prepared
            engine.prepare(tiny_model_path, wait=True, precision="bfloat16")  # another precision: another pool
            assert engine._pool is not prepared
            prepared = engine._pool
            embed_to_store(gallery, tmp_path / "ray_bf16", tiny_model_path, batch_size=16, executor=engine,
                           precision="bfloat16")
            assert started == [False, True, False] and engine._pool is prepared  # prepare started it, the job found it
        finally:
            RayEngine._encode_pool = original
    finally:
        engine.close()
    local = read_embeddings(tmp_path / "local").embeddings
    np.testing.assert_allclose(read_embeddings(tmp_path / "ray").embeddings, local, atol=1e-5)
    half = read_embeddings(tmp_path / "ray_bf16").embeddings
    assert ((half * local).sum(1) >= 0.99).all() and not np.array_equal(half, local)


def test_a_bad_image_fails_the_job_naming_it_or_is_skipped(tmp_path, gallery):
    plan = pd.DataFrame({"id": [5, 6], "path": ["a/1.png", "a/2.png"], "label": "a", "group": ""})
    done = pd.DataFrame({"id": [6, 5], "content_hash": ["", "h5"], "reason": ["a/2.png: cannot decode", ""],
                         "encode": [False, True], "_vector": [np.zeros(2, np.float32), np.ones(2, np.float32)]})
    with pytest.raises(ImageReadError, match="a/2.png"):
        RayEngine(on_error="fail")._assemble(plan, done, 2)
    batch, vectors = RayEngine(on_error="skip")._assemble(plan, done, 2)
    assert batch.rows["id"].tolist() == [5] and batch.read == 2 and vectors.tolist() == [[1.0, 1.0]]
    assert batch.rejected.to_dict("records") == [{"id": 6, "path": "a/2.png", "reason": "a/2.png: cannot decode"}]


def test_skipped_bad_image_leaves_the_rest_of_the_store(ray_session, tmp_path, gallery, tiny_model_path):
    bad = sorted(gallery.rglob("*.png"))[3]
    bad.write_bytes(b"not a png")
    kept = embed_to_store(gallery, tmp_path / "skip", tiny_model_path, shard_rows=25,
                          executor=_engine(on_error="skip"))
    stored = read_embeddings(kept.store.folder)
    assert len(stored.table) == 59 and bad.relative_to(gallery).as_posix() not in stored.table["path"].tolist()
    assert [s["rows"] for s in kept.store.manifest["shards"]] == [24, 25, 10]


def test_ivf_built_from_shards_on_ray_equals_a_single_process_build(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((900, 8)).astype(np.float32)
    table = pd.DataFrame({"id": rng.permutation(10_000)[:900].astype(np.int64), "path": [f"p{i}" for i in range(900)],
                          "label": [f"c{i % 30}" for i in range(900)], "group": ""})
    store = DatasetStore.create(tmp_path / "s", {"dimension": 8, "metric": "cosine"})
    for start in range(0, 900, 250):
        store.add_shard(table.iloc[start : start + 250], vectors[start : start + 250])
    metric = get_metric("cosine")
    x = metric.prepare(vectors)
    single = faiss.index_factory(8, "IDMap2,IVF16,Flat", metric.faiss_metric)
    single.train(training_sample(x, 0))
    single.add_with_ids(x, table["id"].to_numpy())
    empty = faiss.index_factory(8, "IVF16,Flat", metric.faiss_metric)
    built, rows = build_from_shards(empty, store, seed=0, map_parts=ray_map_parts(_engine()))
    assert built.ntotal == 900 and rows["id"].tolist() == table["id"].tolist()
    for index in (single, built):
        faiss.extract_index_ivf(index).nprobe = 4
    expected, got = single.search(x[:100], 10), built.search(x[:100], 10)
    np.testing.assert_array_equal(expected[1], got[1])
    np.testing.assert_allclose(expected[0], got[0], atol=1e-6)
    saved = build_index_on_ray(_engine(), tmp_path / "s", tmp_path / "ivf.faiss", index="IVF16,Flat")
    loaded = VectorIndex.load(tmp_path / "ivf.faiss")
    assert len(loaded) == 900 and loaded.table["id"].tolist() == table["id"].tolist() and len(saved) == 900
    flat, flat_rows = build_from_shards("Flat", store, map_parts=local_map)  # flat: on one node
    reference = VectorIndex.from_store(tmp_path / "s")
    np.testing.assert_array_equal(flat.search(x[:50], 5)[1], reference.faiss_index.search(x[:50], 5)[1])


def test_identify_answers_equal_the_local_engine_and_cli_runs_on_ray(ray_session, tmp_path, gallery,
                                                                     tiny_model_path):
    from oneshot.pipelines.cli import main

    store = embed_to_store(gallery, tmp_path / "g", tiny_model_path, shard_rows=25).store.folder
    VectorIndex.from_store(store).save(tmp_path / "g.faiss")
    for queries, name in ((store, "store"), (gallery, "images")):
        options = dict(model=tiny_model_path, top=3, shard_rows=25, batch_size=10)
        identify_job(queries, tmp_path / "g.faiss", tmp_path / f"{name}_local", **options)
        summary = identify_job(queries, tmp_path / "g.faiss", tmp_path / f"{name}_ray", executor=_engine(), **options)
        assert summary.queries == 60
        local, remote = pd.read_parquet(tmp_path / f"{name}_local"), pd.read_parquet(tmp_path / f"{name}_ray")
        pd.testing.assert_frame_equal(local.drop(columns=["candidates", "score"]),
                                      remote.drop(columns=["candidates", "score"]))
        np.testing.assert_allclose(local["score"], remote["score"], atol=1e-5)
        assert [[c["gallery_ids"].tolist() for c in row] for row in local["candidates"]] == \
               [[c["gallery_ids"].tolist() for c in row] for row in remote["candidates"]]
    result = CliRunner().invoke(main, ["identify", str(store), "--index", str(tmp_path / "g.faiss"), "--top", "3",
                                       "--out", str(tmp_path / "cli"), "--engine", "ray"])
    assert result.exit_code == 0, result.output
    cli = pd.read_parquet(tmp_path / "cli")
    assert cli["label"].tolist() == pd.read_parquet(tmp_path / "store_local")["label"].tolist()


def test_modules_import_and_the_cli_explains_without_ray(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = None\n"
            "import oneshot.pipelines.engines.ray, oneshot.pipelines.engines.ray_index, oneshot.index.shard_build\n"
            "from oneshot.pipelines.cli import main\n"
            "main(['index', 'build', sys.argv[1], '--out', sys.argv[2], '--engine', 'ray'])\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "x.faiss")],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "pip install 'oneshot[ray]'" in result.stderr


def test_an_index_loaded_memory_mapped_answers_as_the_loaded_one(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    table = pd.DataFrame({"id": np.arange(200) * 3, "label": [f"c{i % 7}" for i in range(200)]})
    VectorIndex.build(vectors, table, "cosine").save(tmp_path / "i.faiss")
    loaded, mapped = VectorIndex.load(tmp_path / "i.faiss"), VectorIndex.load(tmp_path / "i.faiss", mmap=True)
    a, b = loaded.search(vectors[:20], 5), mapped.search(vectors[:20], 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_encode_stream_takes_row_slices_or_row_ranges_of_a_table(monkeypatch):
    calls = []
    monkeypatch.setattr(RayEngine, "_encode_slices", lambda self, engine, source, plan, *rest, **kw: calls.append(
        ([rows["id"].tolist() for rows in plan], rest, kw)) or iter(()))
    table = pd.DataFrame({"id": np.arange(5), "path": list("abcde")})
    list(RayEngine().encode_stream("engine", "source", [table.iloc[:3], table.iloc[3:]], 2, show_progress=False))
    list(RayEngine().encode_stream("engine", "source", table, [(0, 3), (3, 5)], 2, show_progress=False))
    assert calls[0] == calls[1] == ([[0, 1, 2], [3, 4]], (2,), {"show_progress": False})
