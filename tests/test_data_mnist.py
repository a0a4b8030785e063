from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneshot.data.mnist import read_idx, read_mnist

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """Encode ``array`` as IDX by hand (big-endian header and data)."""
    code = CODES[array.dtype.type] if code is None else code
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gzipped: bool = False) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
    return path


@pytest.fixture
def mnist_arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=7).astype(np.uint8)


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_mnist_round_trip(tmp_path, mnist_arrays, gzipped):
    images, labels = mnist_arrays
    suffix = ".gz" if gzipped else ""
    images_path = write(tmp_path / f"train-images-idx3-ubyte{suffix}", idx_bytes(images), gzipped)
    labels_path = write(tmp_path / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels), gzipped)
    got_images, got_labels = read_mnist(images_path, labels_path)
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    assert got_labels.dtype == np.int64 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("gzipped", [False, True])
def test_every_idx_type(tmp_path, dtype, gzipped):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    values = np.array([[0, 1, -1], [2, 3, 100]], dtype=np.float64)
    if info is not None:
        values = np.array([[info.min, 1, info.max], [2, 0, 7]], dtype=np.float64)
    array = values.astype(dtype)
    if info is None:
        array.flat[4] = 0.1
    got = read_idx(write(tmp_path / "x.idx", idx_bytes(array), gzipped))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, array)
    got[0, 0] = 1  # writable, not a view of the file buffer


def test_gzip_is_detected_by_magic_not_name(tmp_path):
    array = np.arange(6, dtype=np.int32).reshape(3, 2)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain.idx", idx_bytes(array), gzipped=True)), array)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "looks.gz", idx_bytes(array))), array)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    dtype=st.sampled_from(list(CODES)),
    gzipped=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(tmp_path_factory, shape, dtype, gzipped, seed):
    rng = np.random.default_rng(seed)
    array = (rng.normal(size=shape) * 50).astype(dtype)
    path = write(tmp_path_factory.mktemp("idx") / "x", idx_bytes(array), gzipped)
    got = read_idx(path)
    assert got.shape == tuple(shape) and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, array)


def good_bytes() -> bytes:
    return idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short for an IDX header"),
        (b"\x00\x00", "too short for an IDX header"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX data type 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (good_bytes()[:10], "truncated header"),
        (good_bytes()[:-1], "truncated: shape \\(2, 3, 4\\) needs 24 data bytes, found 23"),
        (good_bytes() + b"\x00\x00", "2 unexpected bytes"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, data, message):
    path = write(tmp_path / "broken-idx3-ubyte", data)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert "broken-idx3-ubyte" in str(error.value)


def test_truncated_gzip(tmp_path):
    packed = gzip.compress(good_bytes(), mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_truncated_inside_gzip(tmp_path):
    path = write(tmp_path / "short.gz", good_bytes()[:-5], gzipped=True)
    with pytest.raises(ValueError, match=r"short\.gz: truncated"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="absent.idx: cannot read"):
        read_idx(tmp_path / "absent.idx")


def test_read_mnist_checks(tmp_path, mnist_arrays):
    images, labels = mnist_arrays
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(labels))
    short_labels = write(tmp_path / "short-labels", idx_bytes(labels[:5]))
    with pytest.raises(ValueError, match="holds 7 images but .*short-labels holds 5 labels"):
        read_mnist(images_path, short_labels)
    flat = write(tmp_path / "flat-images", idx_bytes(images.reshape(7, -1)))
    with pytest.raises(ValueError, match=r"flat-images: expected uint8 images \(N, H, W\)"):
        read_mnist(flat, labels_path)
    float_labels = write(tmp_path / "float-labels", idx_bytes(labels.astype(np.float32)))
    with pytest.raises(ValueError, match="float-labels: expected integer labels"):
        read_mnist(images_path, float_labels)
