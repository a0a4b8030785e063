"""The shipped default model: provenance in its file, and its error on Lake's official runs
stays within one point of the figure the README states."""
from __future__ import annotations

import re
from pathlib import Path

from oneshot.embedder.artifact import DEFAULT_MODEL, load_model, read_model_config
from oneshot.pipelines.jobs.train import lake_errors

README = Path(__file__).resolve().parents[1] / "README.md"
STATED = "shipped model's error on Lake's 20 official runs"
STATED_ENSEMBLE = "`handwriting-ensemble`'s error on Lake's 20 official runs"


def stated_error_percent(sentence: str = STATED) -> float:
    match = re.search(re.escape(sentence) + r": \*\*([0-9.]+)%\*\*", README.read_text())
    if match is None:
        raise AssertionError(f"{README}: no sentence '{sentence}: **X%**'")
    return float(match.group(1))


def test_shipped_model_records_how_it_was_trained():
    config = read_model_config(DEFAULT_MODEL)
    info = config["info"]
    assert info["command"].startswith("oneshot train ")
    assert isinstance(info["seed"], int)
    assert 0 < info["train_seconds"] <= 30 * 60
    assert info["data"] == "omniglot/background"
    assert DEFAULT_MODEL.stat().st_size < 5 * 2**20


def test_shipped_model_error_on_lake_runs_matches_readme(omniglot_dir):
    table = lake_errors(omniglot_dir, load_model())
    assert table["trials"].sum() == 400
    measured = 100 * table["error_rate"].mean()
    assert abs(measured - stated_error_percent()) <= 1.0, f"measured {measured:.2f}% error"


def test_the_second_default_still_ships_and_serves_what_was_embedded_with_it():
    """``handwriting-v2`` (the default before the current one) is the same net as the default, so a store
    embedded with it is found by fingerprint, never taken for the default's."""
    from oneshot.embedder.artifact import HANDWRITING_V2_MODEL, shipped_model_with
    from oneshot.pipelines.evaluation.thresholds import resolve_cluster_thresholds

    v2, default = load_model("handwriting-v2"), load_model()
    assert v2.fingerprint != default.fingerprint and v2.config() == default.config()
    assert shipped_model_with(v2.fingerprint) == HANDWRITING_V2_MODEL
    assert shipped_model_with(default.fingerprint) == DEFAULT_MODEL
    values, source = resolve_cluster_thresholds({"model_fingerprint": v2.fingerprint})
    carried = read_model_config(HANDWRITING_V2_MODEL)["info"]["thresholds"]["cluster"]
    assert values["cluster_distance"] == carried["cluster_distance"]
    assert "carried by the shipped model handwriting_v2.safetensors" in source


def test_the_first_handwriting_model_still_ships_and_serves_what_was_embedded_with_it():
    from oneshot.embedder.artifact import HANDWRITING_V1_MODEL, shipped_model_with
    from oneshot.pipelines.evaluation.cluster_thresholds import DEFAULT_FINGERPRINT
    from oneshot.pipelines.evaluation.thresholds import resolve_cluster_thresholds

    v1 = load_model("handwriting-v1")
    assert v1.fingerprint == DEFAULT_FINGERPRINT != load_model().fingerprint
    assert shipped_model_with(v1.fingerprint) == HANDWRITING_V1_MODEL
    # A store embedded with it (before the default changed) still reads that model's thresholds.
    values, source = resolve_cluster_thresholds({"model_fingerprint": v1.fingerprint})
    carried = read_model_config(HANDWRITING_V1_MODEL)["info"]["thresholds"]["cluster"]
    assert values["cluster_distance"] == carried["cluster_distance"]
    assert "carried by the shipped model handwriting_v1.safetensors" in source


def test_the_ensemble_ships_as_two_nets_trained_in_bf16_inside_the_budget_with_its_own_thresholds():
    from oneshot.embedder.artifact import HANDWRITING_ENSEMBLE_MODEL, shipped_model_with

    ensemble = load_model("handwriting-ensemble")
    members = read_model_config(HANDWRITING_ENSEMBLE_MODEL)["info"]["members"]
    assert [m.backbone_name for m in ensemble.backbone.members] == ["resnet-small", "conv4"] and ensemble.dim == 256
    assert all(m["command"].startswith("oneshot train ") and "_bf16.json" in m["command"] and m["train_seconds"] > 0
               for m in members)
    assert sum(m["train_seconds"] for m in members) <= 30 * 60  # the training budget, both members
    assert shipped_model_with(ensemble.fingerprint) == HANDWRITING_ENSEMBLE_MODEL
    thresholds = ensemble.info["thresholds"]
    assert {"verification", "unknown", "cluster"} <= set(thresholds)
    for kind in ("verification", "unknown", "cluster"):  # calibrated for the ensemble itself, on validation alphabets
        assert thresholds[kind]["command"].startswith("oneshot calibrate embedder/weights/handwriting_ensemble")
        assert "Bengali" in thresholds[kind]["calibrated_on"]
    assert HANDWRITING_ENSEMBLE_MODEL.stat().st_size < 8 * 2**20


def test_the_first_ensemble_still_ships_and_serves_what_was_embedded_with_it():
    from oneshot.embedder.artifact import HANDWRITING_ENSEMBLE_V1_MODEL, shipped_model_with

    first, v2 = load_model("handwriting-ensemble-v1"), load_model("handwriting-v2")
    members = read_model_config(HANDWRITING_ENSEMBLE_V1_MODEL)["info"]["members"]
    assert members[1]["fingerprint"] == v2.fingerprint and first.backbone.members[0].backbone_name == "resnet-small"
    assert first.fingerprint != load_model("handwriting-ensemble").fingerprint
    assert shipped_model_with(first.fingerprint) == HANDWRITING_ENSEMBLE_V1_MODEL
    assert "Bengali" in first.info["thresholds"]["unknown"]["calibrated_on"]


def test_the_ensembles_error_on_lake_runs_matches_readme(omniglot_dir):
    table = lake_errors(omniglot_dir, load_model("handwriting-ensemble"))
    measured = 100 * table["error_rate"].mean()
    assert abs(measured - stated_error_percent(STATED_ENSEMBLE)) <= 1.0, f"measured {measured:.2f}% error"


def test_the_handwriting_index_models_carry_their_own_rerank_margins():
    """The re-ranking margin is in the index model's cosine: each shipped index model carries the one
    benchmarks.rerank chose for it on the validation alphabets, and identify takes it by default."""
    from oneshot.pipelines.engines.rerank import DEFAULT_MARGIN, stored_margin

    for name, expected in (("default", DEFAULT_MARGIN), ("handwriting-v2", 0.05)):  # DEFAULT_MARGIN: the default's
        model = load_model(name)
        record = model.info["rerank_margin"]
        assert record["value"] == expected and "validation alphabets" in record["chosen_on"]
        assert record["command"].startswith("python -m benchmarks.rerank ") and "--store-margin" in record["command"]
        assert stored_margin(model) == (expected, f"carried by the index's model, chosen on {record['chosen_on']}")
        assert record["reranker"] == f"handwriting-ensemble (fingerprint {load_model('handwriting-ensemble').fingerprint})"
