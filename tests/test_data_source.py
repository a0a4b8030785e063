"""Tests for data.source: one interface over every reader, and open_source's dispatch."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from oneshot.data.folders import Gallery
from oneshot.data.omniglot import OmniglotSplit
from oneshot.data.source import ImageSource, MnistSource, describe_source, open_source, read_all
from oneshot.data.synthetic import make_alphabets
from oneshot.errors import InvalidInputError, MissingDataError


def idx(array: np.ndarray, code: int) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(opener(idx(images, 0x08)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(opener(idx(labels, 0x08)))
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_images_file_finds_its_labels(tmp_path, gz):
    images, labels = write_mnist(tmp_path, "t10k", 7, gz)
    source = open_source(tmp_path / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}")
    assert isinstance(source, MnistSource) and isinstance(source, ImageSource)
    assert list(source.table.columns[:4]) == ["id", "path", "label", "group"]
    assert source.table["label"].tolist() == [str(v) for v in labels]
    assert np.array_equal(np.stack(read_all(source)), images)
    assert np.array_equal(source.read([source.table["path"][3]])[0], images[3])
    with pytest.raises(InvalidInputError, match="not a row"):
        source.read(["nope"])


def test_an_mnist_folder_opens_the_asked_split(tmp_path):
    train_images, _ = write_mnist(tmp_path, "train", 5, False, seed=1)
    test_images, _ = write_mnist(tmp_path, "t10k", 3, True, seed=2)
    assert np.array_equal(np.stack(read_all(open_source(tmp_path))), train_images)
    assert np.array_equal(np.stack(read_all(open_source(tmp_path, split="test"))), test_images)


def test_an_idx_file_without_labels_is_named(tmp_path):
    write_mnist(tmp_path, "train", 3, False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingDataError, match="train-images-idx3-ubyte.*labels"):
        open_source(tmp_path / "train-images-idx3-ubyte")


def test_galleries_synthetic_sets_and_missing_paths(tmp_path, synthetic_gallery):
    gallery = open_source(synthetic_gallery)
    assert isinstance(gallery, Gallery) and isinstance(gallery, ImageSource)
    assert describe_source(gallery) == str(synthetic_gallery)
    synthetic = make_alphabets(1, 2, drawers=2, seed=0)
    assert open_source(synthetic) is synthetic and isinstance(synthetic, ImageSource)
    with pytest.raises(MissingDataError, match="nowhere"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="split"):
        open_source(synthetic_gallery, split="evaluation")


def test_an_omniglot_folder_opens_a_split(omniglot_dir):
    source = open_source(omniglot_dir, split="small1")
    assert isinstance(source, OmniglotSplit) and isinstance(source, ImageSource)
    assert source.table["group"].nunique() == 5
