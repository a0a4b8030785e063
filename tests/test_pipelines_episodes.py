"""Tests for pipelines.evaluation.episodes: label-only N-way k-shot sampling."""
import numpy as np
import pytest

from oneshot.pipelines.evaluation.episodes import sample_episodes


@pytest.fixture
def dataset():
    # 3 groups: A has 6 classes, B has 5, C has 2; every class has 4 items.
    labels, groups = [], []
    for group, n_classes in (("A", 6), ("B", 5), ("C", 2)):
        for c in range(n_classes):
            labels += [f"{group}{c}"] * 4
            groups += [group] * 4
    return np.array(labels, dtype=object), np.array(groups, dtype=object)


def test_shapes_and_membership(dataset):
    labels, _ = dataset
    episodes = sample_episodes(labels, n_way=5, k_shot=2, n_query=2, n_episodes=30, seed=3)
    assert len(episodes) == 30
    for ep in episodes:
        assert ep.support.shape == (5, 2) and ep.support.dtype == np.int64
        assert ep.query.shape == (10,) and ep.query_target.shape == (10,)
        assert ep.n_way == 5 and ep.k_shot == 2
        assert len(set(ep.classes)) == 5
        for position, cls in enumerate(ep.classes):
            assert (labels[ep.support[position]] == cls).all()
        np.testing.assert_array_equal(labels[ep.query], np.array(ep.classes)[ep.query_target])
        rows = np.concatenate([ep.support.ravel(), ep.query])
        assert len(np.unique(rows)) == rows.size  # no item used twice
        assert np.bincount(ep.query_target, minlength=5).tolist() == [2] * 5


def test_deterministic_per_seed(dataset):
    labels, _ = dataset
    a = sample_episodes(labels, n_way=4, n_episodes=10, seed=7)
    b = sample_episodes(labels, n_way=4, n_episodes=10, seed=7)
    c = sample_episodes(labels, n_way=4, n_episodes=10, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.support, y.support)
        np.testing.assert_array_equal(x.query, y.query)
        np.testing.assert_array_equal(x.query_target, y.query_target)
        assert x.classes == y.classes
    assert any(not np.array_equal(x.support, z.support) for x, z in zip(a, c))


def test_true_class_position_is_shuffled(dataset):
    labels, _ = dataset
    episodes = sample_episodes(labels, n_way=5, n_query=1, n_episodes=60, seed=0)
    targets = np.concatenate([ep.query_target for ep in episodes])
    assert set(targets.tolist()) == set(range(5))
    first_query_targets = {int(ep.query_target[0]) for ep in episodes}
    assert len(first_query_targets) > 1  # the first query is not always class 0
    assert len({tuple(sorted(ep.classes)) for ep in episodes}) > 1
    assert len({ep.classes[0] for ep in episodes}) > 1


def test_within_group(dataset):
    labels, groups = dataset
    episodes = sample_episodes(labels, groups, n_way=5, n_episodes=40, within_group=True, seed=1)
    seen = set()
    for ep in episodes:
        group = {g for g in groups[np.concatenate([ep.support.ravel(), ep.query])]}
        assert len(group) == 1
        seen |= group
    assert seen == {"A", "B"}  # C has only 2 classes: skipped
    with pytest.raises(ValueError, match="no group has n_way = 7"):
        sample_episodes(labels, groups, n_way=7, within_group=True)
    with pytest.raises(ValueError, match="needs groups"):
        sample_episodes(labels, n_way=3, within_group=True)


def test_class_with_too_few_items_is_named(dataset):
    labels, _ = dataset
    labels = np.append(labels, "lonely")
    with pytest.raises(ValueError, match="'lonely' \\(1\\)"):
        sample_episodes(labels, n_way=3, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match="fewer than k_shot \\+ n_query = 5"):
        sample_episodes(labels[:-1], n_way=3, k_shot=3, n_query=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_way": 1}, "n_way"),
        ({"k_shot": 0}, "k_shot"),
        ({"n_query": -1}, "n_query"),
        ({"n_episodes": 0}, "n_episodes"),
        ({"n_way": 40}, "only 13 classes"),
        ({"groups": np.array(["a"])}, "groups"),
    ],
)
def test_bad_arguments(dataset, kwargs, match):
    labels, _ = dataset
    with pytest.raises(ValueError, match=match):
        sample_episodes(labels, **kwargs)
