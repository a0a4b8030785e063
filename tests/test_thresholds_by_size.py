"""The "unknown" threshold per database size: calibrated on held-out classes, read for the index's size."""
from __future__ import annotations

import numpy as np
import pytest

from oneshot.pipelines.evaluation.thresholds import (
    calibrate_unknown,
    calibrate_unknown_by_size,
    calibrate_unknown_scored,
    resolve_threshold,
    rows_of_drawn_classes,
    threshold_for_enrolled,
)


def _classes(n_classes: int, per_class: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random class centres in 32 dimensions, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 32))
    x = np.repeat(centres, per_class, axis=0) + spread * rng.normal(size=(n_classes * per_class, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat([f"c{i}" for i in range(n_classes)], per_class)


def test_threshold_rises_with_the_number_enrolled():
    x, labels = _classes(700, 3, spread=0.6)
    found = calibrate_unknown_by_size(x, labels, "cosine", seed=0)
    assert found["enrolled"] == [10, 30, 100, 300]  # 2n classes needed: 1000 would need 2000
    values = np.asarray(found["values"])
    assert values[-1] > values[0]  # more impostors in a bigger database: a stricter threshold
    assert all(d >= 1 for d in found["draws"])
    again = calibrate_unknown_by_size(x, labels, "cosine", seed=0)
    assert again == found  # seeded


def test_reading_the_threshold_for_a_size():
    by = {"enrolled": [10, 100], "values": [0.5, 0.7], "rule": "r"}
    value, how = threshold_for_enrolled(by, 10)
    assert value == 0.5 and "10 enrolled" in how
    value, how = threshold_for_enrolled(by, 1000)
    assert value == 0.7 and "100 enrolled" in how
    value, _ = threshold_for_enrolled(by, 31)
    assert value == pytest.approx(0.5 + 0.2 * np.log(3.1) / np.log(10), abs=1e-6)  # linear in log(n)


def test_resolver_uses_the_size_when_the_model_carries_it():
    x, labels = _classes(80, 3, spread=0.5)
    unknown = calibrate_unknown(x, labels, "cosine", "held-out classes", seed=0)
    assert unknown["by_enrolled"]["enrolled"] == [10, 30]
    config = {"info": {"thresholds": {"unknown": unknown}}}
    plain, plain_text = resolve_threshold(config, "unknown")
    assert plain == unknown["value"] and "enrolled" not in plain_text
    sized, text = resolve_threshold(config, "unknown", enrolled=20)
    assert min(unknown["by_enrolled"]["values"]) <= sized <= max(unknown["by_enrolled"]["values"])
    assert "calibrated on held-out classes" in text and "for this index's 20" in text
    given, _ = resolve_threshold(config, "unknown", 0.3, enrolled=20)
    assert given == 0.3


def test_a_threshold_on_any_score_follows_the_cosine_ones_rule():
    x, labels = _classes(80, 3, spread=0.5)
    cosine = calibrate_unknown(x, labels, "cosine", "held-out classes", seed=0)
    scored = calibrate_unknown_scored(lambda a, b: x[a] @ x[b].T, labels, "held-out classes", seed=0, what="cosine")
    # the same split, rule and draws: the cosine scored by hand gives the cosine's thresholds
    assert scored["value"] == pytest.approx(cosine["value"], abs=1e-5)
    assert scored["by_enrolled"]["enrolled"] == cosine["by_enrolled"]["enrolled"]
    np.testing.assert_allclose(scored["by_enrolled"]["values"], cosine["by_enrolled"]["values"], atol=1e-5)
    assert (scored["n_known_queries"], scored["n_unknown_queries"]) == (cosine["n_known_queries"],
                                                                       cosine["n_unknown_queries"])
    # another score, kept as its own kind and read by database size as "unknown" is
    shifted = calibrate_unknown_scored(lambda a, b: x[a] @ x[b].T - 0.25, labels, "held-out classes", seed=0)
    assert shifted["value"] == pytest.approx(cosine["value"] - 0.25, abs=1e-5)
    config = {"info": {"thresholds": {"unknown": cosine, "unknown_reranked": shifted}}}
    value, text = resolve_threshold(config, "unknown_reranked", enrolled=10)
    assert value == pytest.approx(shifted["by_enrolled"]["values"][0]) and "10 enrolled" in text


def test_an_image_without_a_score_is_never_the_best():
    x, labels = _classes(40, 3, spread=0.5)

    def score(a, b):
        found = x[a] @ x[b].T
        found[:, 0] = np.nan  # the first gallery image cannot be read
        return found

    found = calibrate_unknown_scored(score, labels, "held-out classes", seed=0)
    assert np.isfinite(found["value"]) and all(np.isfinite(found["by_enrolled"]["values"]))


def test_scoring_a_chunk_of_queries_at_a_time_changes_nothing(monkeypatch):
    from oneshot.pipelines.evaluation import thresholds

    x, labels = _classes(40, 3, spread=0.5)
    whole = calibrate_unknown_scored(lambda a, b: x[a] @ x[b].T, labels, "held-out classes", seed=0)
    monkeypatch.setattr(thresholds, "SCORED_ROWS", 7)
    chunked = calibrate_unknown_scored(lambda a, b: x[a] @ x[b].T, labels, "held-out classes", seed=0)
    # the same queries, classes and draws; only float32 rounding may move, as BLAS sums blocks of
    # another height in another order on some CPUs (an AVX2 EPYC moved the 8th digit)
    assert _equal_up_to_rounding(chunked, whole)


def _equal_up_to_rounding(a, b) -> bool:
    """Equal nested dicts and lists, floats within float32 rounding (relative 1e-6)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal_up_to_rounding(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal_up_to_rounding, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True)
    return a == b


def test_rows_of_drawn_classes_keeps_whole_classes_within_the_limit():
    labels = np.repeat([f"c{i}" for i in range(40)], np.arange(40) % 7 + 1)  # 1 to 7 images a class
    rows = rows_of_drawn_classes(labels, 50, seed=0)
    kept = set(labels[rows])
    assert len(rows) <= 50 and np.all(np.diff(rows) > 0)
    assert sorted(rows) == sorted(np.flatnonzero(np.isin(labels, list(kept))))  # every row of a drawn class
    assert len(rows) >= 50 - 6  # a class that did not fit was passed over for a smaller one
    assert np.array_equal(rows_of_drawn_classes(labels, 50, seed=0), rows)  # seeded
    assert not np.array_equal(rows_of_drawn_classes(labels, 50, seed=1), rows)
    assert np.array_equal(rows_of_drawn_classes(labels, len(labels), seed=0), np.arange(len(labels)))
