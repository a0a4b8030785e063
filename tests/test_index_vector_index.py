"""Tests for index.vector_index and index.gpu: exact search, ids, PCA inside the index, files."""
import os

import faiss
import numpy as np
import pandas as pd
import pytest

import oneshot.index.vector_index as vector_index_module
from oneshot.errors import MissingDataError
from oneshot.index.gpu import gpu_count, to_gpu
from oneshot.index.metric import METRIC_NAMES, get_metric
from oneshot.index.store import write_embeddings
from oneshot.index.vector_index import VectorIndex, sidecar_path


@pytest.fixture
def gallery():
    rng = np.random.default_rng(1)
    n, d = 60, 16
    table = pd.DataFrame(
        {
            "id": (np.arange(n, dtype=np.int64) * 7 + 3)[::-1].copy(),
            "label": [f"c{i % 6}" for i in range(n)],
            "group": [f"g{i % 2}" for i in range(n)],
            "path": [f"{i}.png" for i in range(n)],
        }
    )
    return table, rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((9, d))


def brute_force(metric, gallery, queries, k):
    sims = get_metric(metric).similarity(queries, gallery)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_search_matches_brute_force(metric, gallery):
    table, emb, queries = gallery
    vi = VectorIndex.build(emb, table, metric)
    assert len(vi) == 60 and vi.dimension == vi.input_dimension == 16
    assert vi.metric == get_metric(metric)
    result = vi.search(queries, 5, batch_size=4)
    scores, rows = brute_force(metric, emb, queries, 5)
    np.testing.assert_array_equal(result.ids, table["id"].to_numpy()[rows])
    np.testing.assert_allclose(result.scores, scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(result.labels, table["label"].to_numpy()[rows])
    assert result.scores.dtype == np.float32 and result.ids.dtype == np.int64
    assert result.labels.dtype == object


def test_k_beyond_gallery_pads(gallery):
    table, emb, queries = gallery
    vi = VectorIndex.build(emb[:3], table.iloc[:3], "l2")
    result = vi.search(queries[:2], 5)
    assert (result.ids[:, 3:] == -1).all() and (result.ids[:, :3] != -1).all()
    assert np.isneginf(result.scores[:, 3:]).all()
    assert all(label is None for label in result.labels[:, 3:].ravel())


def test_labels_for(gallery):
    table, emb, _ = gallery
    vi = VectorIndex.build(emb, table, "cosine")
    ids = table["id"].to_numpy()
    got = vi.labels_for(np.array([[ids[4], -1], [ids[0], ids[59]]]))
    assert got.tolist() == [["c4", None], ["c0", "c5"]]
    with pytest.raises(ValueError, match="not in the index"):
        vi.labels_for(np.array([123456]))


def test_bad_arguments(gallery):
    table, emb, queries = gallery
    with pytest.raises(ValueError, match="rows"):
        VectorIndex.build(emb, table.iloc[:5], "l2")
    with pytest.raises(ValueError, match="unique"):
        VectorIndex.build(emb, table.assign(id=1), "l2")
    with pytest.raises(ValueError, match="known"):
        VectorIndex.build(emb, table, "hamming")
    with pytest.raises(ValueError, match="not both"):
        VectorIndex.build(emb, table, "l2", pca_dim=4, pca_variance=0.9)
    with pytest.raises(ValueError, match="pca_dim"):
        VectorIndex.build(emb, table, "l2", pca_dim=17)
    vi = VectorIndex.build(emb, table, "l2")
    with pytest.raises(ValueError, match="dimension 16"):
        vi.search(queries[:, :8], 3)
    with pytest.raises(ValueError, match="k must be"):
        vi.search(queries, 0)


def low_rank(n=80, d=16, rank=3, seed=2):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, rank)))
    x = rng.standard_normal((n, rank)) * [5.0, 3.0, 2.0] @ basis.T
    x += 1e-4 * rng.standard_normal((n, d))
    table = pd.DataFrame({"id": np.arange(n), "label": [str(i % 4) for i in range(n)]})
    return x.astype(np.float32), table


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_pca_variance_picks_rank_and_keeps_neighbours(metric):
    x, table = low_rank()
    vi = VectorIndex.build(x, table, metric, pca_variance=0.99)
    assert vi.dimension == 3 and vi.input_dimension == 16
    assert vi.pca == {"dim": 3, "variance": 0.99}
    result = vi.search(x[:10], 4)
    if metric == "cosine":
        # PCA centres the (normalised) data; lossless here, so cosine of the centred vectors.
        prepared = get_metric("cosine").prepare(x)
        x = prepared - prepared.mean(axis=0)
    scores, rows = brute_force(metric, x, x[:10], 4)
    np.testing.assert_array_equal(result.ids, rows)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-3, atol=1e-3)
    if metric == "cosine":  # re-normalised after PCA
        np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("metric", METRIC_NAMES)
@pytest.mark.parametrize("pca_dim", [None, 5])
def test_save_load_round_trip(tmp_path, gallery, metric, pca_dim):
    table, emb, queries = gallery
    meta = {"model_fingerprint": "f1"}
    vi = VectorIndex.build(emb, table, metric, pca_dim=pca_dim, metadata=meta)
    path = vi.save(tmp_path / "g.faiss")
    assert sorted(os.listdir(tmp_path)) == ["g.faiss", "g.faiss.meta.parquet"]
    loaded = VectorIndex.load(path)
    assert loaded.dimension == (pca_dim or 16) and loaded.input_dimension == 16
    assert loaded.metric == vi.metric and len(loaded) == len(vi)
    assert loaded.metadata == {"model_fingerprint": "f1"}
    assert loaded.pca == vi.pca
    pd.testing.assert_frame_equal(loaded.table, vi.table)
    before, after = vi.search(queries, 7), loaded.search(queries, 7)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    np.testing.assert_array_equal(before.labels, after.labels)


def test_load_rejects_missing_or_mismatched_files(tmp_path, gallery):
    table, emb, _ = gallery
    a = VectorIndex.build(emb, table, "l2").save(tmp_path / "a.faiss")
    b = VectorIndex.build(emb[:10], table.iloc[:10], "l2").save(tmp_path / "b.faiss")
    os.replace(sidecar_path(b), sidecar_path(a))
    with pytest.raises(ValueError, match="a.faiss.*count"):
        VectorIndex.load(a)
    with pytest.raises(MissingDataError, match="b.faiss.meta.parquet"):
        VectorIndex.load(b)
    (tmp_path / "c.faiss").write_bytes(b"junk")
    os.replace(sidecar_path(a), sidecar_path(tmp_path / "c.faiss"))
    with pytest.raises(ValueError, match="c.faiss"):
        VectorIndex.load(tmp_path / "c.faiss")


def test_failed_save_leaves_nothing(tmp_path, gallery, monkeypatch):
    table, emb, _ = gallery
    vi = VectorIndex.build(emb, table, "l2")

    def boom(index, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(RuntimeError):
        vi.save(tmp_path / "g.faiss")
    assert os.listdir(tmp_path) == []


def test_from_store_uses_the_stored_metric(tmp_path, gallery):
    table, emb, queries = gallery
    store = write_embeddings(
        tmp_path / "e.parquet", table, emb, {"metric": "l1", "model_fingerprint": "m"}
    )
    vi = VectorIndex.from_store(store)
    assert vi.metric.name == "l1"
    assert vi.metadata["model_fingerprint"] == "m"
    direct = VectorIndex.build(emb, table, "l1").search(queries, 3)
    np.testing.assert_array_equal(vi.search(queries, 3).ids, direct.ids)
    assert VectorIndex.from_store(store, metric="cosine", pca_dim=4).dimension == 4


def test_gpu_helpers_on_a_cpu_build(gallery):
    table, emb, queries = gallery
    vi = VectorIndex.build(emb, table, "l2")
    if not hasattr(faiss, "StandardGpuResources"):
        assert gpu_count() == 0
    if gpu_count() == 0:
        assert to_gpu(vi.faiss_index) is vi.faiss_index
        with pytest.raises(ValueError, match="GPU"):
            vi.search(queries, 2, use_gpu=True)
    np.testing.assert_array_equal(
        vi.search(queries, 2, use_gpu=False).ids, vi.search(queries, 2).ids
    )


def test_a_gpu_build_that_cannot_run_on_the_device_falls_back_to_the_cpu(monkeypatch, caplog):
    import subprocess

    from oneshot.index import gpu

    class GpuBuild:  # a FAISS GPU build that sees one device
        StandardGpuResources = object

        @staticmethod
        def get_num_gpus():
            return 1

    probes = []

    def aborted_probe(command, **options):  # as faiss-gpu-cu12 does on an H100: SIGABRT
        probes.append(command)
        return subprocess.CompletedProcess(command, -6, "", "Faiss assertion failed: CUDA error 209 no kernel image")

    monkeypatch.setattr(gpu, "faiss", GpuBuild)
    monkeypatch.setattr(gpu.subprocess, "run", aborted_probe)
    gpu._gpu_build_runs.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert gpu.gpu_count() == 0 and gpu.gpu_count() == 0
        assert len(probes) == 1  # once per process
        assert "cannot run on this GPU (Faiss assertion failed: CUDA error 209 no kernel image)" in caplog.text
        monkeypatch.setattr(gpu.subprocess, "run", lambda command, **o: subprocess.CompletedProcess(command, 0))
        gpu._gpu_build_runs.cache_clear()
        assert gpu.gpu_count() == 1
    finally:
        gpu._gpu_build_runs.cache_clear()


def test_search_uses_the_gpu_clone_when_available(gallery, monkeypatch):
    table, emb, queries = gallery
    vi = VectorIndex.build(emb, table, "l2")
    cloned = []

    class FakeGpuIndex:
        def __init__(self, index):
            self.index = index
            self.calls = 0

        def search(self, x, k):
            self.calls += 1
            return self.index.search(x, k)

    def fake_to_gpu(index):
        cloned.append(FakeGpuIndex(index))
        return cloned[-1]

    monkeypatch.setattr(vector_index_module, "gpu_count", lambda: 1)
    monkeypatch.setattr(vector_index_module, "to_gpu", fake_to_gpu)
    expected = vi.search(queries, 3, use_gpu=False)
    got = vi.search(queries, 3, batch_size=4)
    vi.search(queries, 3)
    assert len(cloned) == 1 and cloned[0].calls == 3 + 1
    np.testing.assert_array_equal(got.ids, expected.ids)


def test_two_faiss_builds_in_one_environment_are_named_with_the_swap(monkeypatch, caplog):
    from importlib import metadata

    from oneshot.index import gpu

    installed = {"faiss-cpu": "1.15.1", "faiss-gpu": "1.15.1"}

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(metadata, "version", version)
    gpu.check_faiss_install.cache_clear()
    try:
        assert gpu.installed_faiss() == ["faiss-cpu", "faiss-gpu"]
        with caplog.at_level("WARNING", logger="oneshot.index.gpu"):
            message = gpu.check_faiss_install()
        assert "pip uninstall -y faiss-cpu" in message and "--force-reinstall --no-deps" in message
        assert message in caplog.text
        del installed["faiss-gpu"]
        gpu.check_faiss_install.cache_clear()
        assert gpu.check_faiss_install() is None  # one build: nothing to say
    finally:
        gpu.check_faiss_install.cache_clear()
