"""Tests for the streaming identify job: candidates, decisions, store queries, outputs, resume."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from oneshot.errors import InvalidInputError, ModelMismatchError
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.engines.local import top_candidates
from oneshot.pipelines.jobs.embed import embed_to_store
from oneshot.pipelines.jobs.identify import MANIFEST_NAME, identify_job


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, synthetic_gallery, tiny_model_path):
    folder = tmp_path_factory.mktemp("identify_job")
    store = embed_to_store(synthetic_gallery, folder / "g.parquet", tiny_model_path).store.folder
    index = VectorIndex.from_store(store)
    index.save(folder / "g.faiss")
    return store, folder / "g.faiss"


def test_top_candidates_groups_neighbours_by_identity():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], np.float32)
    ids = np.array([[1, 2, 3, 4, -1]])
    labels = np.array([["a", "b", "a", "c", None]], dtype=object)
    got = top_candidates(scores, ids, labels, top=2, per_identity=3)[0]
    assert [c["label"] for c in got] == ["a", "b"]
    assert got[0]["gallery_ids"] == [1, 3] and got[0]["gallery_scores"] == pytest.approx([0.9, 0.7])
    assert got[1]["gallery_ids"] == [2]


def test_store_queries_find_themselves_and_list_distinct_identities(tmp_path, gallery_index):
    store, index = gallery_index
    summary = identify_job(store, index, tmp_path / "answers", top=3, shard_rows=25, batch_size=10)
    assert summary.queries == 60 and summary.accuracy == 1.0  # every query is in the gallery
    answers = pd.read_parquet(tmp_path / "answers")
    assert len(answers) == 60 and answers["known"].all()
    first = answers.iloc[0]
    labels = [c["label"] for c in first["candidates"]]
    assert len(labels) == len(set(labels)) == 3 and labels[0] == first["label"]
    assert first["query_id"] in list(first["candidates"][0]["gallery_ids"])
    manifest = json.loads((tmp_path / "answers" / MANIFEST_NAME).read_text())
    assert manifest["state"] == "complete" and [s["rows"] for s in manifest["shards"]] == [30, 30]


def test_images_and_store_give_the_same_answers_and_threshold_gives_unknown(tmp_path, gallery_index,
                                                                               synthetic_gallery, tiny_model_path):
    store, index = gallery_index
    rows = []
    identify_job(synthetic_gallery, index, None, tiny_model_path, threshold=2.0, emit=rows.append)
    from_images = pd.concat(rows, ignore_index=True)
    assert (from_images["label"] == "unknown").all() and not from_images["known"].any()
    identify_job(store, index, tmp_path / "a.jsonl")
    from_store = pd.read_json(tmp_path / "a.jsonl", lines=True)
    assert from_images["query_id"].tolist() == from_store["query_id"].tolist()
    assert (from_images["candidate"] == from_store["label"]).all()
    np.testing.assert_allclose(from_images["score"], from_store["score"], atol=1e-5)


def test_interrupted_output_resumes_and_other_commands_are_refused(tmp_path, gallery_index):
    store, index = gallery_index
    out = tmp_path / "answers"
    identify_job(store, index, out, shard_rows=20, batch_size=10)
    full = pd.read_parquet(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())  # pretend it was killed after one shard
    for shard in manifest["shards"][1:]:
        (out / shard["name"]).unlink()
    manifest.update(state="writing", shards=manifest["shards"][:1], rows=20)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    summary = identify_job(store, index, out, shard_rows=20, batch_size=10)
    assert summary.resumed_from == 20 and summary.queries == 40
    pd.testing.assert_frame_equal(pd.read_parquet(out), full)
    with pytest.raises(InvalidInputError, match="already complete"):
        identify_job(store, index, out, shard_rows=20, batch_size=10)
    with pytest.raises(InvalidInputError, match="differs in top"):
        identify_job(store, index, out, shard_rows=20, batch_size=10, top=2)


def test_queries_from_another_model_are_refused(tmp_path, gallery_index, synthetic_gallery):
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    torch.manual_seed(9)
    other = save_model(Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2}),
                       tmp_path / "other.safetensors")
    with pytest.raises(ModelMismatchError, match="built with model"):
        identify_job(synthetic_gallery, gallery_index[1], None, other)
    other_store = embed_to_store(synthetic_gallery, tmp_path / "o.parquet", other).store.folder
    with pytest.raises(ModelMismatchError, match="query store"):
        identify_job(other_store, gallery_index[1], None)
