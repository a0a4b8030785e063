from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

import oneshot.data.synthetic as synthetic
from oneshot.data.folders import read_gallery
from oneshot.data.synthetic import SyntheticSet, make_alphabets
from oneshot.embedder.preprocess import Recipe


@pytest.fixture(scope="module")
def small() -> SyntheticSet:
    return make_alphabets(2, characters_per_alphabet=4, drawers=3, size=48, seed=3)


def test_shapes_and_table(small):
    table = small.table
    assert small.images.shape == (24, 48, 48) and small.images.dtype == np.uint8
    assert len(small) == 24
    assert list(table.columns) == ["id", "path", "alphabet", "character", "drawer", "label", "group"]
    assert table["id"].dtype == np.int64 and list(table["id"]) == list(range(24))
    assert table["drawer"].dtype == np.int64 and sorted(set(table["drawer"])) == [1, 2, 3]
    assert sorted(set(table["alphabet"])) == ["synth_a01", "synth_a02"]
    assert table["label"].nunique() == 8 and table["group"].nunique() == 2
    assert (table.groupby("label").size() == 3).all()
    assert (table["label"] == table["alphabet"] + "/" + table["character"]).all()
    assert (table["group"] == table["alphabet"]).all()
    assert table["path"].is_unique
    assert table["path"][0] == "synth_a01/char01/01_01.png"
    assert table["path"].iloc[-1] == "synth_a02/char04/04_03.png"


def test_default_size_and_path_format():
    one = make_alphabets(1, characters_per_alphabet=12, drawers=2)
    assert one.images.shape == (24, 105, 105)
    assert one.table["path"][23] == "synth_a01/char12/12_02.png"


def test_deterministic(small):
    again = make_alphabets(2, characters_per_alphabet=4, drawers=3, size=48, seed=3)
    assert again.images.tobytes() == small.images.tobytes()
    assert again.table.equals(small.table)


def test_seed_and_prefix_change_the_drawings(small):
    other_seed = make_alphabets(2, characters_per_alphabet=4, drawers=3, size=48, seed=4)
    other_prefix = make_alphabets(2, characters_per_alphabet=4, drawers=3, size=48, seed=3, prefix="eval")
    assert not np.array_equal(other_seed.images, small.images)
    assert not np.array_equal(other_prefix.images, small.images)
    assert set(other_prefix.table["alphabet"]) == {"eval_a01", "eval_a02"}
    assert not set(other_prefix.table["label"]) & set(small.table["label"])


def test_fewer_alphabets_are_a_prefix_of_more(small):
    one = make_alphabets(1, characters_per_alphabet=4, drawers=3, size=48, seed=3)
    np.testing.assert_array_equal(one.images, small.images[:12])


def test_dark_ink_on_white(small):
    images = small.images
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    assert np.median(border) == 255
    ink = (images < 128).mean(axis=(1, 2))
    assert (images.reshape(len(images), -1).min(axis=1) < 64).all()  # every drawing has ink
    assert 0.01 < ink.min() and ink.max() < 0.4


def test_drawings_of_a_character_agree_more_than_different_characters():
    data = make_alphabets(2, characters_per_alphabet=8, drawers=6, size=105, seed=5)
    vectors = Recipe(size=28, crop_to_ink=True).batch(data.images).reshape(len(data), -1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    labels = data.table["label"].to_numpy()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.1
    # leave-one-out nearest neighbour is far above chance (1/16)
    np.fill_diagonal(similarity, -1)
    assert (labels[similarity.argmax(axis=1)] == labels).mean() > 0.5
    # but two drawings of one character are never identical
    first = data.table.index[(data.table["drawer"] == 1)]
    assert all(not np.array_equal(data.images[i], data.images[i + 1]) for i in first)


def test_generation_is_fast():
    started = time.perf_counter()
    data = make_alphabets(10, 20, 20)
    elapsed = time.perf_counter() - started
    assert data.images.shape == (4000, 105, 105)
    assert elapsed < 10, f"4,000 images took {elapsed:.1f} s"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_alphabets": 0}, "n_alphabets"),
        ({"n_alphabets": 1.5}, "n_alphabets"),
        ({"n_alphabets": True}, "n_alphabets"),
        ({"characters_per_alphabet": 0}, "characters_per_alphabet"),
        ({"drawers": -2}, "drawers"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "a/b"}, "prefix"),
        ({"prefix": ".."}, "prefix"),
        ({"n_alphabets": 10**6, "size": 105}, "4 GiB"),
    ],
)
def test_validation(kwargs, name):
    arguments = {"n_alphabets": 1, "characters_per_alphabet": 2, "drawers": 2, "size": 32}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        make_alphabets(**arguments)


def test_read_by_path(small):
    paths = list(small.table["path"][[5, 0]])
    images = small.read(paths)
    np.testing.assert_array_equal(images[0], small.images[5])
    np.testing.assert_array_equal(images[1], small.images[0])
    assert len(small.read()) == len(small)
    with pytest.raises(ValueError, match="nope.png"):
        small.read(["nope.png"])


def test_write_round_trips_through_read_gallery(small, tmp_path):
    target = small.write(tmp_path / "gallery")
    assert target == tmp_path / "gallery"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]  # no temporary left over
    gallery = read_gallery(target)
    assert list(gallery.table["path"]) == list(small.table["path"])
    assert list(gallery.table["label"]) == list(small.table["label"])
    assert list(gallery.table["group"]) == list(small.table["group"])
    for read, made in zip(gallery.read(), small.images):
        np.testing.assert_array_equal(read, made)


def test_write_into_empty_existing_folder(small, tmp_path):
    (tmp_path / "gallery").mkdir()
    small.write(tmp_path / "gallery")
    assert len(list((tmp_path / "gallery").rglob("*.png"))) == len(small)


def test_write_refuses_non_empty_target(small, tmp_path):
    target = tmp_path / "gallery"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="gallery: already exists"):
        small.write(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file: already exists"):
        small.write(tmp_path / "file")


def test_write_crash_leaves_nothing(small, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cv2.imencode

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic.cv2, "imencode", failing)
    with pytest.raises(OSError, match="disk full"):
        small.write(tmp_path / "gallery")
    assert calls["n"] == 6
    assert list(tmp_path.iterdir()) == []
