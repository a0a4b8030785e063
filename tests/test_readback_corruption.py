"""Files the product reads back (stores, indexes, models, checkpoints): damage gives a clear error naming the file."""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from oneshot.embedder.artifact import load_model
from oneshot.embedder.train import load_checkpoint
from oneshot.errors import CorruptFileError, OneshotError
from oneshot.index.store import read_embeddings, write_embeddings
from oneshot.index.vector_index import VectorIndex, sidecar_path
from oneshot.pipelines.cli import main


def table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": np.arange(n), "path": [f"c{i % 3}/{i}.png" for i in range(n)],
                         "label": [f"c{i % 3}" for i in range(n)], "group": ""})


@pytest.fixture
def store(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    return write_embeddings(tmp_path / "g.parquet", table(40), vectors, {"metric": "l2"})


@pytest.fixture
def index(tmp_path, store):
    return VectorIndex.from_store(store).save(tmp_path / "g.faiss")


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("cut", [0, 4, 100, -40, -8])
def test_truncated_store_names_the_file(store, cut):
    data = store.read_bytes()
    store.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut] if cut else b"")
    with pytest.raises(CorruptFileError, match="g.parquet"):
        read_embeddings(store)
    result = cli("eval", store, "--episodes", 5, "--way", 2)
    assert result.exit_code == 1 and "g.parquet" in result.stderr


def test_foreign_parquet_is_not_a_store(tmp_path):
    foreign = tmp_path / "sales.parquet"
    pq.write_table(pa.table({"id": [1, 2], "amount": [3.5, 4.0]}), foreign)
    with pytest.raises(CorruptFileError, match="sales.parquet: no 'oneshot' metadata; not an embedding store"):
        read_embeddings(foreign)
    other = tmp_path / "text.parquet"
    other.write_text("id,path\n1,a.png\n")
    with pytest.raises(CorruptFileError, match="text.parquet: not a readable Parquet file"):
        read_embeddings(other)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_faiss_file_names_it(index, keep):
    data = index.read_bytes()
    index.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptFileError, match="g.faiss"):
        VectorIndex.load(index)
    result = cli("identify", index.parent, "--index", index)
    assert result.exit_code == 1 and "g.faiss" in result.stderr


def test_index_metadata_alone_names_a_missing_or_foreign_sidecar(tmp_path, store, index):
    from oneshot.errors import MissingDataError
    from oneshot.index.index_file import read_index_metadata

    assert read_index_metadata(index)["source"] == str(store.resolve())
    sidecar = sidecar_path(index)
    pq.write_table(pa.table({"id": [1]}), sidecar)
    with pytest.raises(CorruptFileError, match="g.faiss.meta.parquet: not an index metadata file"):
        read_index_metadata(index)
    sidecar.write_bytes(b"not parquet")
    with pytest.raises(CorruptFileError, match="g.faiss.meta.parquet: not an index metadata file"):
        read_index_metadata(index)
    sidecar.unlink()
    with pytest.raises(MissingDataError, match="g.faiss.meta.parquet: not found"):
        read_index_metadata(index)


def test_sidecar_of_another_index_is_refused(tmp_path, index):
    vectors = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    other = VectorIndex.build(vectors, table(30), "l2").save(tmp_path / "other.faiss")
    os.replace(sidecar_path(other), sidecar_path(index))
    with pytest.raises(CorruptFileError, match="g.faiss: index and g.faiss.meta.parquet disagree: count"):
        VectorIndex.load(index)


def test_edited_model_bytes_are_caught_by_the_fingerprint(tmp_path, tiny_model_path):
    edited = tmp_path / "edited.safetensors"
    data = bytearray(tiny_model_path.read_bytes())
    data[-5] ^= 0x40  # one bit of one weight
    edited.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="edited.safetensors: weights do not match the stored fingerprint"):
        load_model(edited)
    header = bytearray(tiny_model_path.read_bytes())
    header[12] = ord("#")  # inside the JSON header
    (tmp_path / "header.safetensors").write_bytes(bytes(header))
    with pytest.raises(CorruptFileError, match="header.safetensors"):
        load_model(tmp_path / "header.safetensors")
    (tmp_path / "short.safetensors").write_bytes(tiny_model_path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="short.safetensors"):
        load_model(tmp_path / "short.safetensors")


class Exploit:
    """Pickles to a call of os.system: loading it with plain pickle would run a command."""

    def __reduce__(self):
        return (os.system, ("touch HACKED",))


def test_crafted_pickle_checkpoint_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"config": {}, "model": Exploit()}, crafted)  # a torch zip holding a malicious pickle
    with pytest.raises(CorruptFileError, match="checkpoint.pt: not a oneshot training checkpoint, or an unsafe"):
        load_checkpoint(crafted)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Exploit()))  # a bare pickle
    with pytest.raises(CorruptFileError, match="raw.pt"):
        load_checkpoint(raw)
    assert not (tmp_path / "HACKED").exists()


def test_checkpoint_that_is_not_ours(tmp_path):
    foreign = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)  # a valid, safe torch file, but not a checkpoint
    with pytest.raises(CorruptFileError, match="checkpoint.pt: not a oneshot training checkpoint .expected keys"):
        load_checkpoint(foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptFileError, match="junk.pt"):
        load_checkpoint(junk)
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"garbage")
    with pytest.raises(CorruptFileError, match="zip.pt"):
        load_checkpoint(tmp_path / "zip.pt")


def test_train_resume_from_a_foreign_checkpoint_fails_cleanly(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"weights": torch.zeros(3)}, out / "checkpoint.pt")
    result = cli("train", "--synthetic", "--steps", 1, "--out", out)
    assert result.exit_code == 1, result.output
    assert "checkpoint.pt: not a oneshot training checkpoint" in result.stderr


def test_every_readback_error_is_a_library_error(tmp_path):
    assert issubclass(CorruptFileError, OneshotError)
