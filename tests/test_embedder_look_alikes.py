"""Look-alike classes: each class's nearest other classes by cosine, as brute force finds them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.look_alikes import nearest_classes, representative_rows


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1)


def test_nearest_classes_match_brute_force_cosines():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 1, 2, 3)).astype(np.float32)
    vectors[7] = 3 * vectors[3]  # the same direction: the two coincide under the cosine
    train_set = LabelledImages(vectors, np.arange(50), np.zeros(50, dtype=np.int64))
    table = nearest_classes(_flat, train_set, np.arange(50), k=5, batch_size=16)
    assert table.shape == (50, 5) and table.dtype == np.int64
    unit = vectors.reshape(50, -1) / np.linalg.norm(vectors.reshape(50, -1), axis=1, keepdims=True)
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, -np.inf)
    expected = np.argsort(-cosines, axis=1, kind="stable")[:, :5]
    assert (table != np.arange(50)[:, None]).all()
    assert table[3, 0] == 7 and table[7, 0] == 3
    np.testing.assert_allclose(np.take_along_axis(cosines, table, 1), np.take_along_axis(cosines, expected, 1),
                               atol=1e-5)


def test_representatives_and_bad_k():
    rows = [np.array([4, 9]), np.array([2]), np.array([0, 1, 3])]
    assert representative_rows(rows).tolist() == [4, 2, 0]
    train_set = LabelledImages(np.zeros((3, 1, 2, 2), np.float32), np.arange(3), np.zeros(3, dtype=np.int64))
    for k in (0, 3):
        with pytest.raises(ValueError, match="need 1 <= k < 3"):
            nearest_classes(_flat, train_set, np.arange(3), k=k)
