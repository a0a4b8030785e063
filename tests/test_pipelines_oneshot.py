"""Tests for pipelines.evaluation.prototypes: prototype accuracy, strict ties, Lake-style runs."""
import numpy as np
import pytest

from oneshot.index.metric import METRIC_NAMES, get_metric
from oneshot.pipelines.evaluation.episodes import Episode, sample_episodes
from oneshot.pipelines.evaluation.metrics import confidence_interval95
from oneshot.pipelines.evaluation.prototypes import evaluate_episodes, evaluate_runs, prototypes


def clusters(n_classes=8, per_class=5, d=12, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, d)) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centers[labels] + spread * rng.standard_normal((labels.size, d))
    return x.astype(np.float32), labels.astype(str)


def naive_accuracy(x, episode, metric):
    metric = get_metric(metric)
    p = metric.prepare(x)
    protos = metric.prepare(np.stack([p[row].mean(0) for row in episode.support]))
    right = []
    for q, t in zip(episode.query, episode.query_target):
        s = [float(metric.similarity(p[q : q + 1], proto[None])[0, 0]) for proto in protos]
        right.append(all(s[t] > s[j] for j in range(len(s)) if j != t))
    return np.mean(right)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_separated_clusters_are_perfect(metric):
    x, labels = clusters()
    episodes = sample_episodes(labels, n_way=5, k_shot=1, n_query=2, n_episodes=20, seed=0)
    result = evaluate_episodes(x, episodes, metric)
    assert result.accuracy == 1.0 and result.ci95 == 0.0 and result.n_episodes == 20


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_matches_naive_loop_on_noisy_data(metric):
    x, labels = clusters(spread=4.0, seed=1)
    episodes = sample_episodes(labels, n_way=6, k_shot=2, n_query=2, n_episodes=25, seed=2)
    result = evaluate_episodes(x, episodes, metric)
    expected = np.array([naive_accuracy(x, ep, metric) for ep in episodes])
    np.testing.assert_allclose(result.per_episode, expected)
    assert 0.0 < result.accuracy < 1.0
    assert result.ci95 == pytest.approx(1.96 * expected.std(ddof=1) / np.sqrt(25))


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_tie_counts_as_wrong(metric):
    x = np.ones((10, 4), dtype=np.float32)
    labels = np.repeat(np.arange(5), 2).astype(str)
    episodes = sample_episodes(labels, n_way=5, n_episodes=5, seed=0)
    assert evaluate_episodes(x, episodes, metric).accuracy == 0.0
    support = np.ones((2, 3, 4))
    queries = np.ones((2, 3, 4))
    answers = np.zeros((2, 3), dtype=np.int64)
    np.testing.assert_array_equal(evaluate_runs(support, queries, answers, metric), [1.0, 1.0])


def test_chosen_angles_and_target_not_at_zero():
    angles = np.deg2rad([0, 90, 180, 10, 100])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # support rows 0, 1, 2; queries 3 (near class at position 0) and 4 (near position 1).
    episode = Episode(
        support=np.array([[1], [0], [2]]),  # positions: 0 -> 90deg, 1 -> 0deg, 2 -> 180deg
        query=np.array([3, 4]),
        query_target=np.array([1, 0]),
        classes=["b", "a", "c"],
    )
    assert evaluate_episodes(x, [episode], "cosine").accuracy == 1.0
    wrong = Episode(episode.support, episode.query, np.array([0, 1]), episode.classes)
    assert evaluate_episodes(x, [wrong], "cosine").accuracy == 0.0


def test_prototype_is_the_mean_of_normalised_support():
    support = np.array([[[10.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(prototypes(support, "cosine"), [[np.sqrt(0.5), np.sqrt(0.5)]])
    np.testing.assert_allclose(prototypes(support, "l2"), [[5.0, 0.5]])
    with pytest.raises(ValueError, match="n_way, k_shot, D"):
        prototypes(support[0], "l2")


def test_k_shot_mean_beats_single_nearest():
    # Class 0 support at -1 and +3 (mean +1); class 1 support at +2.5.
    # The query at +1.2 is closest to class 1's single vector but to class 0's prototype.
    x = np.array([[-1.0], [3.0], [2.5], [2.5], [1.2]])
    episode = Episode(np.array([[0, 1], [2, 3]]), np.array([4]), np.array([0]), ["a", "b"])
    assert evaluate_episodes(x, [episode], "l2").accuracy == 1.0


def test_evaluate_runs_known_errors():
    support = np.stack([np.eye(3), np.eye(3)])
    queries = np.stack([np.eye(3) * 2, np.eye(3)[[1, 0, 2]]])
    answers = np.array([[0, 1, 2], [0, 1, 2]])
    errors = evaluate_runs(support, queries, answers, "cosine")
    np.testing.assert_allclose(errors, [0.0, 2 / 3])


def test_bad_inputs():
    x, labels = clusters()
    episodes = sample_episodes(labels, n_way=3, n_episodes=2)
    with pytest.raises(ValueError, match="at least one"):
        evaluate_episodes(x, [], "l2")
    with pytest.raises(ValueError, match="rows must be in"):
        evaluate_episodes(x[:3], episodes, "l2")
    with pytest.raises(ValueError, match="answers"):
        evaluate_runs(np.zeros((2, 3, 4)), np.zeros((2, 5, 4)), np.zeros((2, 4), int), "l2")
    with pytest.raises(ValueError, match="queries"):
        evaluate_runs(np.zeros((2, 3, 4)), np.zeros((2, 5, 3)), np.zeros((2, 5), int), "l2")


def test_confidence_interval():
    assert confidence_interval95(np.array([0.5])) == 0.0
    values = np.array([0.0, 1.0, 1.0, 0.0])
    assert confidence_interval95(values) == pytest.approx(1.96 * values.std(ddof=1) / 2)
    with pytest.raises(ValueError):
        confidence_interval95(np.array([]))
