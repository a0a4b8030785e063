"""Tests for pipelines.jobs: the Python API behind the CLI, on the tiny model and synthetic gallery."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from oneshot.data.folders import read_gallery
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.index.store import read_embeddings
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.jobs import (
    build_index,
    cluster_store,
    embed_gallery,
    encode_gallery,
    evaluate_store,
    identify_images,
)


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return load_model(tiny_model_path)


@pytest.fixture(scope="module")
def stored(tmp_path_factory, synthetic_gallery, model):
    return embed_gallery(synthetic_gallery, tmp_path_factory.mktemp("jobs") / "gallery.parquet", model)


def test_encode_gallery_matches_encode(model, synthetic_gallery):
    gallery = read_gallery(synthetic_gallery)
    vectors = encode_gallery(model, gallery, batch_size=7)  # several chunks, the last one short
    assert vectors.shape == (60, 8) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    expected = encode(model, gallery.read(), show_progress=False)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_embed_gallery_records_model_and_source(stored, model, synthetic_gallery):
    assert len(stored) == 60 and stored.dimension == 8
    assert stored.metadata["metric"] == "cosine"
    assert stored.metadata["model_fingerprint"] == model.fingerprint
    assert stored.metadata["source"] == str(synthetic_gallery)
    assert stored.metadata["recipe"]["size"] == 16 and stored.metadata["tta"] is False
    assert stored.table["label"].nunique() == 10


def test_embed_gallery_accepts_a_model_path(tmp_path, stored, synthetic_gallery, tiny_model_path):
    again = embed_gallery(synthetic_gallery, tmp_path / "again.parquet", tiny_model_path)
    np.testing.assert_array_equal(again.embeddings, stored.embeddings)


@pytest.fixture(scope="module")
def store_and_index(tmp_path_factory, synthetic_gallery, model):
    folder = tmp_path_factory.mktemp("jobs_pair")
    store = folder / "gallery.parquet"
    embed_gallery(synthetic_gallery, store, model)
    index = build_index(store, folder / "sub" / "gallery.faiss")
    return store, folder / "sub" / "gallery.faiss", index


def test_build_index_saves_a_loadable_index(store_and_index):
    _, path, index = store_and_index
    loaded = VectorIndex.load(path)
    assert len(loaded) == len(index) == 60 and loaded.dimension == 8
    assert loaded.labels.tolist() == index.labels.tolist()


def test_identify_gallery_against_itself_is_perfect(store_and_index, synthetic_gallery, model):
    _, path, _ = store_and_index
    result = identify_images(synthetic_gallery, path, model, threshold=None, k=1)
    assert len(result) == 60
    assert list(result.columns[:5]) == ["path", "label", "score", "known", "candidate"]
    assert (result["label"] == result["true_label"]).mean() == 1.0
    assert result["known"].all()
    np.testing.assert_allclose(result["score"], 1.0, atol=1e-4)  # each query finds itself


def test_identify_threshold_and_index_object(store_and_index, synthetic_gallery, model):
    _, _, index = store_and_index
    result = identify_images(synthetic_gallery, index, model, threshold=1.5)
    assert (result["label"] == "unknown").all() and not result["known"].any()
    assert (result["candidate"] == result["true_label"]).all()


def test_identify_unlabelled_queries(tmp_path, store_and_index, synthetic_gallery, model):
    gallery = read_gallery(synthetic_gallery)
    picked = gallery.table["path"].iloc[[0, 17, 45]].tolist()
    flat = tmp_path / "queries"
    flat.mkdir()
    for i, path in enumerate(picked):  # top-level images: not a labelled layout
        cv2.imwrite(str(flat / f"q{i}.png"), gallery.read([path])[0])
    result = identify_images(flat, store_and_index[1], model)
    assert "true_label" not in result.columns
    assert result["path"].tolist() == ["q0.png", "q1.png", "q2.png"]
    assert result["label"].tolist() == gallery.table.set_index("path").loc[picked, "label"].tolist()


def test_identify_with_another_model_raises(store_and_index, synthetic_gallery):
    import torch

    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    torch.manual_seed(1)
    other = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
    other.fingerprint = "0123456789abcdef"
    with pytest.raises(ValueError, match="built with model .* but the queries use model 0123456789abcdef"):
        identify_images(synthetic_gallery, store_and_index[1], other)


def test_evaluate_store_keys(store_and_index):
    report = evaluate_store(store_and_index[0], n_way=5, episodes=40, knn_k=1)
    assert set(report) == {"oneshot", "knn", "verification", "raw_pixels"}
    assert set(report["oneshot"]) == {"accuracy", "ci95", "episodes", "n_way", "k_shot", "within_group"}
    assert set(report["knn"]) == {"accuracy", "k", "gallery", "queries"}
    assert report["oneshot"]["within_group"] is True and report["knn"]["k"] == 1
    assert 0.0 <= report["oneshot"]["accuracy"] <= 1.0 and 0.0 <= report["knn"]["accuracy"] <= 1.0
    assert report["knn"]["gallery"] + report["knn"]["queries"] == 60
    assert report["verification"]["n_pairs"] == 2000 and 0.0 <= report["verification"]["accuracy"] <= 1.0
    json.dumps(report)  # plain Python types: the CLI prints it as JSON


def test_evaluate_store_any_group_and_object(store_and_index):
    stored = read_embeddings(store_and_index[0])
    report = evaluate_store(stored, n_way=10, episodes=40, within_group=False)
    assert report["oneshot"]["within_group"] is False and report["oneshot"]["n_way"] == 10
    assert report == evaluate_store(store_and_index[0], n_way=10, episodes=40, within_group=False)  # seeded


def test_group_option_restricts_the_store(store_and_index):
    result = cluster_store(store_and_index[0], groups=["synth_a02"])
    assert result.per_group["group"].tolist() == ["synth_a02"] and result.summary["n_images"] == 30
    report = evaluate_store(store_and_index[0], n_way=5, episodes=20, groups=["synth_a02"])
    assert report["knn"]["gallery"] + report["knn"]["queries"] == 30
    with pytest.raises(ValueError, match="groups not in the store: \\['nope'\\]"):
        evaluate_store(store_and_index[0], groups=["nope"])


def test_cluster_store_one_row_per_group(store_and_index):
    result = cluster_store(store_and_index[0], clusters="truth")
    summary, per_group = result.summary, result.per_group
    assert len(per_group) == summary["n_groups"] == 2
    assert sorted(per_group["group"]) == ["synth_a01", "synth_a02"]
    assert per_group["n_classes"].tolist() == [5, 5] and per_group["n_images"].tolist() == [30, 30]
    assert per_group["n_clusters"].tolist() == [5, 5]
    assert summary["ari"] == pytest.approx(per_group["ari"].mean())
    assert 0.0 <= summary["nmi"] <= 1.0 and 0.0 <= summary["accuracy"] <= 1.0
    assert "built-in default" in result.settings["threshold_source"]


def test_cluster_store_unlabelled_writes_a_clustering_that_assign_reads(tmp_path, synthetic_gallery, model):
    from oneshot.pipelines.jobs import assign_images

    store = embed_gallery(synthetic_gallery, tmp_path / "unlabelled.parquet", model, labelled=False)
    assert (store.table["label"] == "").all()
    result = cluster_store(store, "auto", out=tmp_path / "clusters.parquet", cluster_radius=0.3)
    assert "accuracy" not in result.summary and result.summary["n_clusters"] >= 1
    with pytest.raises(ValueError, match="truth needs labels"):
        cluster_store(store, "truth")
    clusters = read_embeddings(tmp_path / "clusters.parquet")
    assert clusters.metadata["clustering"]["cluster_radius"] == 0.3
    np.testing.assert_array_equal(clusters.embeddings, store.embeddings)
    answers, source = assign_images(synthetic_gallery, tmp_path / "clusters.parquet", model)
    assert len(answers) == 60 and "cluster_radius=0.3000" in source
    # A stored drawing lands in its own cluster unless it sits nearer another centre.
    own = dict(zip(result.assignments["path"], result.assignments["cluster"]))
    agree = np.mean([own[p] == c for p, c in zip(answers["path"], answers["cluster"])])
    assert agree > 0.8
    assert (answers["new"] == (answers["distance"] > 0.3)).all()


