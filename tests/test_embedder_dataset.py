"""LabelledImages: 90-degree rotations and mirror images as new classes, and fetching those copies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.preprocess import Recipe


def _set(rotations: bool, reflections: bool = False) -> LabelledImages:
    rng = np.random.default_rng(0)
    images = rng.random((6, 1, 8, 8)).astype(np.float32)  # asymmetric: every rotation and mirror image differs
    labels = np.array([0, 0, 1, 1, 2, 2])
    groups = np.array([0, 0, 0, 0, 1, 1])
    return LabelledImages(images, labels, groups, rotations, reflections)


def test_without_rotations():
    data = _set(False)
    labels, groups = data.virtual_labels()
    assert data.copies == 1
    np.testing.assert_array_equal(labels, data.labels)
    np.testing.assert_array_equal(groups, data.groups)
    np.testing.assert_array_equal(data.fetch(np.arange(6)).numpy(), data.images)


def test_rotations_give_four_times_the_labels():
    data = _set(True)
    labels, groups = data.virtual_labels()
    assert data.copies == 4
    assert labels.shape == groups.shape == (24,)
    assert len(np.unique(labels)) == 4 * 3
    assert len(np.unique(groups)) == 4 * 2
    for turn in range(4):  # copy k of class c is class c + 3k, in group g + 2k
        np.testing.assert_array_equal(labels[6 * turn : 6 * (turn + 1)], data.labels + 3 * turn)
        np.testing.assert_array_equal(groups[6 * turn : 6 * (turn + 1)], data.groups + 2 * turn)
    # a rotated class never shares a label or group with an unrotated one
    assert not set(labels[6:]) & set(labels[:6])
    assert not set(groups[6:]) & set(groups[:6])


def test_rotated_copies_are_true_rot90s():
    data = _set(True)
    original = data.images.copy()
    rows = np.array([23, 0, 7, 13, 18, 5, 6, 12])  # mixed copies, out of order
    batch = data.fetch(rows)
    assert batch.shape == (8, 1, 8, 8) and batch.dtype == torch.float32
    for out, row in zip(batch.numpy(), rows):
        base, turns = row % 6, row // 6
        np.testing.assert_array_equal(out[0], np.rot90(original[base, 0], turns))  # counter-clockwise
        if turns:
            assert not np.array_equal(out[0], original[base, 0])
    np.testing.assert_array_equal(data.images, original)  # fetching never rotates the stored images


@pytest.mark.parametrize("rotations", [False, True])
def test_mirror_images_are_new_classes(rotations):
    data = _set(rotations, reflections=True)
    turns_per_mirror = 4 if rotations else 1
    assert data.copies == 2 * turns_per_mirror
    labels, groups = data.virtual_labels()
    assert len(np.unique(labels)) == 3 * data.copies and len(np.unique(groups)) == 2 * data.copies
    rows = np.arange(6 * data.copies)[::-1].copy()  # every copy, out of order
    batch = data.fetch(rows).numpy()
    for out, row in zip(batch, rows):
        base, copy = row % 6, row // 6
        expected = data.images[base, 0][:, ::-1] if copy >= turns_per_mirror else data.images[base, 0]
        np.testing.assert_array_equal(out[0], np.rot90(expected, copy % turns_per_mirror))
    # the eight copies of one image are the eight symmetries of the square: all different
    if rotations:
        copies = data.fetch(np.arange(8) * 6).numpy().reshape(8, -1)
        assert len(np.unique(copies, axis=0)) == 8


def test_from_table_with_synthetic_alphabets():
    synthetic = make_alphabets(2, 3, drawers=2, seed=0, size=32)
    table = synthetic.table.sample(frac=1.0, random_state=0).reset_index(drop=True)  # any row order
    data = LabelledImages.from_table(table, synthetic.read, Recipe(size=16), rotations=True)
    assert data.images.shape == (12, 1, 16, 16)
    assert len(np.unique(data.labels)) == 6 and len(np.unique(data.groups)) == 2
    # codes follow the table: equal codes exactly where the names are equal
    same_label = data.labels[:, None] == data.labels[None, :]
    names = table["label"].to_numpy()
    np.testing.assert_array_equal(same_label, names[:, None] == names[None, :])
    np.testing.assert_array_equal(data.images[3, 0], Recipe(size=16)(synthetic.read([table["path"][3]])[0]))
    labels, _ = data.virtual_labels()
    assert len(np.unique(labels)) == 24


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        LabelledImages(np.zeros((3, 8, 8), np.float32), np.zeros(3, np.int64), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="must be"):
        LabelledImages(np.zeros((3, 1, 8, 8), np.float32), np.zeros(2, np.int64), np.zeros(3, np.int64))
