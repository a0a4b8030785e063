"""Listing galleries that hold what real ones hold: litter, odd names, links, bad zips, misplaced images."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneshot.data.archive import ImageArchive, escape_name
from oneshot.data.folders import read_gallery
from oneshot.errors import ImageReadError, InvalidInputError


def png(value: int = 0, size: int = 12) -> bytes:
    pixels = np.full((size, size), 255, dtype=np.uint8)
    pixels[2:-2, 3:5] = value
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def put(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png() if data is None else data)
    return path


def test_litter_and_hidden_files_are_skipped_silently(tmp_path):
    put(tmp_path / "a" / "1.png")
    for litter in (".DS_Store", "a/.DS_Store", "a/Thumbs.db", "a/._1.png", ".hidden/x/2.png", "__MACOSX/a/._1.png",
                   "a/desktop.ini", "a/.secret.png", "a/notes.txt"):
        put(tmp_path / litter, b"junk")
    listing = ImageArchive(tmp_path).scan()
    assert listing.names == ["a/1.png"] and listing.rejects == []


def test_names_with_spaces_other_scripts_and_upper_case_extensions(tmp_path):
    names = ["chars/my drawing 1.PNG", "chars/日本語.Jpg", "chars/Ελληνικά.TIFF", "chars/ok.png"]
    for name in names:
        put(tmp_path / name)
    archive = ImageArchive(tmp_path)
    assert archive.names() == sorted(names)
    assert all(archive.read(n).shape == (12, 12) for n in names)


def test_non_utf8_name_is_escaped_stably_and_readable(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 e-acute: not valid UTF-8
    with open(raw, "wb") as handle:
        handle.write(png())
    names = ImageArchive(tmp_path).names()
    assert names == ["cls/caf\\xe9.png"]
    names.encode("utf-8") if isinstance(names, str) else [n.encode("utf-8") for n in names]  # valid text
    assert ImageArchive(tmp_path).names() == names  # same escaped name on every run
    assert ImageArchive(tmp_path).read(names[0]).shape == (12, 12)
    assert escape_name("plain.png") == "plain.png"


def test_symlinks_inside_are_read_outside_and_broken_are_rejected(tmp_path):
    gallery = tmp_path / "gallery"
    target = put(gallery / "a" / "1.png")
    outside = put(tmp_path / "elsewhere" / "secret.png")
    (gallery / "a" / "inside.png").symlink_to(target)
    (gallery / "a" / "out.png").symlink_to(outside)
    (gallery / "a" / "dangling.png").symlink_to(gallery / "a" / "missing.png")
    (gallery / "a" / "loop.png").symlink_to(gallery / "a" / "loop.png")
    (gallery / "a" / "dir.png").symlink_to(gallery / "a", target_is_directory=True)
    (gallery / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # not followed
    listing = ImageArchive(gallery).scan()
    assert listing.names == ["a/1.png", "a/inside.png"]
    reasons = dict(listing.rejects)
    assert set(reasons) == {"a/out.png", "a/dangling.png", "a/loop.png", "a/dir.png"}
    assert "outside the gallery" in reasons["a/out.png"]
    assert "broken symbolic link" in reasons["a/dangling.png"] and "broken symbolic link" in reasons["a/loop.png"]
    assert "folder" in reasons["a/dir.png"]


def test_folders_named_like_images_and_empty_class_folders(tmp_path):
    put(tmp_path / "a" / "1.png")
    (tmp_path / "a" / "folder.png").mkdir()
    (tmp_path / "empty_class").mkdir()
    gallery = read_gallery(tmp_path, strict=False)
    assert list(gallery.table["path"]) == ["a/1.png"] and gallery.rejects == []


def test_unreadable_file_is_an_image_read_error(tmp_path, monkeypatch):
    put(tmp_path / "a" / "1.png")
    locked = put(tmp_path / "a" / "locked.png")
    real_open = open

    def guarded_open(file, *args, **kwargs):  # tests run as root, where chmod 000 still reads
        if Path(os.fsdecode(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    archive = ImageArchive(tmp_path)
    with pytest.raises(ImageReadError, match="locked.png: cannot read .Permission denied"):
        archive.read("a/locked.png")


def test_wrong_depth_is_rejected_only_when_not_strict(tmp_path):
    for i in range(3):
        put(tmp_path / "a" / f"{i}.png")
        put(tmp_path / "b" / f"{i}.png")
    put(tmp_path / "top.png")
    put(tmp_path / "a" / "nested" / "deep.png")
    with pytest.raises(InvalidInputError, match="top.png"):
        read_gallery(tmp_path)
    gallery = read_gallery(tmp_path, strict=False)
    assert len(gallery.table) == 6 and set(gallery.table["label"]) == {"a", "b"}
    reasons = dict(gallery.rejects)
    assert set(reasons) == {"top.png", "a/nested/deep.png"}
    assert all("wrong folder depth" in r and "<class>/<image>" in r for r in reasons.values())


def make_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name)
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_zip_with_unsafe_and_duplicate_members(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        path = make_zip(tmp_path / "g.zip", [
            ("a/1.png", png()), ("../evil/2.png", png()), ("/abs/3.png", png()), ("a/1.png", b"second copy"),
            ("a/..\\win.png", png()), ("__MACOSX/a/._1.png", b"x"),
        ])
    archive = ImageArchive(path)
    listing = archive.scan()
    assert listing.names == ["a/1.png"]
    reasons = dict(listing.rejects)
    assert "unsafe member name" in reasons["../evil/2.png"] and "unsafe member name" in reasons["/abs/3.png"]
    assert "unsafe member name" in reasons["a/..\\win.png"]
    assert any("duplicate member" in r for p, r in listing.rejects if p == "a/1.png")
    assert archive.read("a/1.png").shape == (12, 12)  # the first copy, not "second copy"


def test_zip_bomb_member_is_rejected_by_its_uncompressed_size(tmp_path):
    path = make_zip(tmp_path / "bomb.zip", [("a/1.png", png()), ("a/bomb.png", b"\x00" * 5_000_000)])
    assert path.stat().st_size < 100_000
    archive = ImageArchive(path, max_file_bytes=1_000_000)
    listing = archive.scan()
    assert listing.names == ["a/1.png"]
    assert "5000000 bytes exceeds the cap of 1000000" in dict(listing.rejects)["a/bomb.png"]
    with pytest.raises(ImageReadError, match="zip bomb"):
        archive.read_bytes("a/bomb.png")


def test_zip_with_corrupt_central_directory_is_refused(tmp_path):
    data = make_zip(tmp_path / "ok.zip", [("a/1.png", png()), ("a/2.png", png())]).read_bytes()
    end = data.rfind(b"PK\x05\x06")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(data[:end] + b"PK\x05\x06" + b"\xff" * 18)
    with pytest.raises(InvalidInputError, match="broken.zip: .*zip"):
        ImageArchive(broken)
    central = data.find(b"PK\x01\x02")
    mangled = tmp_path / "mangled.zip"
    mangled.write_bytes(data[:central] + b"XXXX" + data[central + 4:])
    with pytest.raises(InvalidInputError, match="mangled.zip"):
        ImageArchive(mangled)


def test_corrupt_zip_member_data_is_an_image_read_error(tmp_path):
    data = bytearray(make_zip(tmp_path / "ok.zip", [("a/1.png", png() * 3)]).read_bytes())
    start = data.find(b"a/1.png") + len("a/1.png")
    data[start + 10 : start + 30] = b"\x00" * 20  # damage the deflated stream
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    archive = ImageArchive(bad)
    with pytest.raises(ImageReadError, match="bad.zip/a/1.png"):
        archive.read("a/1.png")
