"""Omniglot readers against the real zips (``$OMNIGLOT_DIR``); skipped when absent."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from oneshot.data.folders import read_gallery
from oneshot.data.omniglot import OmniglotSplit, omniglot_root, split_location


@pytest.fixture(scope="module")
def small1(omniglot_dir) -> OmniglotSplit:
    return OmniglotSplit(omniglot_dir, "small1")


@pytest.mark.parametrize(
    "split, rows, characters, alphabets",
    [("background", 19_280, 964, 30), ("evaluation", 13_180, 659, 20), ("small1", 2_720, 136, 5)],
)
def test_split_sizes(omniglot_dir, split, rows, characters, alphabets):
    data = OmniglotSplit(omniglot_dir, split)
    table = data.table
    assert len(data) == rows
    assert table["label"].nunique() == characters
    assert table["alphabet"].nunique() == alphabets == len(data.alphabets)
    assert (table.groupby("label").size() == 20).all()
    assert sorted(set(table["drawer"])) == list(range(1, 21))
    assert table["id"].dtype == np.int64 and (table["id"].to_numpy() == np.arange(rows)).all()
    assert table["path"].is_unique
    assert (table["label"] == table["alphabet"] + "/" + table["character"]).all()
    assert (table["group"] == table["alphabet"]).all()


def test_background_and_evaluation_share_no_alphabet(omniglot_dir):
    background = set(OmniglotSplit(omniglot_dir, "background").alphabets)
    evaluation = set(OmniglotSplit(omniglot_dir, "evaluation").alphabets)
    assert not background & evaluation


def test_images_are_dark_ink_on_white(small1):
    images = small1.read(small1.table["path"][:40:7])
    for image in images:
        assert image.shape == (105, 105) and image.dtype == np.uint8
        assert set(np.unique(image)) <= {0, 255}
        assert 0.005 < (image == 0).mean() < 0.3


def test_env_var_is_the_default_root(omniglot_dir, monkeypatch):
    monkeypatch.setenv("OMNIGLOT_DIR", str(omniglot_dir))
    assert omniglot_root() == omniglot_dir
    monkeypatch.delenv("OMNIGLOT_DIR")
    with pytest.raises(FileNotFoundError, match="OMNIGLOT_DIR"):
        omniglot_root()


def test_unknown_split(omniglot_dir):
    with pytest.raises(ValueError, match="unknown Omniglot split 'training'"):
        split_location(omniglot_dir, "training")


def _extract_alphabets(zip_path, target, alphabets):
    with zipfile.ZipFile(zip_path) as archive:
        members = [m for m in archive.namelist() if m.split("/")[1] in alphabets]
        archive.extractall(target, members)
    return len([m for m in members if m.endswith(".png")])


@pytest.mark.parametrize("nested", [False, True])
def test_extracted_folder_reads_like_the_zip(small1, tmp_path, nested):
    alphabets = small1.alphabets[:2]
    # nested: extracted into a folder of the same name (images_background_small1/images_background_small1/...)
    target = tmp_path / "images_background_small1" if nested else tmp_path
    count = _extract_alphabets(small1.location, target, alphabets)
    folder = OmniglotSplit(tmp_path, "small1")
    assert folder.location == tmp_path / "images_background_small1" and folder.location.is_dir()
    expected = small1.table[small1.table["alphabet"].isin(alphabets)].reset_index(drop=True)
    assert len(folder) == count == len(expected)
    columns = ["alphabet", "character", "drawer", "label", "group"]
    assert folder.table[columns].equals(expected[columns])
    picks = [0, len(expected) // 2, len(expected) - 1]
    for a, b in zip(folder.read(folder.table["path"][picks]), small1.read(expected["path"][picks])):
        np.testing.assert_array_equal(a, b)


def test_generic_gallery_reader_agrees_with_omniglot_reader(small1):
    gallery = read_gallery(small1.location)
    assert list(gallery.table["path"]) == list(small1.table["path"])
    assert list(gallery.table["label"]) == list(small1.table["label"])
    assert list(gallery.table["group"]) == list(small1.table["group"])
