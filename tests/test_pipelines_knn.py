"""Tests for pipelines.evaluation.knn: voting, tie breaks, leave-one-out, gallery/query split."""
import numpy as np
import pandas as pd
import pytest

from oneshot.index.metric import get_metric
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluation.knn import knn_accuracy, knn_classify, split_gallery_queries


def make_index(x, labels, metric="cosine", ids=None):
    ids = np.arange(len(labels)) if ids is None else ids
    return VectorIndex.build(np.asarray(x), pd.DataFrame({"id": ids, "label": labels}), metric)


def at_angles(degrees):
    r = np.deg2rad(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def clusters(n_classes=6, per_class=10, d=8, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, d)) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centers[labels] + spread * rng.standard_normal((labels.size, d))
    return x.astype(np.float32), np.array([f"c{i}" for i in labels], dtype=object)


def naive_knn(x_gallery, labels, queries, k, metric, weighting, exclude=None):
    metric = get_metric(metric)
    sims = metric.similarity(queries, x_gallery)
    out = []
    for i, row in enumerate(sims):
        ranked = np.argsort(-row, kind="stable")
        order = [j for j in ranked if exclude is None or j != exclude[i]][:k]
        tally = {}
        for rank, j in enumerate(order):
            w = 1.0 if weighting == "vote" else 1.0 / max(float(metric.distance(row[j])), 1e-6)
            votes, summed, first = tally.get(labels[j], (0.0, 0.0, rank))
            tally[labels[j]] = (votes + w, summed + float(row[j]), first)
        out.append(max(tally, key=lambda lab: (tally[lab][0], tally[lab][1], -tally[lab][2])))
    return np.array(out, dtype=object)


@pytest.mark.parametrize("metric", ["cosine", "l2", "l1"])
def test_separated_clusters_with_reference_split(metric):
    x, labels = clusters()
    gallery, queries = split_gallery_queries(labels, gallery_fraction=0.3, seed=0)
    index = make_index(x[gallery], labels[gallery], metric, ids=gallery)
    assert knn_accuracy(index, x[queries], labels[queries], k=3) == 1.0


@pytest.mark.parametrize("weighting", ["vote", "distance"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_matches_naive_vote(weighting, metric):
    x, labels = clusters(spread=5.0, seed=3)
    queries = np.random.default_rng(4).standard_normal((30, x.shape[1])) * 3
    index = make_index(x, labels, metric)
    predicted, scores = knn_classify(index, queries, k=7, weighting=weighting)
    expected = naive_knn(x, labels, queries, 7, metric, weighting)
    np.testing.assert_array_equal(predicted, expected)
    sims = get_metric(metric).similarity(queries, x)
    for i in range(len(queries)):
        best = sims[i][labels == predicted[i]].max()
        assert scores[i] == pytest.approx(best, rel=1e-4, abs=1e-4)


def test_vote_tie_broken_by_summed_similarity_then_nearest():
    # Query at 0 degrees; neighbours ranked A(5deg), B(10deg), B(12deg), A(60deg).
    gallery = at_angles([5, 10, 12, 60])
    index = make_index(gallery, ["A", "B", "B", "A"])
    predicted, scores = knn_classify(index, at_angles([0]), k=4)
    assert predicted.tolist() == ["B"]  # 2 votes each; B's similarities sum higher
    assert scores[0] == pytest.approx(np.cos(np.deg2rad(10)), abs=1e-6)
    # L2 from 0: A at 1 and 7 (-1 - 49), B at 5 and -5 (-25 - 25): equal votes and sums,
    # so the nearest (A at 1) wins.
    index = make_index(np.array([[5.0], [7.0], [-5.0], [1.0]]), ["B", "A", "B", "A"], "l2")
    predicted, scores = knn_classify(index, np.array([[0.0]]), k=4)
    assert predicted.tolist() == ["A"] and scores[0] == -1.0


def test_distance_weighting_prefers_the_closest():
    index = make_index(np.array([[0.1], [2.0], [2.1]]), ["near", "far", "far"], "l2")
    assert knn_classify(index, np.array([[0.0]]), k=3)[0].tolist() == ["far"]
    assert knn_classify(index, np.array([[0.0]]), k=3, weighting="distance")[0].tolist() == ["near"]


def test_leave_one_out():
    # Each point's nearest other point has the other label.
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = np.array(["a", "b", "a", "b"], dtype=object)
    ids = np.array([10, 11, 12, 13])
    index = make_index(x, labels, "l2", ids=ids)
    assert knn_classify(index, x, k=1)[0].tolist() == ["a", "b", "a", "b"]
    predicted, _ = knn_classify(index, x, k=1, exclude_ids=ids)
    assert predicted.tolist() == ["b", "a", "b", "a"]
    assert knn_accuracy(index, x, labels, k=1, exclude_ids=ids) == 0.0
    # Leave-one-out on real clusters matches the naive loop.
    xc, lc = clusters(spread=3.0, seed=5)
    index = make_index(xc, lc, "l2")
    predicted, _ = knn_classify(index, xc, k=5, exclude_ids=np.arange(len(lc)))
    expected = naive_knn(xc, lc, xc, 5, "l2", "vote", exclude=np.arange(len(lc)))
    np.testing.assert_array_equal(predicted, expected)


def test_small_gallery_and_bad_arguments():
    index = make_index(np.array([[0.0], [1.0]]), ["a", "b"], "l2")
    predicted, scores = knn_classify(index, np.array([[0.2]]), k=5)
    assert predicted.tolist() == ["a"] and scores[0] == pytest.approx(-0.04)
    with pytest.raises(ValueError, match="weighting"):
        knn_classify(index, np.array([[0.2]]), weighting="uniform")
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(index, np.array([[0.2]]), k=0)
    with pytest.raises(ValueError, match="exclude_ids"):
        knn_classify(index, np.array([[0.2]]), exclude_ids=np.array([0, 1]))


def test_split_gallery_queries():
    labels = np.array(["a"] * 10 + ["b"] * 2 + ["c"] * 3, dtype=object)
    gallery, queries = split_gallery_queries(labels, gallery_fraction=0.3, seed=1)
    assert np.intersect1d(gallery, queries).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([gallery, queries])), np.arange(15))
    counts = pd.Series(labels[gallery]).value_counts().to_dict()
    assert counts == {"a": 3, "b": 1, "c": 1}
    assert set(labels[queries]) == {"a", "b", "c"}
    again = split_gallery_queries(labels, gallery_fraction=0.3, seed=1)
    np.testing.assert_array_equal(again[0], gallery)
    other = split_gallery_queries(labels, gallery_fraction=0.3, seed=2)
    assert not np.array_equal(other[0], gallery)
    with pytest.raises(ValueError, match="'solo'"):
        split_gallery_queries(np.append(labels, "solo"))
    with pytest.raises(ValueError, match="gallery_fraction"):
        split_gallery_queries(labels, gallery_fraction=1.0)
