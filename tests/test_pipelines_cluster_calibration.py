"""Tests for pipelines.evaluation.cluster_thresholds and the cluster side of the one threshold resolver: calibrated values and where a run takes them from."""
import numpy as np
import pandas as pd
import pytest

from oneshot.embedder.artifact import read_model_config, save_model
from oneshot.pipelines.evaluation.cluster_thresholds import DEFAULT_THRESHOLDS, calibrate_cluster_threshold
from oneshot.pipelines.evaluation.thresholds import carried_threshold, resolve_cluster_thresholds


def carried_cluster_thresholds(config: dict) -> dict:
    """The clustering thresholds a model file's config carries, by kind (possibly none)."""
    found = {key: carried_threshold(config.get("info"), key).get("value") for key in DEFAULT_THRESHOLDS}
    return {key: value for key, value in found.items() if value is not None}


def naive(x, labels):
    """Same-class pair distances and distances to the class centre, by loops (cosine)."""
    pairs, radii = [], []
    for c in np.unique(labels):
        xc = x[labels == c]
        pairs += [1 - xc[i] @ xc[j] for i in range(len(xc)) for j in range(i + 1, len(xc))]
        centre = xc.mean(0) / np.linalg.norm(xc.mean(0))
        radii += [1 - v @ centre for v in xc]
    return np.array(pairs), np.array(radii)


def test_calibration_matches_a_naive_computation():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 7)
    x = rng.standard_normal((6, 12))[labels] + 0.3 * rng.standard_normal((42, 12))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    table = pd.DataFrame({"label": labels.astype(str), "group": np.where(labels < 3, "a", "b")})
    result = calibrate_cluster_threshold(x, table, "cosine", radius_quantile=0.9)
    pairs, radii = naive(x.astype(np.float64), labels)
    assert result["cluster_distance"] == pytest.approx(np.median(pairs), abs=1e-5)
    assert result["cluster_radius"] == pytest.approx(np.quantile(radii, 0.9), abs=1e-5)
    assert result["classes"] == 6 and result["groups"] == 2 and result["same_class_pairs"] == 6 * 21
    assert 0.0 <= result["new_class_flagged"] <= 1.0
    with pytest.raises(ValueError, match="at least two"):
        calibrate_cluster_threshold(x[:3], table.iloc[[0, 7, 14]], "cosine")


def test_thresholds_come_from_given_then_model_then_default(tmp_path, tiny_model_path):
    from oneshot.embedder.artifact import load_model

    model = load_model(tiny_model_path)
    carried = save_model(model, tmp_path / "carrying.safetensors",
                         info={"thresholds": {"cluster_distance": 0.3, "cluster_radius": 0.4}})
    metadata = {"model_fingerprint": model.fingerprint}
    assert carried_cluster_thresholds(read_model_config(carried)) == {"cluster_distance": 0.3, "cluster_radius": 0.4}
    values, source = resolve_cluster_thresholds(metadata, carried)
    assert values == {"cluster_distance": 0.3, "cluster_radius": 0.4} and "carried by the model file" in source
    values, source = resolve_cluster_thresholds(metadata, carried, {"cluster_radius": 0.25, "cluster_distance": None})
    assert values == {"cluster_distance": 0.3, "cluster_radius": 0.25} and "(given on the command line)" in source
    values, source = resolve_cluster_thresholds(metadata)  # not the shipped model, nothing carried
    assert values == DEFAULT_THRESHOLDS and "built-in default" in source


def test_a_store_of_the_shipped_model_reads_what_the_shipped_model_carries():
    from oneshot.embedder.artifact import DEFAULT_MODEL

    config = read_model_config(DEFAULT_MODEL)
    values, source = resolve_cluster_thresholds({"model_fingerprint": config["fingerprint"]})
    expected = carried_cluster_thresholds(config) or DEFAULT_THRESHOLDS
    assert values == {**DEFAULT_THRESHOLDS, **expected}
    assert ("carried by the shipped model" in source) == bool(carried_cluster_thresholds(config))
