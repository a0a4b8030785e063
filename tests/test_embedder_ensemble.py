"""Ensembles: several cosine models as one model file (vectors side by side over sqrt(M))."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.artifact import load_model, read_model_config, save_model
from oneshot.embedder.encode import encode
from oneshot.embedder.ensemble import ensemble_models
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError
from oneshot.index.store import read_embeddings
from oneshot.pipelines.cli import main

RECIPE = Recipe(size=16)


def _member(path, seed: int, dim: int = 8, recipe: Recipe = RECIPE, head: str = "normalized", backbone="conv",
            options=None):
    torch.manual_seed(seed)
    model = Embedder(backbone, dim, head, recipe, options or {"channels": 4, "blocks": 2}).eval()
    return save_model(model, path, {"seed": seed})


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    folder = tmp_path_factory.mktemp("members")
    return [_member(folder / "a.safetensors", 1),
            _member(folder / "b.safetensors", 2, dim=6, backbone="resnet-small", options={"widths": [4, 8]})]


@pytest.fixture(scope="module")
def images():
    gallery = make_alphabets(1, 5, drawers=4, seed=0)
    return gallery.read(list(gallery.table["path"]))


def test_an_ensembles_cosine_is_the_mean_of_its_members_cosines(members, images):
    ensemble = ensemble_models(members)
    joined = encode(ensemble, images)
    a, b = (encode(load_model(path), images) for path in members)
    assert joined.shape == (len(images), 14) and joined.dtype == np.float32 and joined.flags["C_CONTIGUOUS"]
    assert ensemble.dim == 14 and ensemble.metric == "cosine"
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(joined @ joined.T, (a @ a.T + b @ b.T) / 2, atol=1e-5)


def test_an_ensemble_saves_and_loads_as_one_model_file(members, images, tmp_path):
    ensemble = ensemble_models(members)
    path = save_model(ensemble, tmp_path / "ab.safetensors", ensemble.info)
    loaded = load_model(path)
    assert loaded.fingerprint == ensemble.fingerprint == read_model_config(path)["fingerprint"]
    np.testing.assert_allclose(encode(loaded, images), encode(ensemble, images), atol=1e-6)
    described = read_model_config(path)["info"]["members"]
    assert [m["model"] for m in described] == [str(p) for p in members]
    assert [m["fingerprint"] for m in described] == [load_model(p).fingerprint for p in members]
    assert [m["dim"] for m in described] == [8, 6]
    assert [m["seed"] for m in described] == [1, 2]  # each member's training record travels with it


@pytest.mark.parametrize("case, message", [
    ("one", "at least two models"),
    ("recipe", "big.safetensors: preprocesses images as .* must match"),
    ("siamese", "siamese.safetensors: ensemble members must give unit vectors"),
])
def test_members_that_cannot_be_joined_are_refused_by_name(members, tmp_path, case, message):
    others = {"one": [], "recipe": [_member(tmp_path / "big.safetensors", 3, recipe=Recipe(size=20))],
              "siamese": [_member(tmp_path / "siamese.safetensors", 3, head="siamese")]}[case]
    with pytest.raises(InvalidInputError, match=message):
        ensemble_models(members[:1] + others)


def test_the_cli_writes_an_ensemble_that_embeds_a_gallery(members, synthetic_gallery, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ab.safetensors"
    result = runner.invoke(main, ["ensemble", *map(str, members), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 models, 14-d vectors" in result.stdout and "oneshot calibrate" in result.stderr
    assert "no thresholds yet (its members carry none to average)" in result.stderr
    info = json.loads(out.with_suffix(".json").read_text())["info"]
    assert "command" in info and [m["model"] for m in info["members"]] == [str(p) for p in members]
    store = tmp_path / "gallery.parquet"
    result = runner.invoke(main, ["embed", str(synthetic_gallery), "--model", str(out), "--out", str(store)])
    assert result.exit_code == 0, result.output
    table = read_embeddings(store)
    assert (len(table), table.dimension) == (60, 14)
    result = runner.invoke(main, ["ensemble", str(members[0]), "--out", str(tmp_path / "one.safetensors")])
    assert result.exit_code == 2 and "at least two models" in result.output
    assert not (tmp_path / "one.safetensors").exists()


def test_the_ensemble_backbone_is_not_trained_from_scratch(synthetic_gallery, tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(synthetic_gallery), "--backbone", "ensemble",
                                       "--steps", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "made from trained models by `oneshot ensemble`" in result.stderr


def _calibrated(path, seed: int, verification: float, unknown: float, cluster: tuple[float, float], sizes=(10, 30)):
    where = f"held-out set {seed}"
    return save_model(load_model(_member(path, seed)), path, {
        "seed": seed, "thresholds": {
            "verification": {"value": verification, "metric": "cosine", "calibrated_on": where, "rule": "r"},
            "unknown": {"value": unknown, "metric": "cosine", "calibrated_on": where, "rule": "r",
                        "by_enrolled": {"enrolled": list(sizes), "values": [unknown - 0.1, unknown + 0.1],
                                        "rule": "by size"}},
            "cluster": {"cluster_distance": cluster[0], "cluster_radius": cluster[1], "calibrated_on": where}}})


def test_an_ensemble_starts_with_the_mean_of_its_members_thresholds(tmp_path):
    from oneshot.pipelines.evaluation.thresholds import resolve_cluster_thresholds, resolve_threshold

    a = _calibrated(tmp_path / "a.safetensors", 1, 0.6, 0.8, (0.10, 0.20))
    b = _calibrated(tmp_path / "b.safetensors", 2, 0.7, 0.7, (0.14, 0.16))
    path = save_model(ensemble_models([a, b]), tmp_path / "ab.safetensors", ensemble_models([a, b]).info)
    model = load_model(path)
    value, source = resolve_threshold(model, "verification", owner="the ensemble")
    assert value == pytest.approx(0.65)
    assert "its members' held-out data (held-out set 1; held-out set 2), averaged" in source
    assert "`oneshot calibrate` gives it its own" in source
    assert resolve_threshold(model, "unknown")[0] == pytest.approx(0.75)
    # per database size: each size's mean (0.7 and 0.6 for 10 enrolled, 0.9 and 0.8 for 30)
    assert resolve_threshold(model, "unknown", enrolled=10)[0] == pytest.approx(0.65)
    assert resolve_threshold(model, "unknown", enrolled=30)[0] == pytest.approx(0.85)
    values, source = resolve_cluster_thresholds(model=path)
    assert values == pytest.approx({"cluster_distance": 0.12, "cluster_radius": 0.18})
    assert "averaged" in source and "built-in" not in source


def test_a_threshold_some_member_lacks_is_left_out_and_sizes_that_differ_are_dropped(members, tmp_path):
    a = _calibrated(tmp_path / "a.safetensors", 1, 0.6, 0.8, (0.10, 0.20))
    b = _calibrated(tmp_path / "b.safetensors", 2, 0.7, 0.7, (0.14, 0.16), sizes=(10, 100))
    assert "thresholds" not in ensemble_models([a, members[0]]).info  # the member without any: nothing averaged
    thresholds = ensemble_models([a, b]).info["thresholds"]
    assert set(thresholds) == {"verification", "unknown", "cluster"}
    assert "by_enrolled" not in thresholds["unknown"] and thresholds["unknown"]["value"] == pytest.approx(0.75)


def test_an_ensemble_with_matched_members_starts_with_the_mean_threshold_of_the_score_it_reranks_by(members,
                                                                                                     tmp_path):
    from oneshot.embedder.ensemble import MEAN_RULE, TRAINED_MEAN, TRAINED_MEAN_RULE, mean_member_thresholds
    from oneshot.pipelines.evaluation.thresholds import resolve_threshold

    where = {"calibrated_on": "held-out", "rule": "r"}
    matched = {"thresholds": {"unknown": {"value": 0.8, **where}, "unknown_reranked": {"value": 0.6, **where}}}
    plain = {"thresholds": {"unknown": {"value": 0.7, **where}}}
    # the ensemble re-scores by the mean of the matched member's trained score and the other's cosine
    thresholds = mean_member_thresholds([matched, plain], [True, False])
    assert thresholds["unknown"]["value"] == pytest.approx(0.75)
    assert thresholds["unknown_reranked"]["value"] == pytest.approx(0.65)
    assert thresholds["unknown_reranked"]["metric"] == TRAINED_MEAN
    assert thresholds["unknown_reranked"]["rule"] == TRAINED_MEAN_RULE and thresholds["unknown"]["rule"] == MEAN_RULE
    assert resolve_threshold({"info": {"thresholds": thresholds}}, "unknown_reranked")[0] == pytest.approx(0.65)
    assert "unknown_reranked" not in mean_member_thresholds([matched, plain])  # no member matched: cosine only
    assert "unknown_reranked" not in mean_member_thresholds([plain, plain], [True, False])  # never calibrated
    torch.manual_seed(4)
    model = Embedder("conv", 8, "normalized", RECIPE, {"channels": 4, "blocks": 2}, match_dim=3).eval()
    file = save_model(model, tmp_path / "matched.safetensors", matched)
    other = save_model(load_model(members[0]), tmp_path / "plain.safetensors", plain)
    joined = ensemble_models([file, other]).info["thresholds"]
    assert joined["unknown_reranked"]["value"] == pytest.approx(0.65)


def test_the_cli_says_where_an_ensembles_thresholds_come_from(tmp_path):
    a = _calibrated(tmp_path / "a.safetensors", 1, 0.6, 0.8, (0.10, 0.20))
    b = _calibrated(tmp_path / "b.safetensors", 2, 0.7, 0.7, (0.14, 0.16))
    result = CliRunner().invoke(main, ["ensemble", str(a), str(b), "--out", str(tmp_path / "ab.safetensors")])
    assert result.exit_code == 0, result.output
    assert "thresholds (cluster, unknown, verification): the mean of its members' calibrated values" in result.stderr
    assert "oneshot calibrate" in result.stderr
    carried = read_model_config(tmp_path / "ab.safetensors")["info"]["thresholds"]
    assert carried["verification"]["value"] == pytest.approx(0.65)


def test_the_cli_says_where_an_ensemble_uses_its_members_matchers(members, tmp_path):
    from oneshot.embedder.ensemble import members_with_matchers, scoring_members

    torch.manual_seed(4)
    matched = save_model(Embedder("conv", 8, "normalized", RECIPE, {"channels": 4, "blocks": 2}, match_dim=3).eval(),
                         tmp_path / "matched.safetensors")
    result = CliRunner().invoke(main, ["ensemble", str(members[0]), str(matched),
                                       "--out", str(tmp_path / "e.safetensors")])
    assert result.exit_code == 0, result.output
    assert f"members {matched} have map matchers" in result.stderr and "cosine only" in result.stderr
    assert "as a re-ranker" in result.stderr and "members' trained scores" in result.stderr
    joined = load_model(tmp_path / "e.safetensors")
    assert members_with_matchers(joined) == [1] and joined.matcher is None
    assert [m.matcher is not None for m in scoring_members(joined)] == [False, True]
    plain = ensemble_models(members)
    assert members_with_matchers(plain) == [] and scoring_members(plain) == [plain]
    result = CliRunner().invoke(main, ["ensemble", *map(str, members), "--out", str(tmp_path / "p.safetensors")])
    assert "map matchers" not in result.stderr
