from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from oneshot.data.archive import ImageReadError
from oneshot.data.folders import Gallery, read_gallery


def _write(path: Path, value: int = 0, shape=(12, 10), suffix: str | None = None) -> np.ndarray:
    """Write a small gray image with a dark square; return what was written."""
    image = np.full(shape, 255, dtype=np.uint8)
    image[2:6, 3:7] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(suffix or path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return image


def _zip(folder: Path, target: Path, under: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, under + file.relative_to(folder).as_posix())
    return target


@pytest.fixture
def two_level(tmp_path) -> Path:
    root = tmp_path / "two"
    for label, count in (("cat", 2), ("dog", 3)):
        for i in range(count):
            _write(root / label / f"{i}.png", value=10 * i)
    return root


@pytest.fixture
def three_level(tmp_path) -> Path:
    root = tmp_path / "three"
    for group in ("latin", "greek"):
        for char in ("c1", "c2"):
            for i in range(2):
                _write(root / group / char / f"{i}.png")
    return root


def test_two_level_folder(two_level):
    gallery = read_gallery(two_level)
    table = gallery.table
    assert isinstance(gallery, Gallery) and gallery.kind == "folder"
    assert list(table.columns) == ["id", "path", "label", "group"]
    assert table["id"].dtype == np.int64 and list(table["id"]) == list(range(5))
    assert list(table["path"]) == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert list(table["label"]) == ["cat"] * 2 + ["dog"] * 3
    assert set(table["group"]) == {""}
    images = gallery.read()
    assert len(images) == 5 and images[1].dtype == np.uint8 and images[1].shape == (12, 10)
    assert images[1][3, 4] == 10 and images[1][0, 0] == 255


def test_three_level_folder_labels_include_group(three_level):
    table = read_gallery(three_level).table
    assert len(table) == 8
    assert sorted(set(table["label"])) == ["greek/c1", "greek/c2", "latin/c1", "latin/c2"]
    assert sorted(set(table["group"])) == ["greek", "latin"]
    assert (table["label"].str.split("/").str[0] == table["group"]).all()


def test_zip_matches_folder(two_level, tmp_path):
    folder = read_gallery(two_level)
    zipped = read_gallery(_zip(two_level, tmp_path / "g.zip"))
    assert zipped.kind == "zip"
    assert zipped.table.equals(folder.table)
    for a, b in zip(zipped.read(), folder.read()):
        np.testing.assert_array_equal(a, b)


def test_zip_single_top_folder_is_stripped_but_kept_in_path(three_level, tmp_path):
    gallery = read_gallery(_zip(three_level, tmp_path / "g.zip", under="images_evaluation/"))
    table = gallery.table
    assert table["path"].str.startswith("images_evaluation/").all()
    assert sorted(set(table["label"])) == ["greek/c1", "greek/c2", "latin/c1", "latin/c2"]
    assert sorted(set(table["group"])) == ["greek", "latin"]
    assert gallery.read([table["path"][0]])[0].shape == (12, 10)


def test_zip_with_one_class_folder_keeps_it_as_label(tmp_path):
    _write(tmp_path / "src" / "only" / "a.png")
    _write(tmp_path / "src" / "only" / "b.png")
    table = read_gallery(_zip(tmp_path / "src", tmp_path / "one.zip")).table
    assert list(table["label"]) == ["only", "only"] and set(table["group"]) == {""}


def test_mixed_depths_name_an_offending_path(tmp_path):
    _write(tmp_path / "g" / "cls" / "a.png")
    _write(tmp_path / "g" / "grp" / "cls" / "b.png")
    with pytest.raises(ValueError, match=r"mixed layout.*cls/a\.png.*grp/cls/b\.png"):
        read_gallery(tmp_path / "g")


def test_too_deep_is_an_error(tmp_path):
    _write(tmp_path / "g" / "a" / "b" / "c" / "x.png")
    with pytest.raises(ValueError, match=r"a/b/c/x\.png.*4 levels deep.*point at .*g/a instead"):
        read_gallery(tmp_path / "g")


def test_top_level_image_needs_unlabelled_mode(tmp_path):
    _write(tmp_path / "g" / "loose.png")
    _write(tmp_path / "g" / "cls" / "x.png")
    with pytest.raises(ValueError, match=r"loose\.png.*labelled=False"):
        read_gallery(tmp_path / "g")
    table = read_gallery(tmp_path / "g", labelled=False).table
    assert list(table["path"]) == ["cls/x.png", "loose.png"]
    assert set(table["label"]) == {""} and set(table["group"]) == {""}


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_empty_source(tmp_path, content):
    folder = tmp_path / "empty"
    folder.mkdir()
    if content:
        (folder / content).write_text("not an image")
    with pytest.raises(ValueError, match=f"no images found in {folder}"):
        read_gallery(folder)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_gallery(tmp_path / "nowhere")


def test_hidden_files_are_skipped(two_level):
    _write(two_level / ".cache" / "x" / "y" / "z.png")
    _write(two_level / "cat" / ".thumb.png")
    assert len(read_gallery(two_level)) == 5


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".pgm", ".bmp", ".tif"])
def test_formats(tmp_path, suffix):
    written = _write(tmp_path / "g" / "cls" / f"x{suffix}", value=0, shape=(16, 16))
    image = read_gallery(tmp_path / "g").read()[0]
    assert image.dtype == np.uint8 and image.shape == (16, 16)
    assert np.abs(image.astype(int) - written).max() <= 40  # jpg is lossy
    assert image[4, 5] < 60 and image[12, 12] > 200


def test_colour_jpg(tmp_path):
    image = np.zeros((20, 24, 3), dtype=np.uint8)
    image[..., 2] = 230  # red in BGR
    (tmp_path / "g" / "cls").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "g" / "cls" / "red.jpg"), image)
    gallery = read_gallery(tmp_path / "g")
    colour = gallery.read(color=True)[0]
    gray = gallery.read(color=False)[0]
    assert colour.shape == (20, 24, 3) and colour[..., 2].mean() > 200 and colour[..., 0].mean() < 30
    assert gray.shape == (20, 24) and gray.dtype == np.uint8


def test_corrupt_image_error_names_it(two_level):
    (two_level / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    gallery = read_gallery(two_level)  # indexing decodes nothing
    assert "dog/bad.png" in set(gallery.table["path"])
    with pytest.raises(ImageReadError, match=r"dog/bad\.png"):
        gallery.read()
    assert gallery.read(["cat/0.png"])[0].shape == (12, 10)


def test_read_unknown_path(two_level):
    with pytest.raises(ValueError, match="not a path of this gallery"):
        read_gallery(two_level).read(["cat/9.png"])


def test_text_list(tmp_path, tmp_path_factory, two_level, three_level):
    far = tmp_path_factory.mktemp("elsewhere") / "abs" / "far.png"
    outside = _write(far, value=77)
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# my gallery\n"
        "two/dog/1.png\n"
        "\n"
        "  three/greek/c2/0.png  \n"
        f"{far}\n"
    )
    gallery = read_gallery(listing)
    table = gallery.table
    assert gallery.kind == "list"
    assert list(table["id"]) == [0, 1, 2]
    assert list(table["path"]) == ["two/dog/1.png", "three/greek/c2/0.png", str(far)]
    # group = grandparent inside the list's folder; outside it, only the parent labels
    assert list(table["label"]) == ["two/dog", "greek/c2", "abs"]
    assert list(table["group"]) == ["two", "greek", ""]
    images = gallery.read()
    assert images[0][3, 4] == 10
    np.testing.assert_array_equal(images[2], outside)
    assert read_gallery(listing, labelled=False).table["label"].tolist() == ["", "", ""]


def test_text_list_label_is_parent_folder(tmp_path, two_level):
    listing = two_level / "files.lst"
    listing.write_text("cat/0.png\ndog/2.png\n")
    table = read_gallery(listing).table
    assert list(table["label"]) == ["cat", "dog"] and list(table["group"]) == ["", ""]


def test_text_list_missing_file_names_list_and_line(tmp_path, two_level):
    listing = tmp_path / "list.txt"
    listing.write_text("two/cat/0.png\n# comment\ntwo/cat/404.png\n")
    with pytest.raises(ValueError, match=r"list\.txt, line 3: 'two/cat/404\.png' not found"):
        read_gallery(listing)


def test_text_list_bad_lines(tmp_path, two_level):
    listing = tmp_path / "list.txt"
    listing.write_text("two/cat/0.png\nREADME.md\n")
    with pytest.raises(ValueError, match=r"line 2: 'README\.md' is not an image"):
        read_gallery(listing)
    listing.write_text("two/cat/0.png\ntwo/cat/0.png\n")
    with pytest.raises(ValueError, match=r"line 2: .*already listed on line 1"):
        read_gallery(listing)
    listing.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no images found in"):
        read_gallery(listing)


def test_other_file_is_rejected(tmp_path):
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(ValueError, match="data.csv"):
        read_gallery(other)
