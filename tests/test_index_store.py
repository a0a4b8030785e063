"""Tests for index.store: Parquet round trip, schema, metadata, atomic writes, validation."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oneshot.errors import MissingDataError
from oneshot.index.store import METADATA_KEY, read_embeddings, read_store_metadata, write_embeddings


@pytest.fixture
def gallery():
    rng = np.random.default_rng(0)
    n, d = 10, 6
    table = pd.DataFrame(
        {
            "id": np.arange(100, 100 + n, dtype=np.int64),
            "path": [f"img/{i}.png" for i in range(n)],
            "label": [f"c{i % 3}" for i in range(n)],
            "group": ["g0"] * 5 + ["g1"] * 5,
            "extra": np.linspace(0, 1, n),
        }
    )
    return table, rng.standard_normal((n, d)).astype(np.float32)


def test_round_trip(tmp_path, gallery):
    table, emb = gallery
    path = write_embeddings(tmp_path / "e.parquet", table, emb, {"model_fingerprint": "abc"})
    got = read_embeddings(path)
    np.testing.assert_array_equal(got.embeddings, emb)
    assert got.embeddings.dtype == np.float32 and got.embeddings.flags.c_contiguous
    assert got.table["id"].dtype == np.int64
    assert list(got.table.columns) == ["id", "path", "label", "group", "extra"]
    for column in table.columns:
        assert got.table[column].tolist() == table[column].tolist()
    assert got.metadata["model_fingerprint"] == "abc"
    assert got.metadata["count"] == 10 and got.metadata["dimension"] == 6
    assert got.metadata["normalized"] is False and got.metadata["metric"] == "l2"
    assert len(got) == 10 and got.dimension == 6


def test_readable_by_pandas_and_pyarrow_with_fixed_size_list(tmp_path, gallery):
    table, emb = gallery
    path = write_embeddings(tmp_path / "e.parquet", table, emb, {"metric": "l1"})
    arrow = pq.read_table(path)
    vec = arrow.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vec) and vec.list_size == 6
    assert vec.value_type == pa.float32()
    meta = json.loads(arrow.schema.metadata[METADATA_KEY])
    assert meta["metric"] == "l1"
    frame = pd.read_parquet(path)
    assert len(frame) == 10
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_numpy()), emb)
    assert read_store_metadata(path) == meta


def test_normalized_rows_are_recorded_and_default_to_cosine(tmp_path, gallery):
    table, emb = gallery
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    meta = read_embeddings(write_embeddings(tmp_path / "u.parquet", table, unit)).metadata
    assert meta["normalized"] is True and meta["metric"] == "cosine"
    assert meta["model_fingerprint"] is None


def test_row_groups_stream(tmp_path, gallery):
    table, emb = gallery
    path = write_embeddings(tmp_path / "e.parquet", table, emb, row_group_size=3)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    np.testing.assert_array_equal(read_embeddings(path).embeddings, emb)


def test_empty_store(tmp_path, gallery):
    table, emb = gallery
    got = read_embeddings(write_embeddings(tmp_path / "e.parquet", table.iloc[:0], emb[:0]))
    assert got.embeddings.shape == (0, 6) and len(got.table) == 0


def test_failed_write_leaves_nothing(tmp_path, gallery, monkeypatch):
    table, emb = gallery
    target = tmp_path / "e.parquet"

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_embeddings(target, table, emb)
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_file(tmp_path, gallery, monkeypatch):
    table, emb = gallery
    target = write_embeddings(tmp_path / "e.parquet", table, emb)
    before = target.read_bytes()

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)
    with pytest.raises(OSError):
        write_embeddings(target, table, emb * 2)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["e.parquet"]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t, e: (t.assign(id=[1] * 10), e), "unique"),
        (lambda t, e: (t.iloc[:9], e), "rows"),
        (lambda t, e: (t.drop(columns="group"), e), "group"),
        (lambda t, e: (t.assign(id=np.arange(10) + 0.5), e), "id"),
        (lambda t, e: (t, e[:, 0]), "2-D"),
        (lambda t, e: (t, np.where(np.eye(10, 6, dtype=bool), np.nan, e)), "NaN"),
    ],
)
def test_write_validation(tmp_path, gallery, change, match):
    table, emb = change(*gallery)
    with pytest.raises(ValueError, match=match):
        write_embeddings(tmp_path / "e.parquet", table, emb)
    assert not (tmp_path / "e.parquet").exists()


def test_metadata_must_agree_with_data(tmp_path, gallery):
    table, emb = gallery
    with pytest.raises(ValueError, match="normalized"):
        write_embeddings(tmp_path / "e.parquet", table, emb, {"normalized": True})
    with pytest.raises(ValueError, match="count"):
        write_embeddings(tmp_path / "e.parquet", table, emb, {"count": 3})
    with pytest.raises(ValueError, match="metric"):
        write_embeddings(tmp_path / "e.parquet", table, emb, {"metric": "hamming"})
    with pytest.raises(ValueError, match="JSON"):
        write_embeddings(tmp_path / "e.parquet", table, emb, {"x": object()})


def test_read_errors_name_the_file(tmp_path, gallery):
    missing = tmp_path / "missing.parquet"
    with pytest.raises(MissingDataError, match="missing.parquet"):
        read_embeddings(missing)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="garbage.parquet"):
        read_embeddings(garbage)
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"id": [1], "label": ["a"]}).to_parquet(plain)
    with pytest.raises(ValueError, match="plain.parquet"):
        read_embeddings(plain)
    wrong = tmp_path / "wrong.parquet"
    arrow = pa.table(
        {
            "id": [1],
            "path": ["p"],
            "label": ["a"],
            "group": ["g"],
            "embedding": pa.array([[1.0, 2.0]], type=pa.list_(pa.float64())),
        }
    )
    meta = {"dimension": 2, "count": 1, "metric": "l2"}
    pq.write_table(arrow.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), wrong)
    with pytest.raises(ValueError, match="wrong.parquet.*fixed_size_list"):
        read_embeddings(wrong)
