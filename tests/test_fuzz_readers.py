"""Fuzzing (hypothesis): random bytes and mutated real files through every reader.

Each reader either returns a result or raises one of the library's own errors
(:class:`~oneshot.errors.OneshotError`); nothing else may escape.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from oneshot.data.archive import ImageArchive
from oneshot.data.decode import decode_image
from oneshot.data.folders import read_gallery
from oneshot.data.lake_runs import read_lake_runs
from oneshot.data.mnist import read_idx
from oneshot.embedder.artifact import load_model
from oneshot.embedder.train import load_checkpoint
from oneshot.errors import OneshotError
from oneshot.index.store import read_embeddings, write_embeddings

#: Deterministic by default (a fixed seed, so the suite is reproducible); set ONESHOT_FUZZ_EXAMPLES
#: (e.g. 5000) for a longer, randomised run.
DEEP = "ONESHOT_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(max_examples=int(os.environ.get("ONESHOT_FUZZ_EXAMPLES", 60)), derandomize=not DEEP, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def _image_files() -> dict[str, bytes]:
    pixels = np.full((24, 24), 255, dtype=np.uint8)
    pixels[4:20, 8:11] = 0
    image = Image.fromarray(pixels)
    out = {}
    for fmt, options in (("PNG", {}), ("JPEG", {}), ("GIF", {}), ("TIFF", {}), ("BMP", {}), ("WEBP", {}),
                         ("PPM", {})):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        out[fmt] = buffer.getvalue()
    rgba = io.BytesIO()
    Image.fromarray(np.dstack([pixels] * 3 + [255 - pixels]), "RGBA").save(rgba, format="PNG")
    out["RGBA"] = rgba.getvalue()
    return out


IMAGES = _image_files()


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite bytes at (position, value) pairs (positions taken modulo the length), then truncate."""
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out if cut is None else out[: cut % (len(out) + 1)])


edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)
cuts = st.one_of(st.none(), st.integers(0, 10**6))


def only_our_errors(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except OneshotError:
        return None


@FUZZ
@given(data=st.binary(max_size=2048), color=st.booleans())
def test_decode_random_bytes(data, color):
    out = only_our_errors(decode_image, data, "fuzz.png", color=color)
    assert out is None or (out.dtype == np.uint8 and out.ndim == (3 if color else 2))


@settings(FUZZ, max_examples=4 * FUZZ.max_examples)
@given(kind=st.sampled_from(sorted(IMAGES)), edits=edits, cut=cuts, color=st.booleans())
def test_decode_mutated_real_images(kind, edits, cut, color):
    out = only_our_errors(decode_image, mutate(IMAGES[kind], edits, cut), f"fuzz.{kind}", color=color,
                          max_pixels=4_000_000)
    assert out is None or (out.dtype == np.uint8 and out.size > 0)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):
            archive.writestr(f"g/c{i}/x.png", IMAGES["PNG"])
        archive.writestr("run01/class_labels.txt", "run01/test/item01.png run01/training/class01.png\n")
        archive.writestr("run01/test/item01.png", IMAGES["PNG"])
        archive.writestr("run01/training/class01.png", IMAGES["PNG"])
    return buffer.getvalue()


ZIP = _zip_bytes()


@FUZZ
@given(edits=edits, cut=cuts)
def test_zip_readers_on_mutated_zips(tmp_path_factory, edits, cut):
    path = tmp_path_factory.mktemp("fuzzzip") / "g.zip"
    path.write_bytes(mutate(ZIP, edits, cut))

    def read_everything():
        archive = ImageArchive(path)
        listing = archive.scan()
        for name in listing.names:
            only_our_errors(archive.read, name)
        only_our_errors(read_gallery, path, strict=False)
        only_our_errors(read_lake_runs, path)

    only_our_errors(read_everything)


@FUZZ
@given(text=st.text(max_size=300))
def test_list_file_with_random_lines(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzzlist") / "images.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if False else path.write_bytes(
        text.encode("utf-8", errors="replace"))
    only_our_errors(read_gallery, path, strict=False)
    only_our_errors(read_gallery, path)


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("fuzzstore")
    table = pd.DataFrame({"id": np.arange(6), "path": [f"c/{i}.png" for i in range(6)], "label": "c", "group": ""})
    vectors = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    return write_embeddings(folder / "s.parquet", table, vectors, {"metric": "l2"}).read_bytes()


@FUZZ
@given(edits=edits, cut=cuts, raw=st.binary(max_size=512), use_raw=st.booleans())
def test_store_reader(tmp_path_factory, real_store, edits, cut, raw, use_raw):
    path = tmp_path_factory.mktemp("fuzzparquet") / "s.parquet"
    path.write_bytes(raw if use_raw else mutate(real_store, edits, cut))
    stored = only_our_errors(read_embeddings, path)
    assert stored is None or np.isfinite(stored.embeddings).all()


@FUZZ
@given(edits=edits, cut=cuts, raw=st.binary(max_size=512), use_raw=st.booleans())
def test_model_reader(tmp_path_factory, tiny_model_path, edits, cut, raw, use_raw):
    path = tmp_path_factory.mktemp("fuzzmodel") / "m.safetensors"
    path.write_bytes(raw if use_raw else mutate(tiny_model_path.read_bytes(), edits, cut))
    only_our_errors(load_model, path)


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzzckpt") / "checkpoint.pt"
    torch.save({"config": {"a": 1}, "model": {"w": torch.zeros(3)}, "loss": {}, "optimizer": {}, "scheduler": {},
                "state": {"step": 2}}, path)
    return path.read_bytes()


@FUZZ
@given(edits=edits, cut=cuts, raw=st.binary(max_size=512), use_raw=st.booleans())
def test_checkpoint_reader(tmp_path_factory, real_checkpoint, edits, cut, raw, use_raw):
    path = tmp_path_factory.mktemp("fuzzckpt2") / "checkpoint.pt"
    path.write_bytes(raw if use_raw else mutate(real_checkpoint, edits, cut))
    only_our_errors(load_checkpoint, path)


@FUZZ
@given(edits=edits, cut=cuts, raw=st.binary(max_size=256), use_raw=st.booleans())
def test_idx_reader(tmp_path_factory, edits, cut, raw, use_raw):
    header = b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + (4).to_bytes(4, "big")
    path = tmp_path_factory.mktemp("fuzzidx") / "t-images-idx3-ubyte"
    path.write_bytes(raw if use_raw else mutate(header + bytes(48), edits, cut))
    only_our_errors(read_idx, path)


FAISS_FUZZ = textwrap.dedent('''
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a damaged header may ask for any size
    from pathlib import Path
    import numpy as np, pandas as pd
    from hypothesis import given, settings, strategies as st
    from oneshot.errors import OneshotError
    from oneshot.index.vector_index import VectorIndex, sidecar_path

    folder = Path(sys.argv[1])
    table = pd.DataFrame({"id": np.arange(20), "label": ["a", "b"] * 10})
    vectors = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    good = VectorIndex.build(vectors, table, "cosine", pca_dim=3).save(folder / "good.faiss")
    index_bytes, sidecar_bytes = good.read_bytes(), sidecar_path(good).read_bytes()
    edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)

    def mutate(data, changes, cut):
        out = bytearray(data)
        for position, value in changes:
            out[position % len(out)] = value
        return bytes(out if cut is None else out[: cut % (len(out) + 1)])

    @settings(max_examples=int(sys.argv[2]), deadline=None, database=None, derandomize=sys.argv[3] == "1")
    @given(changes=edits, cut=st.one_of(st.none(), st.integers(0, 10**6)), which=st.sampled_from(["index", "sidecar"]))
    def fuzz(changes, cut, which):
        path = folder / "f.faiss"
        path.write_bytes(mutate(index_bytes, changes, cut) if which == "index" else index_bytes)
        sidecar_path(path).write_bytes(mutate(sidecar_bytes, changes, cut) if which == "sidecar" else sidecar_bytes)
        try:
            VectorIndex.load(path)
        except OneshotError:
            pass

    fuzz()
    print("ok")
''')


def test_index_reader_in_a_memory_limited_process(tmp_path):
    """FAISS trusts sizes in its headers; run under a 3 GB address-space limit so a damaged one fails fast."""
    result = subprocess.run([sys.executable, "-c", FAISS_FUZZ, str(tmp_path),
                             str(2 * FUZZ.max_examples), "0" if DEEP else "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
