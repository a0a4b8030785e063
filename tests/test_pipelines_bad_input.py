"""Bulk jobs on galleries full of bad input: every good image encoded, every bad one named, no traceback."""
from __future__ import annotations

import io
import os
import shutil
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from oneshot.errors import ImageReadError, InvalidInputError
from oneshot.index.store import read_embeddings
from oneshot.pipelines.cli import main
from oneshot.pipelines.jobs import embed_gallery
from oneshot.pipelines.reading import RejectPolicy, Rejects, TooManyRejectsError, parse_max_rejects, read_batch


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def drawing(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size), 255, dtype=np.uint8)
    top, left = rng.integers(2, size // 2, 2)
    pixels[top : top + 10, left : left + 3] = 0
    return pixels


def huge_header_png() -> bytes:
    """A tiny PNG whose header declares 200 000 x 200 000 pixels (a decompression bomb)."""
    data = encoded(Image.new("1", (8, 8)))
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 200_000, 200_000, 1, 0, 0, 0, 0)
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def valid_odd_images() -> dict[str, bytes]:
    """Valid images of every odd kind the issue lists: each must be encoded, not rejected."""
    stroke = drawing(99)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[5:25, 5:9, 3] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "sixteen_bit.png": encoded(Image.fromarray((stroke.astype(np.uint16) * 257))),
        "palette.png": encoded(Image.fromarray(stroke).convert("P")),
        "cmyk.jpg": encoded(Image.fromarray(stroke).convert("RGB").convert("CMYK"), "JPEG"),
        "rotated.jpg": encoded(Image.fromarray(stroke), "JPEG", exif=exif.tobytes()),
        "transparent.png": encoded(Image.fromarray(rgba, "RGBA")),
        "blank.png": encoded(Image.new("L", (32, 32), 255)),
        "all_ink.png": encoded(Image.new("L", (32, 32), 0)),
        "one_pixel.png": encoded(Image.new("L", (1, 1), 0)),
        "long_strip.png": encoded(Image.new("L", (3000, 40), 255)),
        "animated.gif": encoded(Image.fromarray(stroke), "GIF", save_all=True,
                                append_images=[Image.fromarray(255 - stroke)]),
        "pages.tiff": encoded(Image.fromarray(stroke), "TIFF", save_all=True,
                              append_images=[Image.fromarray(255 - stroke)]),
        "UPPER CASE.PNG": encoded(Image.fromarray(stroke)),
        "drawing with spaces.png": encoded(Image.fromarray(stroke)),
        "ελληνικά 日本語.png": encoded(Image.fromarray(stroke)),
    }


def bad_files() -> dict[str, tuple[bytes, str]]:
    """Bad files with an image extension, and a word their reject reason must contain."""
    good = encoded(Image.fromarray(drawing(7)))
    jpeg = encoded(Image.fromarray(drawing(8)), "JPEG")
    return {
        "zero.png": (b"", "empty"),
        "truncated.png": (good[: len(good) // 2], "truncated"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "random.png": (bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)), "not an image"),
        "notes.jpg": (b"shopping list: milk, eggs\n", "text"),
        "page.png": (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
        "bomb.png": (huge_header_png(), "bomb"),
    }


@pytest.fixture
def bad_gallery(tmp_path) -> tuple[Path, set[str], dict[str, str]]:
    """A <class>/<image> gallery: good and odd-but-valid images next to every kind of bad input.

    Returns:
        (folder, paths that must be encoded, {path: word its reject reason contains}).
    """
    root = tmp_path / "gallery"
    good: set[str] = set()
    for cls in ("alpha", "beta"):
        for i in range(6):
            path = root / cls / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded(Image.fromarray(drawing(hash((cls, i)) % 1000))))
            good.add(f"{cls}/{i:02d}.png")
    for name, data in valid_odd_images().items():
        (root / "gamma" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "gamma" / name).write_bytes(data)
        good.add(f"gamma/{name}")
    with open(os.fsencode(root / "gamma") + b"/caf\xe9.png", "wb") as handle:  # Latin-1 name, valid image
        handle.write(encoded(Image.fromarray(drawing(5))))
    good.add("gamma/caf\\xe9.png")
    (root / "gamma" / "link_inside.png").symlink_to(root / "alpha" / "00.png")
    good.add("gamma/link_inside.png")
    expected: dict[str, str] = {}
    for name, (data, word) in bad_files().items():
        (root / "beta" / name).write_bytes(data)
        expected[f"beta/{name}"] = word
    outside = tmp_path / "outside.png"
    outside.write_bytes(encoded(Image.fromarray(drawing(3))))
    (root / "beta" / "escape.png").symlink_to(outside)
    expected["beta/escape.png"] = "outside the gallery"
    (root / "beta" / "loop.png").symlink_to(root / "beta" / "loop.png")
    expected["beta/loop.png"] = "broken symbolic link"
    (root / "beta" / "dangling.png").symlink_to(root / "beta" / "gone.png")
    expected["beta/dangling.png"] = "broken symbolic link"
    (root / "stray.png").write_bytes(encoded(Image.fromarray(drawing(4))))
    expected["stray.png"] = "wrong folder depth"
    (root / "alpha" / "sub").mkdir()
    (root / "alpha" / "sub" / "deep.png").write_bytes(encoded(Image.fromarray(drawing(6))))
    expected["alpha/sub/deep.png"] = "wrong folder depth"
    (root / "alpha" / "folder.png").mkdir()  # a folder named like an image
    (root / "empty_class").mkdir()
    for litter in (".DS_Store", "alpha/Thumbs.db", "alpha/._00.png", "__MACOSX/alpha/._00.png", ".git/x.png",
                   "alpha/.hidden.png", "alpha/readme.txt"):
        (root / litter).parent.mkdir(parents=True, exist_ok=True)
        (root / litter).write_bytes(b"litter")
    return root, good, expected


def test_embed_skips_and_names_every_bad_file(bad_gallery, tmp_path, tiny_model_path):
    root, good, expected = bad_gallery
    out = tmp_path / "out" / "g.parquet"
    result = run("embed", root, "--out", out, "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    summary = result.stdout.strip().splitlines()[-1]
    assert (len(good), len(expected)) == (28, 12)  # the figures quoted in the README
    assert summary == f"encoded {len(good)}, rejected {len(expected)}; list in {out}.rejects.csv"
    stored = read_embeddings(out)
    assert set(stored.table["path"]) == good
    assert np.isfinite(stored.embeddings).all()
    rejects = pd.read_csv(f"{out}.rejects.csv", keep_default_na=False)
    assert list(rejects.columns) == ["path", "reason"]
    reasons = dict(zip(rejects["path"], rejects["reason"]))
    assert set(reasons) == set(expected)
    for path, word in expected.items():
        assert word.lower() in reasons[path].lower(), (path, reasons[path])
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.parquet", "g.parquet.rejects.csv"]


def test_escaped_name_is_stable_from_run_to_run(bad_gallery, tmp_path, tiny_model_path):
    root, _, _ = bad_gallery
    first = embed_gallery(root, tmp_path / "one.parquet", tiny_model_path)
    second = embed_gallery(root, tmp_path / "two.parquet", tiny_model_path)
    assert "gamma/caf\\xe9.png" in set(first.table["path"])
    assert list(first.table["path"]) == list(second.table["path"])
    assert np.array_equal(first.embeddings, second.embeddings)


def test_unreadable_file_is_rejected(tmp_path, tiny_model_path, monkeypatch):
    root = tmp_path / "g"
    for i in range(3):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "a" / f"{i}.png").write_bytes(encoded(Image.fromarray(drawing(i))))
    locked = root / "a" / "1.png"
    real_open = open

    def guarded(file, *args, **kwargs):  # tests run as root, where chmod 000 does not stop reading
        if isinstance(file, (str, bytes, os.PathLike)) and Path(os.fsdecode(file)) == locked:
            raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    rejects = Rejects()
    stored = embed_gallery(root, tmp_path / "g.parquet", tiny_model_path, rejects=rejects)
    assert list(stored.table["path"]) == ["a/0.png", "a/2.png"]
    assert rejects.items == [("a/1.png", "cannot read (Permission denied)")]


def test_max_rejects_count_and_share(bad_gallery, tmp_path, tiny_model_path):
    root, good, expected = bad_gallery
    out = tmp_path / "g.parquet"
    result = run("embed", root, "--out", out, "--model", tiny_model_path, "--max-rejects", "2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{len(expected)} of {len(good) + len(expected)} files rejected, more than --max-rejects 2" in result.stderr
    assert len(read_embeddings(out)) == len(good)  # the good work is kept
    assert run("embed", root, "--out", tmp_path / "b", "--model", tiny_model_path, "--max-rejects", "60%").exit_code == 0
    assert run("embed", root, "--out", tmp_path / "c", "--model", tiny_model_path, "--max-rejects", "1%").exit_code == 1
    usage = run("embed", root, "--out", tmp_path / "d", "--model", tiny_model_path, "--max-rejects", "lots")
    assert usage.exit_code == 2 and "--max-rejects" in usage.output


def test_on_error_fail_stops_at_the_first_bad_file_and_writes_nothing(tmp_path, tiny_model_path):
    root = tmp_path / "g"
    for i in range(4):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "a" / f"{i}.png").write_bytes(encoded(Image.fromarray(drawing(i))))
    (root / "a" / "2.png").write_bytes(b"<html>oops</html>")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "g.parquet"
    result = run("embed", root, "--out", previous, "--model", tiny_model_path, "--on-error", "fail")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "a/2.png" in result.stderr and "HTML" in result.stderr and "--on-error fail" in result.stderr
    assert list(out_dir.iterdir()) == []


def test_zip_gallery_with_bad_members(tmp_path, tiny_model_path, monkeypatch):
    path = tmp_path / "g.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for i in range(3):
                archive.writestr(f"a/{i}.png", encoded(Image.fromarray(drawing(i))))
                archive.writestr(f"b/{i}.png", encoded(Image.fromarray(drawing(10 + i))))
            archive.writestr("a/../../escape.png", encoded(Image.fromarray(drawing(20))))
            archive.writestr("/etc/abs.png", encoded(Image.fromarray(drawing(21))))
            archive.writestr("a/0.png", b"a second member with the same name")
            archive.writestr("b/huge.png", b"\x00" * (300 * 1024 * 1024 // 1000))  # 300 kB of zeros
            archive.writestr("b/junk.png", b"not an image at all")
            archive.writestr("__MACOSX/a/._0.png", b"litter")
    monkeypatch.setattr("oneshot.data.archive.DEFAULT_MAX_FILE_BYTES", 100_000)  # a small cap keeps the test small
    rejects = Rejects()
    stored = embed_gallery(path, tmp_path / "z.parquet", tiny_model_path, rejects=rejects)
    reasons = dict(rejects.items)
    assert set(stored.table["path"]) == {f"{c}/{i}.png" for c in "ab" for i in range(3)} - {"b/huge.png"}
    assert "unsafe member name" in reasons["a/../../escape.png"] and "unsafe member name" in reasons["/etc/abs.png"]
    assert "duplicate member" in reasons["a/0.png"] and "zip bomb" in reasons["b/huge.png"]
    assert "not an image" in reasons["b/junk.png"]


def test_zip_with_corrupt_central_directory_fails_cleanly(tmp_path, tiny_model_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 100 + b"PK\x05\x06" + b"\xff" * 18)
    result = run("embed", broken, "--out", tmp_path / "z.parquet", "--model", tiny_model_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "broken.zip" in result.stderr and "zip" in result.stderr


def test_identify_lists_rejected_queries_beside_its_output(bad_gallery, tmp_path, tiny_model_path):
    root, good, expected = bad_gallery
    store, index = tmp_path / "g.parquet", tmp_path / "g.faiss"
    assert run("embed", root, "--out", store, "--model", tiny_model_path).exit_code == 0
    assert run("index", "build", store, "--out", index).exit_code == 0
    answers = tmp_path / "answers.jsonl"
    result = run("identify", root, "--index", index, "--model", tiny_model_path, "--out", answers)
    assert result.exit_code == 0, result.output
    assert f"identified {len(good)}, rejected {len(expected)}" in result.stderr
    assert len(pd.read_json(answers, lines=True)) == len(good)
    assert set(pd.read_csv(f"{answers}.rejects.csv")["path"]) == set(expected)
    stdout_run = run("identify", root, "--index", index, "--model", tiny_model_path)
    assert stdout_run.exit_code == 0 and "rejected beta/page.png" in stdout_run.stderr
    assert len(stdout_run.stdout.strip().splitlines()) == len(good)


def test_index_build_leaves_out_rows_with_nan_vectors(tmp_path, synthetic_gallery, tiny_model_path):
    store = tmp_path / "g.parquet"
    embed_gallery(synthetic_gallery, store, tiny_model_path)
    (shard,) = sorted(store.glob("*.parquet"))  # a store folder of one shard: 60 rows
    table = pq.read_table(shard)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[3, 0] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    table = table.set_column(table.schema.get_field_index("embedding"), table.schema.field("embedding"), column)
    pq.write_table(table, shard)
    bad_path = table.column("path")[3].as_py()
    index = tmp_path / "g.faiss"
    result = run("index", "build", store, "--out", index)
    assert result.exit_code == 0, result.output
    assert "indexed 59, rejected 1" in result.output
    assert pd.read_csv(f"{index}.rejects.csv")["path"].tolist() == [bad_path]
    failed = run("index", "build", store, "--out", tmp_path / "h.faiss", "--on-error", "fail")
    assert failed.exit_code == 1 and bad_path in failed.stderr and not (tmp_path / "h.faiss").exists()


def test_training_scan_skips_bad_files(tmp_path, synthetic_gallery, tiny_train_config):
    gallery = Path(shutil.copytree(synthetic_gallery, tmp_path / "gallery"))
    (gallery / "synth_a01" / "char01" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    groups = sorted(p.name for p in gallery.iterdir())
    config = tiny_train_config(steps=2)
    out = tmp_path / "run"
    args = ("train", "--data", gallery, "--val-alphabets", groups[-1], "--config", config, "--out", out)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "read 60, rejected 1" in result.stderr
    assert pd.read_csv(out / "rejects.csv")["path"].tolist() == ["synth_a01/char01/broken.png"]
    failed = run(*args[:-1], tmp_path / "run2", "--on-error", "fail")
    assert failed.exit_code == 1 and "broken.png" in failed.stderr


# ---------------------------------------------------------------- the policy itself

def test_parse_max_rejects():
    assert parse_max_rejects(None) is None and parse_max_rejects("") is None
    assert parse_max_rejects("12") == 12 and parse_max_rejects("2.5%") == pytest.approx(0.025)
    for bad in ("-1", "abc", "150%", "1e3"):
        with pytest.raises(InvalidInputError):
            parse_max_rejects(bad)
    with pytest.raises(InvalidInputError):
        RejectPolicy("ignore")


def test_policy_limits():
    assert not RejectPolicy(max_rejects=2).exceeded(2, 10) and RejectPolicy(max_rejects=2).exceeded(3, 10)
    assert not RejectPolicy(max_rejects=0.1).exceeded(1, 10) and RejectPolicy(max_rejects=0.1).exceeded(2, 10)
    assert not RejectPolicy().exceeded(10**6, 10**6)


def test_rejects_write_and_check(tmp_path):
    rejects = Rejects(RejectPolicy(max_rejects=0))
    target = tmp_path / "x.rejects.csv"
    target.write_text("stale list from another run\n")
    assert rejects.write(target) is None and not target.exists()
    rejects.add("a/caf\udce9.png", "truncated or corrupt image")
    rejects.write(target)
    assert pd.read_csv(target).values.tolist() == [["a/caf\\xe9.png", "truncated or corrupt image"]]
    assert rejects.summary(5) == f"encoded 5, rejected 1; list in {target}"
    with pytest.raises(TooManyRejectsError, match="1 of 6 files rejected"):
        rejects.check(6)


def test_read_batch_keeps_order_and_names_failures():
    class Source:
        def read(self, paths):
            out = []
            for p in paths:
                if p.startswith("bad"):
                    raise ImageReadError(f"/root/{p}: not an image (an HTML page)")
                out.append(np.full((2, 2), int(p[-1]), dtype=np.uint8))
            return out

    rejects = Rejects()
    images, kept = read_batch(Source(), ["ok1", "bad2", "ok3", "bad4"], rejects)
    assert kept == ["ok1", "ok3"] and [int(i[0, 0]) for i in images] == [1, 3]
    assert rejects.items == [("bad2", "not an image (an HTML page)"), ("bad4", "not an image (an HTML page)")]
    assert rejects.kept == 2
    with pytest.raises(ImageReadError, match="bad2: not an image"):
        read_batch(Source(), ["ok1", "bad2"], Rejects(RejectPolicy("fail")))


def test_error_naming_a_non_utf8_folder_prints_cleanly(tmp_path, tiny_model_path):
    folder = os.fsencode(tmp_path) + b"/galer\xeda"  # the gallery folder itself has a Latin-1 name
    os.mkdir(folder)
    os.mkdir(folder + b"/a")
    with open(folder + b"/a/x.png", "wb") as handle:
        handle.write(b"<html>not an image</html>")
    result = run("embed", os.fsdecode(folder), "--out", tmp_path / "g.parquet", "--model", tiny_model_path,
                 "--on-error", "fail")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "galer\\xeda" in result.stderr and "x.png" in result.stderr


def test_omniglot_dir_set_but_wrong_fails_instead_of_skipping(tmp_path):
    import subprocess
    import sys

    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), suite / "conftest.py")
    (suite / "test_needs_data.py").write_text("def test_needs_data(omniglot_dir):\n    assert omniglot_dir.is_dir()\n")
    base = {k: v for k, v in os.environ.items() if k != "OMNIGLOT_DIR"}

    def pytest_with(value):
        env = base if value is None else {**base, "OMNIGLOT_DIR": value}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                               str(suite)], env=env, capture_output=True, text=True, timeout=300, cwd=suite)

    wrong = pytest_with(str(tmp_path / "nowhere"))
    assert wrong.returncode == 1 and "is set but is not a folder" in wrong.stdout
    empty = pytest_with(str(tmp_path))
    assert empty.returncode == 1 and "holds neither images_background" in empty.stdout
    unset = pytest_with(None)
    assert unset.returncode == 0 and "OMNIGLOT_DIR is not set" in unset.stdout
    (tmp_path / "images_background.zip").write_bytes(b"")
    assert pytest_with(str(tmp_path)).returncode == 0
