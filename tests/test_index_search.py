"""Tests for index.search: the numpy reference searcher and the shared Searcher interface."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oneshot.index.search import ExactSearch, Searcher
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluation.evaluate import knn_identification
from oneshot.pipelines.evaluation.open_set import identify


def gallery(n: int = 200, d: int = 12, classes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    codes = np.arange(n) % classes
    vectors = (centres[codes] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    table = pd.DataFrame({"id": np.arange(100, 100 + n), "label": [f"c{c}" for c in codes],
                          "group": "", "path": [f"{i}.png" for i in range(n)]})
    return vectors, table


@pytest.mark.parametrize("metric", ["cosine", "l2", "l1"])
def test_exact_search_matches_the_flat_faiss_index(metric):
    vectors, table = gallery()
    queries = np.random.default_rng(1).standard_normal((37, vectors.shape[1])).astype(np.float32)
    exact, faiss_index = ExactSearch(vectors, table, metric), VectorIndex.build(vectors, table, metric)
    assert isinstance(exact, Searcher) and isinstance(faiss_index, Searcher)
    a, b = exact.search(queries, 5), faiss_index.search(queries, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_exact_search_pads_beyond_the_gallery():
    vectors, table = gallery(n=3, classes=3)
    result = ExactSearch(vectors, table, "cosine").search(vectors[:2], 5)
    assert (result.ids[:, 3:] == -1).all() and np.isneginf(result.scores[:, 3:]).all()
    assert result.labels[0, 0] == "c0" and result.labels[0, 4] is None


def test_evaluations_run_on_either_searcher():
    vectors, table = gallery(n=400)
    faiss_result = knn_identification(vectors, table, "cosine", k=3, seed=2)
    exact_result = knn_identification(vectors, table, "cosine", k=3, seed=2, build_searcher=ExactSearch)
    assert faiss_result == exact_result and faiss_result["accuracy"] > 0.9
    a = identify(ExactSearch(vectors, table, "cosine"), vectors[:50], threshold=0.5)
    b = identify(VectorIndex.build(vectors, table, "cosine"), vectors[:50], threshold=0.5)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5)
