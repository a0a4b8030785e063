"""Tests for pipelines.evaluation.cluster_scores: Hungarian accuracy against a brute-force search."""
import itertools

import numpy as np
import pytest

from oneshot.pipelines.evaluation.cluster_scores import clustering_scores, contingency, hungarian_accuracy


def brute_force_accuracy(truth, predicted):
    """Best one-to-one matching by trying every injective map between classes and clusters."""
    classes, clusters = sorted(set(truth)), sorted(set(predicted))
    best = 0
    small, large = (classes, clusters) if len(classes) <= len(clusters) else (clusters, classes)
    for image in itertools.permutations(large, len(small)):
        match = dict(zip(small, image))
        if len(classes) <= len(clusters):
            hits = sum(match[t] == p for t, p in zip(truth, predicted))
        else:
            hits = sum(match[p] == t for t, p in zip(truth, predicted))
        best = max(best, hits)
    return best / len(truth)


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    truth = rng.integers(0, rng.integers(1, 6), n)
    predicted = rng.integers(0, rng.integers(1, 7), n)  # fewer or more clusters than classes
    assert hungarian_accuracy(truth, predicted) == pytest.approx(brute_force_accuracy(truth.tolist(), predicted.tolist()))


def test_perfect_relabelled_split_and_merged():
    truth = np.array(["a", "a", "b", "b", "c", "c"])
    assert hungarian_accuracy(truth, np.array([5, 5, 3, 3, 9, 9])) == 1.0
    # One class split in two clusters: the smaller half is unmatched, so wrong.
    assert hungarian_accuracy(truth, np.array([0, 1, 2, 2, 3, 3])) == pytest.approx(5 / 6)
    # Everything in one cluster: only one class can be matched.
    assert hungarian_accuracy(truth, np.zeros(6)) == pytest.approx(2 / 6)


def test_scores_dict_and_contingency():
    truth = np.array([0, 0, 1, 1, 1])
    predicted = np.array([1, 1, 0, 0, 2])
    scores = clustering_scores(truth, predicted)
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["n_clusters"] == 3 and scores["n_classes"] == 2
    assert scores["k_relative_error"] == pytest.approx(0.5)
    assert 0 < scores["ari"] < 1 and 0 < scores["nmi"] < 1
    np.testing.assert_array_equal(contingency(truth, predicted), [[0, 2, 0], [2, 0, 1]])
    with pytest.raises(ValueError, match="same length"):
        contingency(truth, predicted[:-1])
