"""Tests for pipelines.cluster: FAISS KMeans per group, ARI/NMI."""
import faiss
import numpy as np
import pytest

from oneshot.pipelines.cluster import cluster_groups, kmeans, summarize_clusters


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """Tiny inputs: OpenMP start-up on busy shared cores costs more than the clustering."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def grouped_clusters(seed=0, d=10):
    rng = np.random.default_rng(seed)
    xs, labels, groups = [], [], []
    for group, n_classes in (("alpha", 3), ("beta", 5), ("gamma", 2)):
        centers = rng.standard_normal((n_classes, d)) * 5
        for c in range(n_classes):
            xs.append(centers[c] + 0.05 * rng.standard_normal((8, d)))
            labels += [f"{group}-{c}"] * 8
            groups += [group] * 8
    return np.concatenate(xs).astype(np.float32), np.array(labels), np.array(groups)


def test_kmeans_recovers_separated_clusters_deterministically():
    x, labels, _ = grouped_clusters()
    a = kmeans(x, 10, seed=3)
    assert a.dtype == np.int64 and a.shape == (len(x),) and set(a) <= set(range(10))
    np.testing.assert_array_equal(a, kmeans(x, 10, seed=3))
    # Same partition as the labels (cluster ids are arbitrary).
    pairs = set(zip(labels, a.tolist()))
    assert len(pairs) == 10
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, len(x) + 1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("pca_variance", [None, 0.9])
def test_cluster_groups_scores_near_one(metric, pca_variance):
    x, labels, groups = grouped_clusters()
    table = cluster_groups(x, labels, groups, metric, pca_variance=pca_variance, seed=0)
    assert table["group"].tolist() == ["alpha", "beta", "gamma"]
    assert table["n_classes"].tolist() == [3, 5, 2]
    assert table["n_images"].tolist() == [24, 40, 16]
    assert (table["ari"] > 0.99).all() and (table["nmi"] > 0.99).all()
    summary = summarize_clusters(table)
    assert summary["n_groups"] == 3 and summary["n_images"] == 80
    assert summary["ari"] == pytest.approx(table["ari"].mean())


def test_kmeans_function_can_be_swapped_and_pca_is_per_group():
    x, labels, groups = grouped_clusters()
    calls = []

    def fake(x, k, seed=0, spherical=False):
        calls.append((x.shape, k, spherical))
        return np.zeros(len(x), dtype=np.int64)

    table = cluster_groups(x, labels, groups, "cosine", pca_variance=0.95, kmeans_fn=fake)
    assert [c[1] for c in calls] == [3, 5, 2] and all(c[2] for c in calls)
    # Each group was reduced with its own PCA: a group with c classes spans < c dimensions.
    assert [c[0][0] for c in calls] == [24, 40, 16]
    assert all(shape[1] < 10 for shape, _, _ in calls)
    assert (table["ari"] == 0.0).all()


def test_no_groups_and_bad_shapes():
    x, labels, _ = grouped_clusters()
    table = cluster_groups(x, labels, None, "l2")
    assert table["group"].tolist() == ["all"] and table["n_classes"].tolist() == [10]
    assert table["ari"].iloc[0] > 0.99
    with pytest.raises(ValueError, match="labels"):
        cluster_groups(x, labels[:-1], None, "l2")
    with pytest.raises(ValueError, match="groups"):
        cluster_groups(x, labels, labels[:3], "l2")
