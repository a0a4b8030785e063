"""Tests for pipelines.evaluation.verification: pair sampling, vectorised scores, thresholds, report."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneshot.index.metric import METRIC_NAMES, get_metric
from oneshot.pipelines.evaluation.metrics import best_threshold
from oneshot.pipelines.evaluation.verification import (
    calibrate_threshold,
    equal_error_rate,
    pair_scores,
    sample_pairs,
    verification_report,
)


@pytest.fixture
def labelled():
    labels = np.array([f"c{i}" for i in range(8) for _ in range(3)] + ["single"], dtype=object)
    groups = np.array(["g0"] * 12 + ["g1"] * 12 + ["g2"], dtype=object)
    return labels, groups


def test_sample_pairs_balanced_and_correct(labelled):
    labels, _ = labelled
    a, b, same = sample_pairs(labels, 101, seed=4)
    assert a.shape == b.shape == same.shape == (101,)
    assert a.dtype == np.int64 and same.dtype == bool
    assert same.sum() == 50
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert (a[same] != b[same]).all()
    assert not (labels[a] == "single")[same].any()
    again = sample_pairs(labels, 101, seed=4)
    for x, y in zip((a, b, same), again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(sample_pairs(labels, 101, seed=5)[0], a)
    assert not same[:50].all()  # shuffled, not all positives first


def test_same_group_negatives(labelled):
    labels, groups = labelled
    a, b, same = sample_pairs(labels, 200, seed=0, groups=groups, same_group_negatives=True)
    assert (groups[a[~same]] == groups[b[~same]]).all()
    assert (labels[a[~same]] != labels[b[~same]]).all()
    with pytest.raises(ValueError, match="needs groups"):
        sample_pairs(labels, 10, same_group_negatives=True)
    with pytest.raises(ValueError, match="no group has 2"):
        groups = np.array(["x", "x", "x", "y"])
        sample_pairs(labels[:4], 10, groups=groups, same_group_negatives=True)


def test_sample_pairs_errors():
    with pytest.raises(ValueError, match="no class has 2"):
        sample_pairs(np.array(["a", "b", "c"]), 10)
    with pytest.raises(ValueError, match="only one class"):
        sample_pairs(np.array(["a", "a"]), 10)
    with pytest.raises(ValueError, match="n_pairs"):
        sample_pairs(np.array(["a", "a", "b"]), 1)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_pair_scores_match_naive_loop(metric):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, 6))
    a, b = rng.integers(20, size=50), rng.integers(20, size=50)
    scores = pair_scores(emb, a, b, metric)
    m = get_metric(metric)
    expected = [m.similarity(emb[i : i + 1], emb[j : j + 1])[0, 0] for i, j in zip(a, b)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="row indices"):
        pair_scores(emb, np.array([0, 20]), np.array([0, 1]), metric)


def test_threshold_separates_separated_scores():
    rng = np.random.default_rng(1)
    same = rng.random(200) < 0.5
    scores = np.where(same, 0.8, 0.2) + 0.05 * rng.standard_normal(200)
    t = calibrate_threshold(scores.astype(np.float32), same)
    assert scores[~same].max() < t <= scores[same].min()
    report = verification_report(scores, same)
    assert report["accuracy"] == 1.0 and report["roc_auc"] == 1.0 and report["eer"] == 0.0
    assert report["far"] == 0.0 and report["frr"] == 0.0 and report["n_pairs"] == 200


def test_target_far():
    same = np.array([True] * 4 + [False] * 10)
    scores = np.array([0.9, 0.8, 0.7, 0.3] + [0.1 * i for i in range(10)], dtype=np.float32)
    for far in (0.0, 0.1, 0.25, 1.0):
        t = calibrate_threshold(scores, same, target_far=far)
        assert np.mean(scores[~same] >= t) <= far
        # The lowest such threshold: one score step lower breaks the target.
        lower = scores[scores < t]
        if far < 1.0 and lower.size:
            assert np.mean(scores[~same] >= lower.max()) > far


def test_report_with_fixed_threshold_and_eer():
    same = np.array([True, True, False, False])
    scores = np.array([0.9, 0.4, 0.6, 0.1])
    report = verification_report(scores, same, threshold=0.5)
    assert report["accuracy"] == 0.5 and report["far"] == 0.5 and report["frr"] == 0.5
    assert report["roc_auc"] == 0.75
    assert equal_error_rate(scores, same) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both"):
        verification_report(scores[:2], same[:2])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=12),
    st.lists(st.integers(-5, 5), min_size=1, max_size=12),
)
def test_best_threshold_matches_brute_force(pos, neg):
    pos = np.array(pos, dtype=np.float32) / 4
    neg = np.array(neg, dtype=np.float32) / 4
    t, value = best_threshold(pos, neg)
    candidates = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])
    brute = max(np.sum(pos >= c) + np.sum(neg < c) for c in candidates)
    assert value == brute
    assert np.sum(pos >= t) + np.sum(neg < t) == brute
