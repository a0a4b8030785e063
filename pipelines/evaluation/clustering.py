"""Clustering of unseen classes, one group (alphabet) at a time, with or without a known number
of clusters.

The default method is spectral clustering of the symmetrised k-nearest-neighbour graph
(``affinity="knn"``). ``affinity="shared"`` is an opt-in graph: the neighbours are found after
centring the group (its mean vector taken off, then re-normalised for cosine, only when the group
spreads wider than one class) and each edge weighs the share of neighbours its two ends have in
common (shared-nearest-neighbour similarity); it helped on Omniglot's validation alphabets and hurt
on the synthetic alphabets and MNIST (``benchmarks/cluster_families.py``), so it is not the default. With
``clusters="auto"`` the number of clusters is the position of the largest gap between the smallest
eigenvalues of the graph's normalised Laplacian (the eigengap), and the neighbour count of the graph
is the median number of other items closer than ``cluster_distance`` (calibrated on held-out
classes, see :mod:`oneshot.pipelines.evaluation.cluster_thresholds`). ``method="kmeans"`` (FAISS KMeans with
k-means++ seeding and restarts) is kept for comparison.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import eigh
from scipy.sparse.csgraph import connected_components, laplacian
from scipy.sparse.linalg import eigsh

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric, as_matrix, get_metric
from oneshot.index.pca import apply_pca
from oneshot.pipelines.evaluation.cluster_scores import clustering_scores
from oneshot.pipelines.evaluation.kmeans import KMeansFn, kmeans

logger = logging.getLogger(__name__)

AUTO = "auto"
TRUTH = "truth"
METHODS = ("spectral", "kmeans")
AFFINITIES = ("knn", "shared")
MIN_NEIGHBORS, MAX_NEIGHBORS = 3, 30
DENSE_EIGEN_LIMIT = 3000   # above this many items per group, sparse eigen-solver (ARPACK)
MAX_AUTO_CLUSTERS = 1000   # the eigengap search looks at most this many eigenvalues
SHARED_BLOCK_ENTRIES = 4_000_000  # shared-neighbour counts: at most this many entries per slice, whatever N


def _search(x: np.ndarray, metric: Metric, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact FAISS search of every row against all rows -> (similarities, ids), both (N, k)."""
    index = faiss.IndexFlat(x.shape[1], metric.faiss_metric)
    index.add(x)
    raw, ids = index.search(x, k)
    return metric.from_faiss(raw), ids


def distances_to(metric: Metric, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise distance ``d(x[i], y[i])``: cosine 1 - s, l2 euclidean, l1 manhattan -> (N,) float32."""
    return metric.distance(metric.pairwise(x, y))


def choose_n_neighbors(x: np.ndarray, metric: Metric | str, cluster_distance: float,
                       low: int = MIN_NEIGHBORS, high: int = MAX_NEIGHBORS) -> int:
    """Neighbour count of the graph: the median number of other rows closer than ``cluster_distance``.

    ``cluster_distance`` is the median distance between two drawings of one character on held-out
    classes, so the count is about half the size of a typical cluster: enough edges to hold a
    cluster together, few enough to keep clusters apart.

    Args:
        x: (N, D) prepared vectors (see :meth:`Metric.prepare`).
        cluster_distance: a distance in the metric's units (cosine: 1 - similarity).
        low, high: bounds of the answer.

    Returns:
        An int in ``[min(low, N - 1), min(high, N - 1)]``.
    """
    metric = get_metric(metric)
    n = x.shape[0]
    if n < 2:
        return 0
    counts = np.zeros(n, dtype=np.int64)
    step = max(1, 16_000_000 // n)  # rows per block: about 64 MB of similarities
    for start in range(0, n, step):
        block = metric.distance(metric.similarity(x[start:start + step], x))
        counts[start:start + step] = (block < cluster_distance).sum(axis=1) - 1
    count = int(round(float(np.median(counts))))
    return int(min(max(count, low), high, n - 1))


def neighbour_graph(x: np.ndarray, metric: Metric | str, n_neighbors: int) -> sp.csr_matrix:
    """The symmetrised k-nearest-neighbour graph: edge i-j when either is among the other's neighbours.

    Args:
        x: (N, D) prepared vectors.
        n_neighbors: neighbours per row (self excluded), 1 <= n_neighbors < N.

    Returns:
        (N, N) sparse 0/1 float64, symmetric, empty diagonal.
    """
    graph = neighbour_graph_directed(x, metric, n_neighbors)
    graph = graph.maximum(graph.T).tocsr()
    graph.data[:] = 1.0
    return graph


def neighbour_graph_directed(x: np.ndarray, metric: Metric | str, n_neighbors: int) -> sp.csr_matrix:
    """Row i holds a 1 at each of i's ``n_neighbors`` nearest other rows -> (N, N) sparse float64."""
    metric = get_metric(metric)
    n = x.shape[0]
    if not 1 <= n_neighbors < n:
        raise InvalidInputError(f"n_neighbors must be in [1, {n - 1}], got {n_neighbors}")
    _, ids = _search(x, metric, n_neighbors + 1)
    rows = np.repeat(np.arange(n), n_neighbors + 1)
    cols = ids.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    # (a row whose self is not among its hits, among exact duplicates, keeps n_neighbors + 1)
    return sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))


def centred(x: np.ndarray, metric: Metric | str) -> np.ndarray:
    """The group's vectors with their mean taken off, prepared again for the metric -> (N, D) float32.

    Distances under l2 and l1 do not change; under cosine the angles are then measured around the
    group's centre rather than the origin.
    """
    metric = get_metric(metric)
    return metric.prepare(x - x.mean(axis=0, keepdims=True, dtype=np.float64))


def shared_neighbour_graph(x: np.ndarray, metric: Metric | str, n_neighbors: int) -> sp.csr_matrix:
    """The k-nearest-neighbour graph weighted by shared neighbours: edge i-j (when either is among the
    other's ``n_neighbors`` nearest) weighs ``|N(i) & N(j)| / (n_neighbors + 1)``, where ``N(i)`` is
    ``i`` and its neighbours. Two items in one tight cluster share most neighbours; an edge that
    crosses between clusters shares few, so it weighs little.

    Args:
        x: (N, D) prepared vectors.
        n_neighbors: neighbours per row (self excluded), 1 <= n_neighbors < N.

    Returns:
        (N, N) sparse float64 in [0, 1], symmetric, empty diagonal.
    """
    n = x.shape[0]
    knn = neighbour_graph_directed(x, metric, n_neighbors)
    members = (knn + sp.identity(n, format="csr")).tocsr()
    members.data[:] = 1.0
    edges = knn.maximum(knn.T).tocoo()
    shared = np.empty(edges.nnz, dtype=np.float64)
    block = max(1, SHARED_BLOCK_ENTRIES // (n_neighbors + 1))  # edges at a time
    for start in range(0, edges.nnz, block):
        rows, cols = edges.row[start:start + block], edges.col[start:start + block]
        shared[start:start + block] = np.asarray(members[rows].multiply(members[cols]).sum(axis=1)).reshape(-1)
    weight = np.minimum(shared / (n_neighbors + 1), 1.0)
    graph = sp.csr_matrix((weight, (edges.row, edges.col)), shape=(n, n))
    graph.eliminate_zeros()
    return graph


def laplacian_spectrum(graph: sp.csr_matrix, count: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the graph's normalised Laplacian, ascending -> (count,).

    Computed per connected component (the spectrum of a graph is the union of its components'):
    each component has exactly one zero eigenvalue, which iterative solvers would otherwise miss
    when it is repeated. Components up to :data:`DENSE_EIGEN_LIMIT` nodes are solved densely,
    larger ones with ARPACK.
    """
    n = graph.shape[0]
    count = int(min(count, n))
    _, component = connected_components(graph, directed=False)
    values = []
    for members in np.split(np.argsort(component, kind="stable"), np.cumsum(np.bincount(component))[:-1]):
        sub = graph[members][:, members]
        want = min(count, members.size)
        if members.size <= DENSE_EIGEN_LIMIT or want >= members.size - 1:
            lap = laplacian(sub.toarray(), normed=True)
            values.append(eigh(lap, eigvals_only=True, subset_by_index=[0, want - 1]))
            continue
        # Largest eigenvalues of D^-1/2 W D^-1/2 are 1 minus the smallest of the Laplacian.
        degree = np.asarray(sub.sum(axis=1)).reshape(-1)
        scale = sp.diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
        top = eigsh(scale @ sub @ scale, k=want, which="LA", return_eigenvectors=False)
        values.append(1.0 - top)
    return np.sort(np.concatenate(values))[:count]


def estimate_n_clusters(graph: sp.csr_matrix, max_clusters: int | None = None) -> int:
    """Number of clusters from the eigengap: the largest gap among the smallest Laplacian eigenvalues.

    A graph made of k loosely joined parts has k eigenvalues near 0 and then a jump.

    Args:
        graph: (N, N) symmetric affinity.
        max_clusters: largest answer considered (default ``min(N // 2, 1000)``: clusters of two
            items or more).

    Returns:
        An int in ``[1, max_clusters]``.
    """
    n = graph.shape[0]
    if n < 3:
        return 1
    max_clusters = int(max_clusters or min(n // 2, MAX_AUTO_CLUSTERS))
    max_clusters = max(1, min(max_clusters, n - 2))
    values = laplacian_spectrum(graph, max_clusters + 1)
    gaps = np.diff(values)[:max_clusters]
    return int(np.argmax(gaps) + 1)


def spectral_labels(graph: sp.csr_matrix, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of an affinity graph (scikit-learn, ``cluster_qr`` label assignment).

    Returns:
        (N,) int64 labels, consecutive from 0 (a cluster the assignment leaves empty is dropped).
    """
    from sklearn.cluster import spectral_clustering

    n = graph.shape[0]
    if n_clusters <= 1:
        return np.zeros(n, dtype=np.int64)
    if n_clusters >= n:
        return np.arange(n, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = spectral_clustering(graph, n_clusters=int(n_clusters), assign_labels="cluster_qr", random_state=seed)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def centres_of(x: np.ndarray, labels: np.ndarray, metric: Metric | str) -> np.ndarray:
    """Mean vector of each cluster (re-normalised for cosine) -> (n_clusters, D) float32, label order."""
    metric = get_metric(metric)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    sums = np.zeros((n_clusters, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=n_clusters).reshape(-1, 1)
    return metric.prepare(sums / np.maximum(counts, 1))


@dataclass
class GroupClustering:
    """One group's clustering.

    Attributes:
        labels: (N,) int64 cluster of each row, from 0.
        distance: (N,) float32 distance of each row to its cluster's centre.
        outlier: (N,) bool, distance above the cluster radius.
        n_clusters: clusters found.
        n_neighbors: neighbour count of the graph (0 for KMeans with a given k).
    """

    labels: np.ndarray
    distance: np.ndarray
    outlier: np.ndarray
    n_clusters: int
    n_neighbors: int


def spread_wider_than_a_class(x: np.ndarray, metric: Metric | str, cluster_distance: float) -> bool:
    """Whether a cosine group's typical pair lies at least twice as far apart as two drawings of one
    class: its mean pairwise distance (1 minus the squared norm of its mean unit vector) at least
    ``2 * cluster_distance``, so the group holds several classes. A group that looks like one class
    (its mean pairwise distance about ``cluster_distance``) is not centred: centring would blow
    its noise up into directions, and the graph would split it. l2 and l1 groups never need it
    (translation changes no distance)."""
    metric = get_metric(metric)
    if not metric.normalizes or x.shape[0] < 2:
        return False
    mean = x.mean(axis=0, dtype=np.float64)
    return 1.0 - float(mean @ mean) >= 2.0 * cluster_distance


def affinity_graph(x: np.ndarray, metric: Metric | str, n_neighbors: int, affinity: str = "knn",
                   cluster_distance: float = 0.0) -> sp.csr_matrix:
    """The graph spectral clustering and the eigengap work on -> (N, N) sparse, symmetric.

    ``"shared"``: shared-neighbour weights (:func:`shared_neighbour_graph`), the neighbours found
    after centring the group (:func:`centred`) when it spreads wider than one class
    (:func:`spread_wider_than_a_class`); ``"knn"``: the 0/1 neighbour graph (:func:`neighbour_graph`).
    """
    if affinity == "shared":
        if spread_wider_than_a_class(x, metric, cluster_distance):
            x = centred(x, metric)
        return shared_neighbour_graph(x, metric, n_neighbors)
    if affinity == "knn":
        return neighbour_graph(x, metric, n_neighbors)
    raise InvalidInputError(f"unknown affinity {affinity!r}; known: {list(AFFINITIES)}")


def cluster_vectors(x: np.ndarray, n_clusters: int | str, metric: Metric | str, cluster_distance: float,
                    cluster_radius: float | None = None, method: str = "spectral", seed: int = 0,
                    kmeans_fn: KMeansFn = kmeans, affinity: str = "knn") -> GroupClustering:
    """Cluster one group's vectors.

    Args:
        x: (N, D) vectors (prepared here for the metric).
        n_clusters: an int, or ``"auto"`` to estimate it from the eigengap.
        cluster_distance: distance scale of one character (sets the graph's neighbour count).
        cluster_radius: rows farther than this from their centre are flagged outliers
            (``None``: none flagged).
        method: ``"spectral"`` or ``"kmeans"`` (spherical for cosine).
        kmeans_fn: the KMeans function (same signature as :func:`kmeans`; swap in tests).
        affinity: the graph, ``"knn"`` (default) or ``"shared"``; see :func:`affinity_graph`.
            Distances to centres and outliers are measured on the vectors as given, either way.
    """
    metric = get_metric(metric)
    if method not in METHODS:
        raise InvalidInputError(f"unknown clustering method {method!r}; known: {list(METHODS)}")
    if affinity not in AFFINITIES:
        raise InvalidInputError(f"unknown affinity {affinity!r}; known: {list(AFFINITIES)}")
    x = metric.prepare(x)
    n = x.shape[0]
    if n == 0:
        raise InvalidInputError("nothing to cluster")
    needs_graph = method == "spectral" or n_clusters == AUTO
    n_neighbors = choose_n_neighbors(x, metric, cluster_distance) if needs_graph and n > 1 else 0
    graph = affinity_graph(x, metric, n_neighbors, affinity, cluster_distance) if n_neighbors >= 1 else None
    if n_clusters == AUTO:
        k = estimate_n_clusters(graph) if graph is not None else 1
    elif isinstance(n_clusters, (int, np.integer)) and not isinstance(n_clusters, bool) and n_clusters >= 1:
        k = int(min(n_clusters, n))
    else:
        raise InvalidInputError(f"n_clusters must be a positive int or 'auto', got {n_clusters!r}")
    if k == 1 or (graph is None and method == "spectral"):
        labels = np.zeros(n, dtype=np.int64)
    elif method == "spectral":
        labels = spectral_labels(graph, k, seed)
    else:
        labels = np.unique(kmeans_fn(x, k, seed=seed, spherical=metric.normalizes), return_inverse=True)[1]
        labels = labels.astype(np.int64)
    distance = distances_to(metric, x, centres_of(x, labels, metric)[labels])
    outlier = distance > cluster_radius if cluster_radius is not None else np.zeros(n, dtype=bool)
    return GroupClustering(labels, distance, outlier, int(labels.max()) + 1, n_neighbors)


def is_labelled(table: pd.DataFrame) -> bool:
    """Whether every row has a non-empty label (so the clustering can be scored)."""
    return bool(len(table)) and bool((table["label"].astype(str) != "").all())


@dataclass
class Clustering:
    """The clustering of a store, group by group.

    Attributes:
        assignments: one row per item: ``id``, ``path``, ``label``, ``group``, ``cluster`` (unique
            over all groups), ``distance`` (to its cluster's centre) and ``outlier``.
        per_group: one row per group: ``group``, ``n_images``, ``n_clusters``, ``n_neighbors`` and,
            with labels, ``n_classes``, ``accuracy``, ``ari``, ``nmi``, ``k_relative_error``.
        summary: group means (each group weighs the same) and totals; see :func:`summarize_clusters`.
        settings: the clustering settings and where the thresholds came from.
    """

    assignments: pd.DataFrame
    per_group: pd.DataFrame
    summary: dict
    settings: dict = field(default_factory=dict)


def cluster_groups(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str,
                   clusters: int | str = AUTO, cluster_distance: float | None = None,
                   cluster_radius: float | None = None, method: str = "spectral",
                   pca_variance: float | None = None, seed: int = 0,
                   kmeans_fn: KMeansFn = kmeans, affinity: str = "knn") -> Clustering:
    """Cluster each group's rows on its own, and score against the labels when every row has one.

    Args:
        embeddings: (N, D).
        table: N rows with ``id``, ``path``, ``label`` (``""`` when unlabelled), ``group``.
        clusters: ``"auto"`` (eigengap), ``"truth"`` (each group's number of labels) or an int.
        cluster_distance: distance scale of one character; ``None``: the documented default
            (:data:`oneshot.pipelines.evaluation.cluster_thresholds.DEFAULT_THRESHOLDS`).
        cluster_radius: outlier radius; ``None``: the documented default.
        method: ``"spectral"`` or ``"kmeans"``.
        pca_variance: when set, PCA keeping this share of variance, fitted per group on that
            group's embeddings only.
        affinity: the spectral graph, ``"knn"`` (default) or ``"shared"`` (see :func:`affinity_graph`).

    Returns:
        A :class:`Clustering`.
    """
    from oneshot.pipelines.evaluation.cluster_thresholds import DEFAULT_THRESHOLDS

    metric = get_metric(metric)
    emb = metric.prepare(as_matrix(embeddings, "embeddings"))
    if emb.shape[0] == 0:
        raise InvalidInputError("embeddings: nothing to cluster")
    missing = [c for c in ("id", "path", "label", "group") if c not in table.columns]
    if missing:
        raise InvalidInputError(f"table: missing columns {missing}")
    if len(table) != emb.shape[0]:
        raise InvalidInputError(f"table: expected {emb.shape[0]} rows (one per embedding), got {len(table)}")
    labelled = is_labelled(table)
    if clusters == TRUTH and not labelled:
        raise InvalidInputError("--clusters truth needs labels on every row; this store is unlabelled "
                                "(use --clusters auto or a number)")
    if cluster_distance is None:
        cluster_distance = DEFAULT_THRESHOLDS["cluster_distance"]
    if cluster_radius is None:
        cluster_radius = DEFAULT_THRESHOLDS["cluster_radius"]
    groups = table["group"].astype(str).to_numpy()
    labels = table["label"].astype(str).to_numpy()
    cluster = np.zeros(len(table), dtype=np.int64)
    distance = np.zeros(len(table), dtype=np.float32)
    outlier = np.zeros(len(table), dtype=bool)
    rows, offset = [], 0
    for group in pd.unique(groups):
        members = np.flatnonzero(groups == group)
        x = emb[members]
        if pca_variance is not None and x.shape[0] >= 2:
            x = metric.prepare(apply_pca(x, pca_variance, seed))
        wanted = int(np.unique(labels[members]).size) if clusters == TRUTH else clusters
        result = cluster_vectors(x, wanted, metric, cluster_distance, cluster_radius, method, seed, kmeans_fn,
                                 affinity)
        cluster[members] = result.labels + offset
        distance[members], outlier[members] = result.distance, result.outlier
        offset += result.n_clusters
        row = {"group": group, "n_images": int(members.size), "n_clusters": result.n_clusters,
               "n_neighbors": result.n_neighbors, "outliers": int(result.outlier.sum())}
        if labelled:
            row.update(clustering_scores(labels[members], result.labels))
        rows.append(row)
        logger.info("group %s: %d clusters%s", group, result.n_clusters,
                    f", accuracy {row['accuracy']:.3f}, ARI {row['ari']:.3f}" if labelled else "")
    assignments = pd.DataFrame({"id": table["id"].to_numpy(), "path": table["path"].astype(str).to_numpy(),
                                "label": labels, "group": groups, "cluster": cluster, "distance": distance,
                                "outlier": outlier})
    per_group = pd.DataFrame(rows)
    settings = {"clusters": clusters if isinstance(clusters, str) else int(clusters), "method": method,
                "affinity": affinity if method == "spectral" or clusters == AUTO else None,
                "metric": metric.name, "cluster_distance": float(cluster_distance),
                "cluster_radius": float(cluster_radius), "pca_variance": pca_variance, "seed": seed}
    return Clustering(assignments, per_group, summarize_clusters(per_group), settings)


SCORE_COLUMNS = ("accuracy", "ari", "nmi", "k_relative_error")


def summarize_clusters(per_group: pd.DataFrame) -> dict:
    """Group means of the scores (each group weighs the same) and the totals.

    Args:
        per_group: :attr:`Clustering.per_group`.

    Returns:
        ``{"n_groups", "n_images", "n_clusters"}`` and, when scored, ``"n_classes"`` and the mean
        ``"accuracy"``, ``"ari"``, ``"nmi"``, ``"k_relative_error"``.
    """
    missing = [c for c in ("n_images", "n_clusters") if c not in per_group.columns]
    if missing or len(per_group) == 0:
        raise InvalidInputError(f"expected a non-empty per-group clustering table, missing columns {missing}")
    summary = {"n_groups": int(len(per_group)), "n_images": int(per_group["n_images"].sum()),
               "n_clusters": int(per_group["n_clusters"].sum())}
    if "accuracy" in per_group.columns:
        summary["n_classes"] = int(per_group["n_classes"].sum())
        summary.update({name: float(per_group[name].mean()) for name in SCORE_COLUMNS})
    return summary
