"""Tests for re-ranking in identify: a second model re-scores the index's top rows of hesitant queries."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.engines.rerank import (
    DEFAULT_MARGIN,
    MODEL_MARGIN,
    Reranker,
    gallery_images_of,
    parse_margin,
    store_margin,
)
from oneshot.pipelines.jobs.embed import embed_to_store
from oneshot.pipelines.jobs.identify import identify_job


def _tiny(seed: int, tmp_path, name: str, size: int = 16, head: str = "normalized", channels: int = 4):
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder

    torch.manual_seed(seed)
    model = Embedder("conv", dim=8, head=head, recipe=Recipe(size=size),
                     backbone_options={"channels": channels, "blocks": 2})
    return save_model(model, tmp_path / f"{name}.safetensors")


@pytest.fixture(scope="module")
def setting(tmp_path_factory, synthetic_gallery, tiny_model_path):
    """A copy of the synthetic gallery (tests may break files), its store and index (tiny model),
    and a second tiny model with the same preprocessing."""
    folder = tmp_path_factory.mktemp("rerank")
    gallery = folder / "gallery"
    shutil.copytree(synthetic_gallery, gallery)
    store = embed_to_store(gallery, folder / "g.parquet", tiny_model_path).store.folder
    index = VectorIndex.from_store(store)
    return {"gallery": gallery, "store": store, "index": index, "other": _tiny(7, folder, "other")}


def _answers(setting, model, rerank, queries=None, **options) -> pd.DataFrame:
    rows = []
    identify_job(queries or setting["gallery"], setting["index"], None, model, threshold=None, top=3,
                 emit=rows.append, show_progress=False, rerank=rerank, **options)
    return pd.concat(rows, ignore_index=True)


def test_reranking_with_the_index_model_changes_nothing(setting, tiny_model_path):
    plain = _answers(setting, tiny_model_path, None)
    rerank = Reranker(tiny_model_path, setting["gallery"], depth=10, margin=None)
    again = _answers(setting, tiny_model_path, rerank)
    assert again["reranked"].all() and rerank.stats.reranked == len(plain) == 60
    assert again["label"].tolist() == plain["label"].tolist()
    np.testing.assert_allclose(again["score"], plain["score"], atol=1e-5)
    assert [[c["label"] for c in row] for row in again["candidates"]] == \
           [[c["label"] for c in row] for row in plain["candidates"]]
    assert rerank.stats.gallery_encoded == 60  # each gallery image encoded once, then cached


def test_reranked_scores_are_the_second_models_cosines(setting, tiny_model_path):
    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.encode import encode

    rerank = Reranker(setting["other"], setting["gallery"], depth=10, margin=None)
    answers = _answers(setting, tiny_model_path, rerank)
    table = setting["index"].table
    other = load_model(setting["other"])
    images = [__import__("cv2").imread(str(setting["gallery"] / p), 0) for p in table["path"]]
    vectors = encode(other, images)
    by_id = dict(zip(table["id"].tolist(), vectors))
    query = dict(zip(table["path"].tolist(), vectors))
    for _, row in answers.iterrows():
        expected = [float(by_id[g] @ query[row["path"]]) for c in row["candidates"] for g in c["gallery_ids"]]
        got = [s for c in row["candidates"] for s in c["gallery_scores"]]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert row["score"] == pytest.approx(max(got), abs=1e-6)
        assert got[0] == pytest.approx(max(got), abs=1e-6)  # best first


def test_margin_gates_which_queries_are_rescored(setting, tiny_model_path):
    plain = _answers(setting, tiny_model_path, None)
    none = Reranker(setting["other"], setting["gallery"], margin=0.0)
    untouched = _answers(setting, tiny_model_path, none)
    assert not untouched["reranked"].any() and none.stats.gallery_encoded == 0
    np.testing.assert_allclose(untouched["score"], plain["score"])
    gaps = []
    for row in plain["candidates"]:
        gaps.append(row[0]["score"] - row[1]["score"])
    margin = float(np.median(gaps))
    some = Reranker(setting["other"], setting["gallery"], margin=margin)
    answers = _answers(setting, tiny_model_path, some)
    assert answers["reranked"].tolist() == [g < margin for g in gaps]


def test_model_threshold_of_rescored_queries_is_the_second_models(setting, tiny_model_path):
    rows = []
    rerank = Reranker(setting["other"], setting["gallery"], margin=None)
    summary = identify_job(setting["gallery"], setting["index"], None, tiny_model_path, threshold=0.999,
                           emit=rows.append, show_progress=False, rerank=rerank)
    answers = pd.concat(rows)
    assert (answers["known"] == (answers["score"] >= np.float32(0.999))).all()
    assert "re-scored queries" in summary.threshold_text
    assert summary.to_dict()["rerank"]["reranked"] == 60


def test_unreadable_gallery_images_are_counted_and_left_out(setting, tiny_model_path, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(setting["gallery"], gallery)
    broken = min(gallery.rglob("*.png"))
    broken.write_bytes(b"not a png")
    rerank = Reranker(setting["other"], gallery, margin=None, depth=10)
    answers = _answers({**setting, "gallery": gallery}, tiny_model_path, rerank, queries=setting["gallery"])
    assert rerank.stats.gallery_unreadable == 1
    broken_id = int(setting["index"].table.set_index("path").loc[str(broken.relative_to(gallery)), "id"])
    listed = {g for row in answers["candidates"] for c in row for g in c["gallery_ids"]}
    assert broken_id not in listed and len(answers) == 60


def test_cache_stays_bounded(setting, tiny_model_path):
    rerank = Reranker(setting["other"], setting["gallery"], margin=None, depth=4, cache_rows=5)
    _answers(setting, tiny_model_path, rerank, batch_size=2)
    one_batch = 2 * rerank.search_depth(top=3, per_identity=3)  # 2 queries x 9 rows
    assert len(rerank._cache) <= max(5, one_batch) < 60  # the bound, or one batch's rows when more
    assert rerank.stats.gallery_encoded > 60  # evicted rows were encoded again when needed


def test_refusals_are_clear(setting, tiny_model_path, tmp_path):
    with pytest.raises(InvalidInputError, match="preprocesses images"):
        _answers(setting, tiny_model_path, Reranker(_tiny(1, tmp_path, "wide", size=20), setting["gallery"]))
    with pytest.raises(InvalidInputError, match="cosine"):
        Reranker(_tiny(1, tmp_path, "siamese", head="siamese"), setting["gallery"])
    with pytest.raises(InvalidInputError, match="image queries"):
        _answers(setting, tiny_model_path, Reranker(setting["other"], setting["gallery"]), queries=setting["store"])
    with pytest.raises(InvalidInputError, match="k = 1"):
        _answers(setting, tiny_model_path, Reranker(setting["other"], setting["gallery"]), k=3)
    with pytest.raises(InvalidInputError, match="depth"):
        Reranker(setting["other"], setting["gallery"], depth=0)
    for text in ("-1", "x"):
        with pytest.raises(InvalidInputError, match="margin"):
            parse_margin(text)
    assert parse_margin("all") is None and parse_margin("0.1") == 0.1 and parse_margin(" Model") == MODEL_MARGIN
    with pytest.raises(InvalidInputError, match="margin"):
        Reranker(setting["other"], setting["gallery"], margin=-0.5)


def test_the_margin_is_the_index_models_own_when_it_carries_one(setting, tiny_model_path, tmp_path):
    """The margin is in the index model's cosine: a model file carries the one chosen for it, and a
    model without one gets the library default; either way the job says which it used."""
    from oneshot.embedder.artifact import load_model

    plain = _answers(setting, tiny_model_path, None)
    gaps = [row[0]["score"] - row[1]["score"] for row in plain["candidates"]]
    default = Reranker(setting["other"], setting["gallery"])
    assert default.margin == MODEL_MARGIN
    rows = []
    summary = identify_job(setting["gallery"], setting["index"], None, tiny_model_path, threshold=None, top=3,
                           emit=rows.append, show_progress=False, rerank=default)
    assert default.margin == DEFAULT_MARGIN and "library default" in summary.threshold_text
    assert pd.concat(rows)["reranked"].tolist() == [g < DEFAULT_MARGIN for g in gaps]

    carrying = tmp_path / "carrying.safetensors"
    shutil.copy(tiny_model_path, carrying)
    shutil.copy(Path(tiny_model_path).with_suffix(".json"), carrying.with_suffix(".json"))
    median = float(np.median(gaps))
    record = store_margin(carrying, median, "validation data", "a rule", "other", "a command")
    assert load_model(carrying).fingerprint == load_model(tiny_model_path).fingerprint  # weights untouched
    assert load_model(carrying).info["rerank_margin"] == record and record["value"] == median
    for bad in ("all", "model", -1.0):
        with pytest.raises(InvalidInputError, match="margin"):
            store_margin(carrying, bad, "validation data", "a rule", "other")
    assert load_model(carrying).info["rerank_margin"] == record  # a refused margin leaves the file as it was
    own = Reranker(setting["other"], setting["gallery"])
    rows = []
    summary = identify_job(setting["gallery"], setting["index"], None, carrying, threshold=None, top=3,
                           emit=rows.append, show_progress=False, rerank=own)
    assert own.margin == median and "carried by the index's model, chosen on validation data" in summary.threshold_text
    assert pd.concat(rows)["reranked"].tolist() == [g < median for g in gaps]
    given = Reranker(setting["other"], setting["gallery"], margin=0.0)
    _answers(setting, carrying, given)
    assert given.margin == 0.0 and given.margin_source == "given"  # a number given wins over the model's


def test_gallery_images_come_from_the_store_or_must_be_given(setting, tmp_path):
    assert gallery_images_of(setting["index"].metadata, None) == str(setting["gallery"])
    assert gallery_images_of(setting["index"].metadata, tmp_path) == str(tmp_path)
    from oneshot.index.store import read_embeddings

    stored = read_embeddings(setting["store"])
    bare = VectorIndex.build(stored.embeddings, stored.table, "cosine")
    with pytest.raises(InvalidInputError, match="--gallery-images"):
        gallery_images_of(bare.metadata, None)


def test_index_built_from_a_relative_store_path_finds_it_from_elsewhere(setting, tmp_path, monkeypatch):
    from oneshot.index.gallery_index import build_from_store
    from oneshot.index.index_file import read_index_metadata

    monkeypatch.chdir(Path(setting["store"]).parent)
    built = build_from_store(Path(setting["store"]).name, tmp_path / "relative.faiss")
    relative = VectorIndex.from_store(Path(setting["store"]).name)
    monkeypatch.chdir(tmp_path)
    for metadata in (built.metadata, read_index_metadata(tmp_path / "relative.faiss"), relative.metadata):
        assert Path(metadata["source"]).is_absolute()
        assert gallery_images_of(metadata, None) == str(setting["gallery"])


def test_cli_reranks_and_reports(setting, tiny_model_path, tmp_path):
    from oneshot.pipelines.cli import main

    setting["index"].save(tmp_path / "g.faiss")
    result = CliRunner().invoke(main, ["identify", str(setting["gallery"]), "--index", str(tmp_path / "g.faiss"),
                                       "--model", str(tiny_model_path), "--rerank", str(setting["other"]),
                                       "--rerank-margin", "all", "--threshold", "none",
                                       "--out", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    assert "re-ranked 60 of 60 queries" in result.output
    answers = pd.read_json(tmp_path / "a.jsonl", lines=True)
    assert answers["reranked"].all() and len(answers) == 60


def test_omniglot_folder_opens_the_split_the_paths_name(omniglot_dir):
    from oneshot.data.omniglot import OmniglotSplit
    from oneshot.pipelines.engines.rerank import _open_gallery

    evaluation = OmniglotSplit(omniglot_dir, "evaluation")
    path = evaluation.table["path"].iloc[0]
    source = _open_gallery(omniglot_dir, path)
    assert source.read([path])[0].shape == evaluation.read([path])[0].shape


@pytest.fixture(scope="module")
def matcher_model(tmp_path_factory):
    """A tiny model with a map matcher (16 px, maps 8 x 8 before the last block), trained by nobody;
    its batch norms carry statistics and scales as training leaves them (not the identity), so the
    re-ranker's BatchNorm-folded copy is checked against the eager model."""
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder

    torch.manual_seed(3)
    model = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2}, match_dim=3)
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.2, 0.2)
    return save_model(model, tmp_path_factory.mktemp("matcher") / "matcher.safetensors")


def test_a_reranker_with_a_map_matcher_scores_by_its_trained_similarity(setting, tiny_model_path, matcher_model):
    import cv2
    import torch

    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.encode import encode_with_local

    rerank = Reranker(matcher_model, setting["gallery"], depth=10, margin=None)
    answers = _answers(setting, tiny_model_path, rerank)
    assert answers["reranked"].all() and rerank.stats.gallery_encoded == 60
    table = setting["index"].table
    model = load_model(matcher_model)
    vectors, local = encode_with_local(model, [cv2.imread(str(setting["gallery"] / p), 0) for p in table["path"]])
    with torch.no_grad():
        distance = model.matcher.distances(torch.from_numpy(local), torch.from_numpy(local))
        expected = model.matcher.similarity(torch.from_numpy(vectors @ vectors.T), distance).numpy()
    _assert_scored_by(answers, table, expected)
    assert rerank.cache_rows <= 6_000


def _assert_scored_by(answers: pd.DataFrame, table: pd.DataFrame, expected: np.ndarray) -> None:
    """Every re-scored candidate row's score is ``expected[query's row, gallery row]`` (rows in ``table``'s order)."""
    row_of = {i: r for r, i in enumerate(table["id"].tolist())}
    query_row = dict(zip(table["path"].tolist(), range(len(table))))
    for _, answer in answers.iterrows():
        got = [s for c in answer["candidates"] for s in c["gallery_scores"]]
        wanted = [float(expected[query_row[answer["path"]], row_of[g]]) for c in answer["candidates"]
                  for g in c["gallery_ids"]]
        np.testing.assert_allclose(got, wanted, atol=1e-4)
        assert answer["score"] == pytest.approx(max(got), abs=1e-6)


@pytest.mark.parametrize("both_matched", [False, True])
def test_an_ensemble_with_matched_members_reranks_by_their_mean_trained_score(setting, tiny_model_path, matcher_model,
                                                                               tmp_path, both_matched):
    import cv2
    import torch

    from oneshot.embedder.artifact import load_model, save_model
    from oneshot.embedder.encode import encode, encode_with_local
    from oneshot.embedder.ensemble import ensemble_models
    from oneshot.embedder.model import Embedder

    torch.manual_seed(5)
    second = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2},
                      match_dim=3 if both_matched else None)
    with torch.no_grad():  # an untrained matcher's weight is the same in both; make the two differ
        if both_matched:
            second.matcher.log_scale_match.add_(1.0)
    second_path = save_model(second, tmp_path / "second.safetensors")
    joined = save_model(ensemble_models([matcher_model, second_path]), tmp_path / "joined.safetensors")
    rerank = Reranker(joined, setting["gallery"], depth=10, margin=None)
    assert rerank.matched and len(rerank.matchers) == (2 if both_matched else 1)
    answers = _answers(setting, tiny_model_path, rerank)
    assert answers["reranked"].all() and rerank.stats.gallery_encoded == 60

    table = setting["index"].table
    images = [cv2.imread(str(setting["gallery"] / p), 0) for p in table["path"]]
    expected = 0.0
    for path in (matcher_model, second_path):  # each member on its own: its trained score, or its cosine
        member = load_model(path)
        if member.matcher is None:
            vectors = encode(member, images)
            expected = expected + vectors @ vectors.T
            continue
        vectors, local = encode_with_local(member, images)
        with torch.no_grad():
            distance = member.matcher.distances(torch.from_numpy(local), torch.from_numpy(local))
            expected = expected + member.matcher.similarity(torch.from_numpy(vectors @ vectors.T), distance).numpy()
    expected = expected / 2
    _assert_scored_by(answers, table, expected)
    assert rerank.cache_rows == 6_000 // len(rerank.matchers)
    entries = rerank.encode_pixels(Recipe(size=16).prepare(images).pixels)  # every pair at once, as calibration does
    np.testing.assert_allclose(rerank.score_entries(entries[:7], entries), expected[:7], atol=1e-4)


def test_calibrate_gives_a_matched_model_an_unknown_threshold_on_its_trained_score(setting, tiny_model_path,
                                                                                    matcher_model, tmp_path):
    from oneshot.embedder.artifact import load_model
    from oneshot.pipelines.cli import main
    from oneshot.pipelines.evaluation.thresholds import resolve_threshold
    from oneshot.pipelines.jobs.identify import enrolled_count

    model = tmp_path / "matched.safetensors"
    shutil.copy(matcher_model, model)
    shutil.copy(Path(matcher_model).with_suffix(".json"), model.with_suffix(".json"))
    result = CliRunner().invoke(main, ["calibrate", str(model), "--data", str(setting["gallery"])])
    assert result.exit_code == 0, result.output
    thresholds = load_model(model).info["thresholds"]
    reranked = thresholds["unknown_reranked"]
    assert reranked["metric"].startswith("trained score") and np.isfinite(reranked["value"])
    assert reranked["value"] != thresholds["unknown"]["value"] and "command" in reranked
    assert "unknown_reranked threshold" in result.output
    rows = []
    summary = identify_job(setting["gallery"], setting["index"], None, tiny_model_path, threshold="model",
                           emit=rows.append, show_progress=False, rerank=Reranker(model, setting["gallery"], margin=None))
    assert f"carried by the re-ranking model {model}" in summary.threshold_text
    used, _ = resolve_threshold(load_model(model), "unknown_reranked", enrolled=enrolled_count(setting["index"]))
    answers = pd.concat(rows)
    assert answers["reranked"].all() and (answers["known"] == (answers["score"] >= np.float32(used))).all()
    plain = tmp_path / "plain.safetensors"  # a cosine model gets no such threshold: its "unknown" covers it
    shutil.copy(tiny_model_path, plain)
    shutil.copy(Path(tiny_model_path).with_suffix(".json"), plain.with_suffix(".json"))
    assert CliRunner().invoke(main, ["calibrate", str(plain), "--data", str(setting["gallery"])]).exit_code == 0
    assert "unknown_reranked" not in load_model(plain).info["thresholds"]


def test_the_trained_score_calibration_is_capped_to_whole_classes(setting, matcher_model, tmp_path, monkeypatch):
    from oneshot.embedder.artifact import load_model
    from oneshot.pipelines.jobs import calibrate

    read = []
    prepare = calibrate.prepare_batch
    monkeypatch.setattr(calibrate, "prepare_batch", lambda source, rows, recipe: read.append(rows) or
                        prepare(source, rows, recipe))
    monkeypatch.setattr(calibrate, "TRAINED_SCORE_ROWS", 30)
    found = calibrate.calibrate_model_file(matcher_model, setting["gallery"], out=tmp_path / "capped.safetensors")
    capped = found["unknown_reranked"]
    assert len(read) == 1 and len(read[0]) <= 30  # only the drawn classes are read again
    assert f"scored on {len(read[0])} of its 60 images" in capped["calibrated_on"] and np.isfinite(capped["value"])
    counts = setting["index"].table["label"].value_counts()
    assert (read[0]["label"].value_counts() == counts[read[0]["label"].unique()]).all()  # whole classes
    assert "scored on" not in found["unknown"]["calibrated_on"]  # the cosine's thresholds use every image
    assert load_model(tmp_path / "capped.safetensors").info["thresholds"]["unknown_reranked"] == capped


def test_a_matched_reranker_in_bfloat16_scores_close_to_float32(setting, matcher_model):
    import cv2

    images = [cv2.imread(str(setting["gallery"] / p), 0) for p in setting["index"].table["path"]]
    pixels = Recipe(size=16).prepare(images).pixels
    scores = {}
    for precision in ("fp32", "bf16"):
        rerank = Reranker(matcher_model, setting["gallery"], margin=None, precision=precision)
        entries = rerank.encode_pixels(pixels)
        scores[rerank.precision] = rerank.score_entries(entries[:9], entries)
    assert set(scores) == {"float32", "bfloat16"}
    assert not np.array_equal(scores["float32"], scores["bfloat16"])  # the backbone did run in bfloat16
    np.testing.assert_allclose(scores["bfloat16"], scores["float32"], atol=0.03)
    with pytest.raises(InvalidInputError, match="precision must be one of"):
        Reranker(matcher_model, setting["gallery"], precision="half")


def test_cli_reranks_in_the_jobs_precision(setting, matcher_model, tiny_model_path, tmp_path):
    from oneshot.pipelines.cli import main

    setting["index"].save(tmp_path / "g.faiss")
    result = CliRunner().invoke(main, ["identify", str(setting["gallery"]), "--index", str(tmp_path / "g.faiss"),
                                       "--model", str(tiny_model_path), "--rerank", str(matcher_model),
                                       "--rerank-margin", "all", "--threshold", "none", "--precision", "bf16",
                                       "--out", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    assert "re-scored in bfloat16" in result.output and "re-ranked 60 of 60 queries" in result.output


def test_a_matched_score_gets_no_cosine_threshold(setting, tiny_model_path, matcher_model):
    rows = []
    summary = identify_job(setting["gallery"], setting["index"], None, tiny_model_path, threshold="model",
                           emit=rows.append, show_progress=False,
                           rerank=Reranker(matcher_model, setting["gallery"], margin=None))
    assert "calibrated on its cosine, not on its map-matched score" in summary.threshold_text
    rows = []
    identify_job(setting["gallery"], setting["index"], None, tiny_model_path, threshold=0.5, emit=rows.append,
                 show_progress=False, rerank=Reranker(matcher_model, setting["gallery"], margin=None))
    answers = pd.concat(rows)
    assert (answers["known"] == (answers["score"] >= np.float32(0.5))).all()


# --- oneshot eval --rerank: the N-way episodes answered again by a second model --------------------------------------


@pytest.fixture(scope="module")
def eval_setting(setting, tmp_path_factory):
    """The gallery, a store of it and a second model, both untrained tiny nets wide enough (16 channels) that
    distinct drawings get distinct vectors (the 4-channel ones give many exact ties)."""
    folder = tmp_path_factory.mktemp("eval_rerank")
    base = _tiny(5, folder, "base", channels=16)
    store = embed_to_store(setting["gallery"], folder / "g.parquet", base).store.folder
    return {"gallery": setting["gallery"], "store": store, "base": base, "other": _tiny(7, folder, "other", channels=16)}


def _episodes_of(setting, way: int, shot: int, episodes: int = 40):
    from oneshot.index.store import read_embeddings
    from oneshot.pipelines.evaluation.evaluate import oneshot_episodes

    stored = read_embeddings(setting["store"])
    return stored, oneshot_episodes(stored.table, way, shot, episodes, True, seed=0)


def _near_ties(scores: np.ndarray) -> int:
    """Queries of (Q, C) ``scores`` whose best two are within float rounding: the untrained tiny
    models map some drawings to the same vector, and there a tie (counted wrong) can go either way."""
    from oneshot.pipelines.evaluation.reranked import best_two_gaps

    return int((best_two_gaps(scores) < 1e-5).sum())


def _other_vectors(setting, table) -> np.ndarray:
    import cv2

    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.encode import encode

    return encode(load_model(setting["other"]), [cv2.imread(str(setting["gallery"] / p), 0) for p in table["path"]])


@pytest.mark.parametrize("shot", [1, 2])
def test_eval_reranked_over_every_class_is_the_second_models_own_answer(eval_setting, shot):
    """Re-scoring every query over all its classes gives the second model's answer: its mean cosine
    to each class's supports, the best strictly highest."""
    from oneshot.pipelines.evaluation.metrics import strictly_best
    from oneshot.pipelines.evaluation.reranked import rerank_episodes

    stored, episodes = _episodes_of(eval_setting, 5, shot)
    rerank = Reranker(eval_setting["other"], eval_setting["gallery"], depth=5, margin=None)
    rerank.bind_rows(stored.table)
    result = rerank_episodes(stored.embeddings, episodes, "cosine", stored.table["id"].to_numpy(), rerank)
    other = _other_vectors(eval_setting, stored.table)
    scores = [(other[e.query] @ other[e.support].reshape(-1, other.shape[1]).T).reshape(len(e.query), 5, shot)
              .mean(axis=2) for e in episodes]
    expected = np.mean([strictly_best(s, e.query_target).mean() for s, e in zip(scores, episodes)])
    ties = sum(_near_ties(s) for s in scores)
    assert ties <= 20 and abs(result["accuracy"] - expected) <= ties / result["queries"] + 1e-12
    assert result["reranked"] == result["queries"] == 5 * len(episodes) and result["unreadable"] == 0
    moved = result["changed"]
    assert result["accuracy"] - result["first_accuracy"] == pytest.approx(
        (moved["fixed"] - moved["broken"]) / (5 * len(episodes)), abs=1e-12)
    assert rerank.stats.gallery_encoded <= 60  # each image encoded once


def test_eval_reranked_with_the_stores_own_model_or_no_room_changes_nothing(eval_setting):
    from oneshot.pipelines.evaluation.reranked import rerank_episodes

    stored, episodes = _episodes_of(eval_setting, 5, 1)
    ids, vectors = stored.table["id"].to_numpy(), stored.embeddings
    ties = sum(_near_ties(vectors[e.query] @ vectors[e.support[:, 0]].T) for e in episodes)
    for model, depth, margin in ((eval_setting["base"], 5, None), (eval_setting["other"], 1, None), (eval_setting["other"], 5, 0.0)):
        rerank = Reranker(model, eval_setting["gallery"], depth=depth, margin=margin)
        rerank.bind_rows(stored.table)
        result = rerank_episodes(vectors, episodes, "cosine", ids, rerank)
        assert abs(result["accuracy"] - result["first_accuracy"]) <= ties / result["queries"] + 1e-12, \
            (model, depth, margin)
        assert result["reranked"] == (0 if margin == 0.0 else result["queries"])
    assert ties <= 20


def test_eval_reranks_only_hesitant_queries_and_keeps_unreadable_ones(eval_setting, tmp_path):
    from oneshot.pipelines.evaluation.reranked import best_two_gaps, rerank_episodes

    stored, episodes = _episodes_of(eval_setting, 5, 1)
    gaps = np.concatenate([best_two_gaps(stored.embeddings[e.query] @ stored.embeddings[e.support[:, 0]].T)
                           for e in episodes])
    margin = float(np.median(gaps))
    rerank = Reranker(eval_setting["other"], eval_setting["gallery"], depth=5, margin=margin)
    rerank.bind_rows(stored.table)
    result = rerank_episodes(stored.embeddings, episodes, "cosine", stored.table["id"].to_numpy(), rerank)
    assert result["reranked"] == int((gaps < margin).sum()) and 0 < result["reranked"] < result["queries"]

    gallery = tmp_path / "gallery"
    shutil.copytree(eval_setting["gallery"], gallery)
    for image in sorted(gallery.rglob("*.png"))[::6]:  # one drawing of every class
        image.write_bytes(b"not a png")
    broken = Reranker(eval_setting["other"], gallery, depth=5, margin=None)
    broken.bind_rows(stored.table)
    result = rerank_episodes(stored.embeddings, episodes, "cosine", stored.table["id"].to_numpy(), broken)
    assert result["unreadable"] > 0 and result["reranked"] + result["unreadable"] == result["queries"]
    assert broken.stats.gallery_unreadable == 10


def test_cli_eval_reranks_the_episodes_and_says_how(eval_setting, tmp_path):
    import json

    from oneshot.pipelines.cli import main

    result = CliRunner().invoke(main, ["eval", str(eval_setting["store"]), "--way", "5", "--episodes", "30", "--no-baseline",
                                       "--rerank", str(eval_setting["other"]), "--rerank-margin", "all"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    reranked = scores["oneshot_reranked"]
    assert reranked["first_accuracy"] == pytest.approx(scores["oneshot"]["accuracy"], abs=1e-12)  # the same episodes
    assert reranked["reranked"] == reranked["queries"] == 150 and reranked["margin"] is None
    assert reranked["model_fingerprint"] and reranked["images_encoded"] <= 60

    carrying = tmp_path / "carrying.safetensors"
    shutil.copy(eval_setting["base"], carrying)
    shutil.copy(Path(eval_setting["base"]).with_suffix(".json"), carrying.with_suffix(".json"))
    store_margin(carrying, 0.01, "validation data", "a rule", "other")
    result = CliRunner().invoke(main, ["eval", str(eval_setting["store"]), "--way", "5", "--episodes", "30", "--no-baseline",
                                       "--rerank", str(eval_setting["other"]), "--model", str(carrying),
                                       "--images", str(eval_setting["gallery"])])
    assert result.exit_code == 0, result.output
    reranked = json.loads(result.output)["oneshot_reranked"]
    assert reranked["margin"] == 0.01 and "carried by the store's model" in reranked["margin_source"]
    result = CliRunner().invoke(main, ["eval", str(eval_setting["store"]), "--way", "5", "--no-baseline",
                                       "--rerank", str(eval_setting["other"]), "--model", str(eval_setting["other"])])
    assert result.exit_code != 0 and "is not the model the store was embedded with" in result.output


def test_cli_eval_reranks_in_the_precision_asked(eval_setting):
    """``eval --precision bf16`` runs the re-ranking model in bfloat16 and says so; the answers stay
    close to float32's (the same episodes, a few near-ties aside); without --rerank it is refused."""
    import json

    from oneshot.pipelines.cli import main

    runs = {}
    for precision in ("fp32", "bf16"):
        result = CliRunner().invoke(main, ["eval", str(eval_setting["store"]), "--way", "5", "--episodes", "30",
                                           "--no-baseline", "--rerank", str(eval_setting["other"]),
                                           "--rerank-margin", "all", "--precision", precision])
        assert result.exit_code == 0, result.output
        runs[precision] = json.loads(result.output)["oneshot_reranked"]
    assert runs["fp32"]["precision"] == "float32" and runs["bf16"]["precision"] == "bfloat16"
    assert runs["bf16"]["reranked"] == runs["fp32"]["reranked"] == 150
    assert abs(runs["bf16"]["accuracy"] - runs["fp32"]["accuracy"]) <= 5 / 150
    result = CliRunner().invoke(main, ["eval", str(eval_setting["store"]), "--no-baseline", "--precision", "bf16"])
    assert result.exit_code != 0 and "--precision applies to the --rerank model" in result.output


def test_margin_rule_picks_the_fewest_rescored_that_keep_the_gain():
    from oneshot.pipelines.evaluation.reranked import margin_by_rule

    runs = [{"margin": None, "accuracy": 0.90, "reranked_share": 1.0},
            {"margin": 0.1, "accuracy": 0.895, "reranked_share": 0.4},
            {"margin": 0.05, "accuracy": 0.891, "reranked_share": 0.2},
            {"margin": 0.02, "accuracy": 0.85, "reranked_share": 0.05}]
    assert margin_by_rule(0.80, runs)["margin"] == 0.05  # keeps 91% of the 10 points
    assert margin_by_rule(0.80, runs, keep=0.95)["margin"] == 0.1
    assert margin_by_rule(0.80, runs, keep=0.999) is None  # no margin keeps enough
    assert margin_by_rule(0.95, runs) is None  # re-scoring every query loses


def test_calibrate_chooses_and_stores_the_rerank_margin(eval_setting, tmp_path):
    from oneshot.embedder.artifact import load_model
    from oneshot.pipelines.cli import main
    from oneshot.pipelines.engines.rerank import stored_margin
    from oneshot.pipelines.evaluation.reranked import MARGINS, margin_by_rule

    model = tmp_path / "base.safetensors"
    shutil.copy(eval_setting["base"], model)
    shutil.copy(Path(eval_setting["base"]).with_suffix(".json"), model.with_suffix(".json"))
    result = CliRunner().invoke(main, ["calibrate", str(model), "--data", str(eval_setting["gallery"]),
                                       "--rerank", str(eval_setting["other"])])
    assert result.exit_code == 0, result.output
    record = load_model(model).info["rerank_margin"]
    assert [r["margin"] for r in record["runs"]] == list(MARGINS)
    chosen = margin_by_rule(record["first_accuracy"], record["runs"])
    full = record["runs"][0]["accuracy"]
    assert record["value"] == (chosen["margin"] if chosen else (2.0 if full > record["first_accuracy"] else 0.0))
    assert "5-way one-shot episodes within groups" in record["chosen_on"] and "command" in record
    assert f"rerank margin {record['value']}" in result.output
    assert stored_margin(load_model(model))[0] == record["value"]  # where identify --rerank finds it
    assert load_model(model).fingerprint == load_model(eval_setting["base"]).fingerprint  # weights untouched
    other_size = _tiny(8, tmp_path, "size24", size=24, channels=16)
    result = CliRunner().invoke(main, ["calibrate", str(model), "--data", str(eval_setting["gallery"]),
                                       "--rerank", str(other_size)])
    assert result.exit_code != 0 and "must match" in result.output  # identify would refuse the pair


def test_face_models_are_refused_by_path_reading(setting):
    rerank = Reranker("face", setting["gallery"])
    with pytest.raises(InvalidInputError, match="face stores keep a row per face"):
        rerank.bind_rows(setting["index"].table)
