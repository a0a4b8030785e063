"""Tests for index.metric: one similarity convention, checked against naive loops and FAISS."""
import faiss
import numpy as np
import pytest

from oneshot.index.metric import METRIC_NAMES, Metric, get_metric


def naive_similarity(name, q, g):
    out = np.empty((len(q), len(g)))
    for i, a in enumerate(q.astype(np.float64)):
        for j, b in enumerate(g.astype(np.float64)):
            if name == "cosine":
                out[i, j] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            elif name == "l2":
                out[i, j] = -np.sum((a - b) ** 2)
            else:
                out[i, j] = -np.sum(np.abs(a - b))
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((7, 5)), rng.standard_normal((11, 5))


def test_get_metric_known_and_unknown():
    for name in METRIC_NAMES:
        assert get_metric(name).name == name
        assert get_metric(get_metric(name)) is get_metric(name)
    with pytest.raises(ValueError, match="cosine, l2, l1"):
        get_metric("dot")
    with pytest.raises(ValueError, match="known"):
        Metric("euclid")


def test_faiss_metric_constants():
    assert get_metric("cosine").faiss_metric == faiss.METRIC_INNER_PRODUCT
    assert get_metric("l2").faiss_metric == faiss.METRIC_L2
    assert get_metric("l1").faiss_metric == faiss.METRIC_L1


def test_prepare_copies_float32_contiguous_and_normalises_for_cosine():
    x = np.asfortranarray(np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    for name in METRIC_NAMES:
        out = get_metric(name).prepare(x)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        out[0, 0] = 99
        assert x[0, 0] == 3.0
    cos = get_metric("cosine").prepare(x)
    np.testing.assert_allclose(cos, [[0.6, 0.8], [0, 0], [1, 0]], rtol=1e-6)
    np.testing.assert_array_equal(get_metric("l2").prepare(x), x.astype(np.float32))


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 2, 2)), np.array([[np.nan, 1.0]])])
def test_prepare_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        get_metric("l2").prepare(bad)


def test_cosine_at_chosen_angles():
    angles = np.deg2rad([0, 60, 90, 180])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1) * [[1], [2], [3], [4]]
    sims = get_metric("cosine").similarity(np.array([[5.0, 0.0]]), gallery)
    np.testing.assert_allclose(sims[0], [1.0, 0.5, 0.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_similarity_matches_naive_loop(name, data):
    q, g = data
    sims = get_metric(name).similarity(q, g)
    assert sims.shape == (7, 11) and sims.dtype == np.float32
    np.testing.assert_allclose(sims, naive_similarity(name, q, g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_pairwise_is_diagonal_of_similarity(name, data):
    q, g = data
    metric = get_metric(name)
    np.testing.assert_allclose(
        metric.pairwise(q, g[:7]), np.diag(metric.similarity(q, g[:7])), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError):
        metric.pairwise(q, g)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_from_faiss_matches_exact_similarity(name, data):
    q, g = data
    metric = get_metric(name)
    index = faiss.IndexFlat(g.shape[1], metric.faiss_metric)
    index.add(metric.prepare(g))
    raw, ids = index.search(metric.prepare(q), 4)
    scores = metric.from_faiss(raw)
    exact = naive_similarity(name, q, g)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ids, np.argsort(-exact, axis=1, kind="stable")[:, :4])
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_similarity_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension"):
        get_metric("l1").similarity(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_distance_is_non_negative_and_decreasing(name):
    metric = get_metric(name)
    sims = np.array([1.0, 0.5, 0.0, -0.5, -4.0], dtype=np.float32)
    if name != "cosine":
        sims = sims[2:]
    d = metric.distance(sims)
    assert np.all(d >= 0) and np.all(np.diff(d) > 0)
