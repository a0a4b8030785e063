"""Tests for pipelines.evaluation.clustering and kmeans: spectral clustering per group, the eigengap estimate of K, KMeans."""
import faiss
import numpy as np
import pandas as pd
import pytest

from oneshot.pipelines.evaluation.cluster_scores import hungarian_accuracy
from oneshot.pipelines.evaluation.cluster_thresholds import calibrate_cluster_threshold
from oneshot.pipelines.evaluation.clustering import (
    centred,
    choose_n_neighbors,
    cluster_groups,
    cluster_vectors,
    estimate_n_clusters,
    kmeans,
    neighbour_graph,
    shared_neighbour_graph,
    spread_wider_than_a_class,
    summarize_clusters,
)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """Tiny inputs: OpenMP start-up on busy shared cores costs more than the clustering."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def grouped_clusters(seed=0, d=10, sizes=(("alpha", 3), ("beta", 5), ("gamma", 2)), per_class=8, spread=0.05):
    rng = np.random.default_rng(seed)
    xs, labels, groups = [], [], []
    for group, n_classes in sizes:
        centers = rng.standard_normal((n_classes, d)) * 5
        for c in range(n_classes):
            xs.append(centers[c] + spread * rng.standard_normal((per_class, d)))
            labels += [f"{group}-{c}"] * per_class
            groups += [group] * per_class
    return np.concatenate(xs).astype(np.float32), np.array(labels), np.array(groups)


def as_table(labels, groups):
    return pd.DataFrame({"id": np.arange(len(labels)), "path": [f"img{i}.png" for i in range(len(labels))],
                         "label": labels, "group": groups})


def sphere_blobs(n_clusters, seed, d=16, spread=0.08, sizes=None):
    """Unit vectors around ``n_clusters`` random directions: (x, labels); sizes vary when given."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = sizes if sizes is not None else rng.integers(8, 25, n_clusters)
    labels = np.repeat(np.arange(n_clusters), sizes)
    x = centres[labels] + spread * rng.standard_normal((labels.size, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def calibrated_distance(seed=100):
    """The protocol in small: calibrate on other generated classes, never on the ones scored."""
    x, labels = sphere_blobs(10, seed)
    return calibrate_cluster_threshold(x, as_table(labels.astype(str), ["g"] * len(labels)), "cosine")


def test_kmeans_recovers_separated_clusters_deterministically():
    x, labels, _ = grouped_clusters()
    a = kmeans(x, 10, seed=3)
    assert a.dtype == np.int64 and a.shape == (len(x),) and set(a) <= set(range(10))
    np.testing.assert_array_equal(a, kmeans(x, 10, seed=3))
    pairs = set(zip(labels, a.tolist()))  # same partition as the labels (ids are arbitrary)
    assert len(pairs) == 10
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, len(x) + 1)


@pytest.mark.parametrize("n_clusters", [2, 5, 12, 30])
def test_eigengap_finds_the_number_of_generated_clusters(n_clusters):
    x, labels = sphere_blobs(n_clusters, seed=n_clusters)
    calibration = calibrated_distance()
    nn = choose_n_neighbors(x, "cosine", calibration["cluster_distance"])
    assert 3 <= nn < np.median(np.bincount(labels))  # about half a typical cluster
    assert estimate_n_clusters(neighbour_graph(x, "cosine", nn)) == n_clusters
    result = cluster_vectors(x, "auto", "cosine", calibration["cluster_distance"], calibration["cluster_radius"])
    assert result.n_clusters == n_clusters
    assert hungarian_accuracy(labels, result.labels) >= 0.98  # the true partition, a stray point at most


def test_one_cluster_and_tiny_inputs():
    x, _ = sphere_blobs(1, seed=0, sizes=[20])
    assert cluster_vectors(x, "auto", "cosine", 0.05).n_clusters == 1
    single = cluster_vectors(x[:1], "auto", "cosine", 0.05)
    assert single.n_clusters == 1 and single.labels.tolist() == [0]
    assert cluster_vectors(x[:2], 5, "cosine", 0.05).n_clusters <= 2


def test_neighbour_graph_is_symmetric_without_self_loops():
    x, _ = sphere_blobs(3, seed=1)
    graph = neighbour_graph(x, "cosine", 4)
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0
    assert (np.asarray(graph.sum(axis=1)).ravel() >= 4).all()
    with pytest.raises(ValueError, match="n_neighbors"):
        neighbour_graph(x, "cosine", len(x))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("pca_variance", [None, 0.9])
@pytest.mark.parametrize("clusters", ["truth", "auto"])
def test_cluster_groups_scores_near_one(metric, pca_variance, clusters):
    x, labels, groups = grouped_clusters()
    distance = 0.05 if metric == "cosine" else 1.0
    result = cluster_groups(x, as_table(labels, groups), metric, clusters, distance, pca_variance=pca_variance)
    table = result.per_group
    assert table["group"].tolist() == ["alpha", "beta", "gamma"]
    assert table["n_classes"].tolist() == [3, 5, 2] and table["n_clusters"].tolist() == [3, 5, 2]
    assert table["n_images"].tolist() == [24, 40, 16]
    assert (table["accuracy"] == 1.0).all() and (table["ari"] > 0.99).all() and (table["nmi"] > 0.99).all()
    assert (table["k_relative_error"] == 0).all()
    summary = result.summary
    assert summary["n_groups"] == 3 and summary["n_images"] == 80 and summary["n_clusters"] == 10
    assert summary["ari"] == pytest.approx(table["ari"].mean())
    a = result.assignments
    assert list(a.columns) == ["id", "path", "label", "group", "cluster", "distance", "outlier"]
    assert a["cluster"].nunique() == 10  # cluster ids unique over groups
    assert (a.groupby("cluster")["group"].nunique() == 1).all()


def test_fixed_number_of_clusters_and_estimate_error():
    x, labels, groups = grouped_clusters()
    result = cluster_groups(x, as_table(labels, groups), "cosine", 4, 0.05)
    assert result.per_group["n_clusters"].tolist() == [4, 4, 4]
    assert result.per_group["k_relative_error"].tolist() == pytest.approx([1 / 3, 1 / 5, 1.0])
    tiny = cluster_vectors(x[:3], 4, "cosine", 0.05)  # never more clusters than items
    assert tiny.n_clusters <= 3


def test_kmeans_function_can_be_swapped_and_pca_is_per_group():
    x, labels, groups = grouped_clusters()
    calls = []

    def fake(x, k, seed=0, spherical=False):
        calls.append((x.shape, k, spherical))
        return np.zeros(len(x), dtype=np.int64)

    result = cluster_groups(x, as_table(labels, groups), "cosine", "truth", 0.05, method="kmeans",
                            pca_variance=0.95, kmeans_fn=fake)
    assert [c[1] for c in calls] == [3, 5, 2] and all(c[2] for c in calls)
    # Each group was reduced with its own PCA: a group with c classes spans < c dimensions.
    assert [c[0][0] for c in calls] == [24, 40, 16]
    assert all(shape[1] < 10 for shape, _, _ in calls)
    assert (result.per_group["ari"] == 0.0).all()


def test_unlabelled_rows_are_clustered_not_scored():
    x, labels, groups = grouped_clusters()
    result = cluster_groups(x, as_table([""] * len(labels), groups), "cosine", "auto", 0.05)
    assert result.per_group["n_clusters"].tolist() == [3, 5, 2]
    assert "accuracy" not in result.per_group and "accuracy" not in result.summary
    with pytest.raises(ValueError, match="truth needs labels"):
        cluster_groups(x, as_table([""] * len(labels), groups), "cosine", "truth", 0.05)


def test_far_point_is_flagged_outlier_but_keeps_a_cluster():
    x, labels = sphere_blobs(3, seed=4, sizes=[15, 15, 15])
    far = -x[:1]  # the opposite direction of the first cluster
    result = cluster_vectors(np.vstack([x, far]), 3, "cosine", 0.05, cluster_radius=0.2)
    assert result.outlier[-1] and not result.outlier[:-1].any()
    assert 0 <= result.labels[-1] < 3 and result.distance[-1] > 0.2


def test_bad_inputs():
    x, labels, groups = grouped_clusters()
    with pytest.raises(ValueError, match="rows"):
        cluster_groups(x, as_table(labels[:-1], groups[:-1]), "l2")
    with pytest.raises(ValueError, match="method"):
        cluster_groups(x, as_table(labels, groups), "l2", method="dbscan")
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_vectors(x, "many", "l2", 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        summarize_clusters(pd.DataFrame())


def test_sparse_eigen_solver_agrees_with_the_dense_one(monkeypatch):
    import oneshot.pipelines.evaluation.clustering as cluster

    x, _ = sphere_blobs(6, seed=7, sizes=[12] * 6)
    graph = neighbour_graph(x, "cosine", 5)
    dense = cluster.laplacian_spectrum(graph, 10)
    monkeypatch.setattr(cluster, "DENSE_EIGEN_LIMIT", 10)  # large groups take the ARPACK path
    np.testing.assert_allclose(cluster.laplacian_spectrum(graph, 10), dense, atol=1e-6)
    assert estimate_n_clusters(graph) == 6


def test_shared_neighbour_graph_weighs_edges_inside_a_cluster_above_edges_across():
    x, labels = sphere_blobs(4, seed=5, sizes=[12, 12, 12, 12])
    graph = shared_neighbour_graph(x, "cosine", 5)
    assert (abs(graph - graph.T)).max() < 1e-12 and graph.diagonal().sum() == 0
    assert graph.data.min() > 0 and graph.data.max() <= 1.0
    assert set(zip(*graph.nonzero())) == set(zip(*neighbour_graph(x, "cosine", 5).nonzero()))  # same edges
    rows, cols = graph.nonzero()
    weights = np.asarray(graph[rows, cols]).ravel()
    inside = labels[rows] == labels[cols]
    assert inside.any() and weights[inside].mean() > 0.5
    if (~inside).any():
        assert weights[~inside].mean() < weights[inside].mean()


def test_shared_neighbour_graph_in_blocks_matches_one_pass(monkeypatch):
    import oneshot.pipelines.evaluation.clustering as clustering

    x, _ = sphere_blobs(5, seed=7)
    whole = shared_neighbour_graph(x, "cosine", 6)
    monkeypatch.setattr(clustering, "SHARED_BLOCK_ENTRIES", 7 * 10)  # ten edges a block
    assert abs(shared_neighbour_graph(x, "cosine", 6) - whole).max() == 0


def test_centring_only_for_groups_wider_than_a_class():
    x, _ = sphere_blobs(6, seed=2)
    one, _ = sphere_blobs(1, seed=2, sizes=[30], spread=0.05)
    distance = float(np.median(1 - (one @ one.T)[np.triu_indices(30, 1)]))  # a class's typical pair
    assert spread_wider_than_a_class(x, "cosine", distance)
    assert not spread_wider_than_a_class(one, "cosine", distance)
    assert not spread_wider_than_a_class(x, "l2", distance)  # translation changes no l2 distance
    c = centred(x, "cosine")
    assert c.dtype == np.float32 and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assert np.linalg.norm(c.mean(axis=0)) < np.linalg.norm(x.mean(axis=0))
    y = x * 3
    assert np.allclose(np.linalg.norm(centred(y, "l2")[:, None] - centred(y, "l2")[None], axis=2),
                       np.linalg.norm(y[:, None] - y[None], axis=2), atol=1e-4)


@pytest.mark.parametrize("clusters", ["truth", "auto"])
def test_shared_affinity_clusters_and_is_recorded(clusters):
    x, labels, groups = grouped_clusters()
    result = cluster_groups(x, as_table(labels, groups), "cosine", clusters, 0.05, affinity="shared")
    assert (result.per_group["accuracy"] == 1.0).all()
    assert result.settings["affinity"] == "shared"
    assert cluster_groups(x, as_table(labels, groups), "cosine", 3, 0.05).settings["affinity"] == "knn"
    with pytest.raises(ValueError, match="affinity"):
        cluster_vectors(x, 3, "cosine", 0.05, affinity="nearest")
