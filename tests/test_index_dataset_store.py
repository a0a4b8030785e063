"""Tests for index.dataset_store: shard round-trips, manifests, remove, compact, migrate, info."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from oneshot.errors import CorruptFileError, InvalidInputError, MissingDataError
from oneshot.index.dataset_store import (
    MANIFEST_NAME,
    DatasetStore,
    migrate_store,
    path_id,
    path_ids,
    store_info,
)
from oneshot.index.store import read_embeddings, read_store_metadata, write_embeddings


def _rows(n: int, start: int = 0, dim: int = 4, seed: int = 0):
    paths = [f"class{i % 3}/img{i:04d}.png" for i in range(start, start + n)]
    table = pd.DataFrame({"id": path_ids(paths), "path": paths, "label": [p.split("/")[0] for p in paths],
                          "group": "", "content_hash": [f"{i:016x}" for i in range(start, start + n)]})
    vectors = np.random.default_rng(seed + start).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return table, vectors


def _store(tmp_path, shards=(5, 5, 3)):
    store = DatasetStore.create(tmp_path / "g.parquet", {"dimension": 4, "metric": "cosine", "model_fingerprint": "m1"})
    start = 0
    for n in shards:
        table, vectors = _rows(n, start)
        store.add_shard(table, vectors)
        start += n
    store.set_state("complete")
    return store


def test_path_ids_are_stable_non_negative_63_bit():
    ids = path_ids(["a/b.png", "a/c.png", "a/b.png"])
    assert ids.dtype == np.int64 and (ids >= 0).all()
    assert ids[0] == ids[2] != ids[1]
    assert path_id("a/b.png") == ids[0] == 0x7FFFFFFFFFFFFFFF & int.from_bytes(
        __import__("hashlib").blake2b(b"a/b.png", digest_size=8).digest(), "big")


def test_shards_round_trip_and_read_as_one_table_by_pandas_and_pyarrow(tmp_path):
    store = _store(tmp_path)
    expected_tables, expected_vectors = zip(*[_rows(5, 0), _rows(5, 5), _rows(3, 10)])
    stored = read_embeddings(store.folder)
    assert len(stored) == 13 and stored.metadata["model_fingerprint"] == "m1" and stored.metadata["count"] == 13
    np.testing.assert_array_equal(stored.embeddings, np.concatenate(expected_vectors))
    assert stored.embeddings.flags["C_CONTIGUOUS"] and stored.embeddings.dtype == np.float32
    assert stored.table["path"].tolist() == pd.concat(expected_tables)["path"].tolist()
    assert stored.table["id"].tolist() == pd.concat(expected_tables)["id"].tolist()
    frame = pd.read_parquet(store.folder)
    assert len(frame) == 13 and sorted(frame["path"]) == sorted(stored.table["path"])
    assert pq.read_table(store.folder).num_rows == 13
    assert read_store_metadata(store.folder)["count"] == 13
    manifest = json.loads((store.folder / MANIFEST_NAME).read_text())
    assert manifest["state"] == "complete" and [s["rows"] for s in manifest["shards"]] == [5, 5, 3]
    assert manifest["schema_version"] == 1


def test_duckdb_reads_the_folder(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    store = _store(tmp_path)
    assert duckdb.sql(f"select count(*) from '{store.folder}/*.parquet'").fetchall()[0][0] == 13


def test_remove_rewrites_only_the_shards_holding_the_rows_and_keeps_other_ids(tmp_path):
    store = _store(tmp_path)
    before = read_embeddings(store.folder)
    untouched = store.folder / store.manifest["shards"][2]["name"]
    stamp = untouched.stat().st_mtime_ns
    gone = before.table["label"] == "class1"
    removed = store.remove_rows(lambda rows: (rows["label"] == "class1").to_numpy(), only={
        s["name"] for s in store.manifest["shards"][:2]})
    assert removed == int(gone[:10].sum())
    after = read_embeddings(store.folder)
    keep = ~gone.to_numpy() | (np.arange(13) >= 10)
    assert after.table["id"].tolist() == before.table["id"][keep].tolist()  # ids unchanged
    np.testing.assert_array_equal(after.embeddings, before.embeddings[keep])
    assert untouched.stat().st_mtime_ns == stamp
    assert len(pd.read_parquet(store.folder)) == len(after)  # plain readers never see removed rows


def test_compact_fills_shards_and_keeps_rows(tmp_path):
    store = _store(tmp_path, shards=(2, 1, 3, 1))
    before = read_embeddings(store.folder)
    result = DatasetStore.open(store.folder).compact(shard_rows=4)
    assert result == {"shards_before": 4, "shards_after": 2, "rows": 7}
    after = read_embeddings(store.folder)
    assert after.table["id"].tolist() == before.table["id"].tolist()
    np.testing.assert_array_equal(after.embeddings, before.embeddings)
    assert sorted(p.name for p in store.folder.glob("*.parquet")) == sorted(
        s["name"] for s in DatasetStore.open(store.folder).manifest["shards"])


def test_later_shard_wins_on_duplicate_ids_and_compact_drops_the_old_row(tmp_path):
    store = _store(tmp_path, shards=(3,))
    table, _ = _rows(1, 1)
    newer = np.array([[1.0, 0, 0, 0]], np.float32)
    store.add_shard(table, newer)
    stored = read_embeddings(store.folder)
    assert len(stored) == 3
    np.testing.assert_array_equal(stored.embeddings[stored.table["id"] == table["id"][0]], newer)
    DatasetStore.open(store.folder).compact()
    assert len(pd.read_parquet(store.folder)) == 3


def test_stray_shards_from_a_killed_rewrite_are_removed_on_open_for_writing(tmp_path):
    store = _store(tmp_path)
    stray = store.folder / "part-g9-000000.parquet"
    stray.write_bytes((store.folder / store.manifest["shards"][0]["name"]).read_bytes())
    assert DatasetStore.open(store.folder).remove_strays() == [stray.name]
    assert len(read_embeddings(store.folder)) == 13


def test_migrate_keeps_ids_rows_and_vectors(tmp_path):
    table, vectors = _rows(11)
    table = table.drop(columns="content_hash").assign(id=np.arange(11) * 7)
    old = write_embeddings(tmp_path / "old.parquet", table, vectors, {"model_fingerprint": "m9"})
    migrated = migrate_store(old, tmp_path / "new.parquet", shard_rows=4)
    assert [s["rows"] for s in migrated.manifest["shards"]] == [4, 4, 3]
    got = read_embeddings(tmp_path / "new.parquet")
    assert got.table["id"].tolist() == table["id"].tolist()
    np.testing.assert_array_equal(got.embeddings, vectors)
    assert got.metadata["model_fingerprint"] == "m9" and got.metadata["metric"] == "cosine"
    with pytest.raises(InvalidInputError, match="already a store folder"):
        migrate_store(tmp_path / "new.parquet", tmp_path / "again")


def test_info_describes_both_layouts(tmp_path):
    store = _store(tmp_path)
    info = store_info(store.folder)
    assert info["layout"] == "sharded" and info["rows"] == 13 and info["shards"] == 3 and info["labels"] == 3
    assert info["model_fingerprint"] == "m1" and info["bytes"] > 0
    table, vectors = _rows(4)
    single = write_embeddings(tmp_path / "s.parquet", table, vectors)
    assert store_info(single)["layout"] == "single-file" and store_info(single)["rows"] == 4


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(MissingDataError, match="not a store folder"):
        DatasetStore.open(tmp_path)
    store = _store(tmp_path)
    (store.folder / store.manifest["shards"][1]["name"]).unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        read_embeddings(store.folder)
    with pytest.raises(InvalidInputError, match="already holds a store"):
        DatasetStore.create(store.folder, {"dimension": 4, "metric": "cosine"})
    other = DatasetStore.create(tmp_path / "o", {"dimension": 4, "metric": "cosine"})
    with pytest.raises(InvalidInputError, match=r"\(N, 4\)"):
        other.add_shard(*_rows(2, dim=3))


def test_a_shard_written_batch_by_batch_equals_one_written_at_once_and_a_discarded_one_leaves_nothing(
        tmp_path, monkeypatch):
    from oneshot.index.dataset_store import ShardWriter

    monkeypatch.setattr(ShardWriter, "ROW_GROUP_ROWS", 8)
    table, vectors = _rows(21)
    whole = DatasetStore.create(tmp_path / "whole", {"dimension": 4, "metric": "cosine"})
    whole.add_shard(table, vectors)
    streamed = DatasetStore.create(tmp_path / "streamed", {"dimension": 4, "metric": "cosine"})
    with streamed.shard_writer(0) as shard:
        for start in range(0, 21, 5):  # batches of 5 rows; row groups of 8
            shard.write(table.iloc[start : start + 5], vectors[start : start + 5])
        name = shard.commit()
    file = pq.ParquetFile(streamed.folder / name)
    assert [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)] == [8, 8, 5]
    a, b = read_embeddings(whole.folder), read_embeddings(streamed.folder)
    pd.testing.assert_frame_equal(a.table, b.table)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert streamed.manifest["shards"] == [{"name": name, "rows": 21}]
    with pytest.raises(RuntimeError), streamed.shard_writer() as shard:  # a job dies while writing
        shard.write(table.iloc[:5], vectors[:5])
        raise RuntimeError("killed")
    assert sorted(p.name for p in streamed.folder.iterdir()) == sorted(["_oneshot.json", name])
    assert len(DatasetStore.open(streamed.folder)) == 21
