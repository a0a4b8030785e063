"""Tests for pipelines.cli: every command driven through CliRunner with a tiny fake embedder."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oneshot.index.store import read_embeddings
from oneshot.index.vector_index import VectorIndex, sidecar_path
from oneshot.pipelines.cli import main

TINY_CONFIG = {
    "backbone": "conv", "backbone_options": {"channels": 4, "blocks": 2}, "dim": 8, "recipe": {"size": 16},
    "steps": 4, "val_every": 2, "checkpoint_every": 2, "classes_per_batch": 5, "items_per_class": 3,
    "val_episodes": 20, "val_way": 5,
}


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def fails(result, code: int) -> str:
    """Assert a clean failure (SystemExit from click, no traceback) and return the error line(s)."""
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert "Traceback" not in result.output
    return result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthetic_gallery, tiny_model_path):
    """The gallery embedded with the tiny model and indexed (no PCA), through the CLI."""
    folder = tmp_path_factory.mktemp("cli_built")
    store, index = folder / "gallery.parquet", folder / "gallery.faiss"
    ok(run("embed", synthetic_gallery, "--out", store, "--model", tiny_model_path))
    ok(run("index", "build", store, "--out", index))
    return store, index


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory) -> Path:
    """Same architecture as the tiny model, different weights (so a different fingerprint)."""
    import torch

    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    torch.manual_seed(1)
    model = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
    return save_model(model, tmp_path_factory.mktemp("other_model") / "other.safetensors")


# ---------------------------------------------------------------- help and version


@pytest.mark.parametrize("command", [["demo"], ["train"], ["embed"], ["index", "build"], ["identify"], ["eval"],
                                     ["cluster"], ["assign"], ["report"], ["lake"], ["verify"],
                                     ["ensemble"]])
def test_help_shows_an_example(command):
    result = ok(run(*command, "--help"))
    assert "Example" in result.output
    assert f"oneshot {' '.join(command)} " in result.output  # the example runs this very command


def test_top_level_help_and_version():
    assert "oneshot demo" in ok(run("--help")).output
    result = ok(run("--version"))
    assert version("oneshot") in result.output


# ---------------------------------------------------------------- embed


def test_embed_folder_writes_a_readable_store(built, synthetic_gallery):
    store, _ = built
    images = sorted(p.relative_to(synthetic_gallery).as_posix() for p in synthetic_gallery.rglob("*.png"))
    frame = pd.read_parquet(store)
    assert list(frame.columns) == ["id", "path", "label", "group", "content_hash", "embedding"]
    assert len(frame) == len(images) == 60
    assert sorted(frame["path"]) == images
    assert frame["label"].nunique() == 10 and frame["group"].nunique() == 2
    assert (frame["label"] == frame["path"].str.rsplit("/", n=1).str[0]).all()
    assert all(len(v) == 8 for v in frame["embedding"])
    stored = read_embeddings(store)
    np.testing.assert_allclose(np.linalg.norm(stored.embeddings, axis=1), 1.0, atol=1e-5)  # cosine head


def test_embed_prints_what_it_wrote(tmp_path, synthetic_gallery, tiny_model_path):
    out = tmp_path / "nested" / "g.parquet"
    result = ok(run("embed", synthetic_gallery, "--out", out, "--model", tiny_model_path))
    assert "wrote 60 embeddings (D=8)" in result.output
    assert out.is_dir() and (out / "_oneshot.json").is_file()


def test_embed_zip_matches_folder(tmp_path, built, synthetic_gallery, tiny_model_path):
    archive = tmp_path / "gallery.zip"
    with zipfile.ZipFile(archive, "w") as handle:  # one top folder, like images_evaluation.zip
        for path in sorted(synthetic_gallery.rglob("*.png")):
            handle.write(path, f"gallery/{path.relative_to(synthetic_gallery).as_posix()}")
    out = tmp_path / "zip.parquet"
    ok(run("embed", archive, "--out", out, "--model", tiny_model_path))
    from_zip, from_folder = read_embeddings(out), read_embeddings(built[0])
    assert len(from_zip) == 60
    assert (from_zip.table["path"] == "gallery/" + from_folder.table["path"]).all()
    assert (from_zip.table["label"] == from_folder.table["label"]).all()
    assert (from_zip.table["group"] == from_folder.table["group"]).all()
    np.testing.assert_allclose(from_zip.embeddings, from_folder.embeddings, atol=1e-6)


def test_embed_list_file_keeps_list_order(tmp_path, built, synthetic_gallery, tiny_model_path):
    shutil.copytree(synthetic_gallery, tmp_path / "gallery")
    chosen = sorted(p.relative_to(synthetic_gallery).as_posix() for p in synthetic_gallery.rglob("*.png"))[::9][::-1]
    listing = tmp_path / "images.txt"
    listing.write_text("# a comment\n\n" + "\n".join(f"gallery/{p}" for p in chosen) + "\n")
    out = tmp_path / "list.parquet"
    ok(run("embed", listing, "--out", out, "--model", tiny_model_path))
    stored, folder = read_embeddings(out), read_embeddings(built[0])
    assert stored.table["path"].tolist() == [f"gallery/{p}" for p in chosen]
    assert stored.table["label"].tolist() == [p.rsplit("/", 1)[0] for p in chosen]
    assert stored.table["group"].tolist() == [p.split("/", 1)[0] for p in chosen]
    rows = folder.table.reset_index().set_index("path").loc[chosen, "index"].to_numpy()
    np.testing.assert_allclose(stored.embeddings, folder.embeddings[rows], atol=1e-6)


# ---------------------------------------------------------------- index build


def test_index_build_writes_index_and_sidecar(built):
    store, index_path = built
    assert index_path.is_file() and sidecar_path(index_path).is_file()
    assert sidecar_path(index_path).name == "gallery.faiss.meta.parquet"
    index = VectorIndex.load(index_path)
    assert len(index) == 60 and index.dimension == 8 and index.pca is None
    assert index.metric.name == "cosine"
    assert index.metadata["model_fingerprint"] == read_embeddings(store).metadata["model_fingerprint"]


def test_index_build_with_pca_dim(tmp_path, built):
    out = tmp_path / "pca.faiss"
    result = ok(run("index", "build", built[0], "--out", out, "--pca-dim", 4))
    assert "indexed 60 vectors (D=4" in result.output
    assert out.is_file() and sidecar_path(out).is_file()
    index = VectorIndex.load(out)
    assert index.dimension == 4 and index.input_dimension == 8 and index.pca is not None


def test_index_build_rejects_both_pca_options(tmp_path, built):
    out = tmp_path / "both.faiss"
    message = fails(run("index", "build", built[0], "--out", out, "--pca-dim", 4, "--pca-variance", 0.9), 2)
    assert "--pca-dim" in message and "--pca-variance" in message
    assert not out.exists()


# ---------------------------------------------------------------- identify


def test_identify_the_gallery_against_itself(built, synthetic_gallery, tiny_model_path):
    _, index = built
    result = ok(run("identify", synthetic_gallery, "--index", index, "--model", tiny_model_path))
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 60
    for answer in answers:
        assert {"path", "label", "score", "known", "candidate", "true_label"} <= set(answer)
        assert answer["known"] is True
        assert answer["label"] == answer["true_label"] == answer["candidate"]
        assert answer["score"] == pytest.approx(1.0, abs=1e-4)
    assert "accuracy against folder labels: 1.0000" in result.stderr


def test_identify_threshold_above_cosine_max_makes_everything_unknown(built, synthetic_gallery, tiny_model_path):
    _, index = built
    result = ok(run("identify", synthetic_gallery, "--index", index, "--model", tiny_model_path,
                    "--threshold", 2.0))
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 60
    assert all(a["label"] == "unknown" and a["known"] is False for a in answers)
    assert all(a["candidate"] == a["true_label"] for a in answers)  # the best match is still reported


def test_identify_writes_json_lines_file(tmp_path, built, synthetic_gallery, tiny_model_path):
    out = tmp_path / "answers.jsonl"
    result = ok(run("identify", synthetic_gallery, "--index", built[1], "--model", tiny_model_path,
                    "--out", out, "-k", 3))
    assert "wrote 60 answers" in result.stdout
    frame = pd.read_json(out, lines=True)
    assert len(frame) == 60 and {"label", "score", "known"} <= set(frame.columns)
    assert [p.name for p in tmp_path.iterdir()] == ["answers.jsonl"]  # no temporary file left


def test_identify_with_another_model_fails_cleanly(built, synthetic_gallery, other_model_path):
    message = fails(run("identify", synthetic_gallery, "--index", built[1], "--model", other_model_path), 1)
    lines = message.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ") and "built with model" in lines[0] and "--model" in lines[0]



@pytest.mark.parametrize("name", ["handwriting-v1", "handwriting-v2", "handwriting-ensemble", "handwriting-ensemble-v1"])
def test_a_gallery_embedded_with_another_shipped_model_is_identified_with_it(tmp_path, synthetic_gallery, name):
    """An index built with a shipped model other than the default (an earlier default, or the ensemble)
    answers without --model: the model is found by the fingerprint the index records, never the default."""
    from oneshot.embedder.artifact import load_model

    store, index = tmp_path / "old.parquet", tmp_path / "old.faiss"
    ok(run("embed", synthetic_gallery, "--out", store, "--model", name))
    ok(run("index", "build", store, "--out", index))
    result = ok(run("identify", synthetic_gallery, "--index", index, "--threshold", "none"))
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 60 and all(a["label"] == a["true_label"] for a in answers)
    assert all(a["score"] == pytest.approx(1.0, abs=1e-4) for a in answers)  # the same vectors: the same model
    assert load_model(name).fingerprint != load_model().fingerprint


# ---------------------------------------------------------------- eval and cluster


def test_verify_same_image_is_same_and_other_class_scores_lower(synthetic_gallery, tiny_model_path):
    images = sorted(synthetic_gallery.rglob("*.png"))
    same = json.loads(ok(run("verify", images[0], images[0], "--model", tiny_model_path, "--threshold", "0.999")).output)
    assert same["score"] == pytest.approx(1.0, abs=1e-5) and same["same"] is True
    other = next(p for p in images if p.parent != images[0].parent)
    different = json.loads(ok(run("verify", images[0], other, "--model", tiny_model_path)).output)
    assert different["score"] < same["score"] and different["same"] is None


def test_verify_corrupt_image_names_it(tmp_path, tiny_model_path, synthetic_gallery):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    image = next(synthetic_gallery.rglob("*.png"))
    assert "bad.png" in fails(run("verify", image, bad, "--model", tiny_model_path), 1)


def test_eval_prints_json_accuracies(built):
    result = ok(run("eval", built[0], "--way", 5, "--episodes", 50))
    report = json.loads(result.stdout)
    assert set(report) == {"oneshot", "knn", "verification", "raw_pixels"}
    assert 0.0 <= report["oneshot"]["accuracy"] <= 1.0
    assert 0.0 <= report["knn"]["accuracy"] <= 1.0
    assert 0.0 <= report["verification"]["accuracy"] <= 1.0
    assert report["oneshot"]["n_way"] == 5 and report["oneshot"]["episodes"] == 50
    assert report["oneshot"]["within_group"] is True
    assert report["knn"]["gallery"] + report["knn"]["queries"] == 60


def test_eval_way_follows_the_classes_the_store_has(built):
    report = json.loads(ok(run("eval", built[0], "--way", 20, "--episodes", 5)).stdout)
    assert report["oneshot"]["n_way"] == 5 and report["oneshot"]["within_group"]  # 5 characters per alphabet
    assert "20-way asked" in report["oneshot"]["note"]


def test_group_option_and_unknown_group(built):
    ok(run("cluster", built[0], "--group", "synth_a01"))
    assert "nope" in fails(run("eval", built[0], "--way", 5, "--group", "nope"), 1)


def test_cluster_prints_scores_and_where_the_thresholds_came_from(built):
    result = ok(run("cluster", built[0], "--clusters", "truth"))
    assert "synth_a01" in result.output and "synth_a02" in result.output
    found = re.search(r"mean accuracy (\d\.\d+), ARI (-?\d\.\d+), NMI (\d\.\d+), 10 clusters for 10 classes",
                      result.output)
    assert found, result.output
    assert 0.0 <= float(found.group(1)) <= 1.0 and -1.0 <= float(found.group(2)) <= 1.0
    # The tiny model is not the shipped one: the default thresholds are used, and said so.
    assert "thresholds: cluster_distance=" in result.stderr and "built-in default" in result.stderr
    shared = ok(run("cluster", built[0], "--clusters", "truth", "--affinity", "shared", "--json"))
    assert json.loads(shared.stdout)["settings"]["affinity"] == "shared"
    assert "'knn', 'shared'" in fails(run("cluster", built[0], "--affinity", "nearest"), 2)


def test_cluster_out_export_and_assign(built, tmp_path, synthetic_gallery, tiny_model_path):
    out, export = tmp_path / "clusters.parquet", tmp_path / "review"
    ok(run("cluster", built[0], "--clusters", "5", "--out", out, "--export", export, "--cluster-distance", "0.01",
           "--cluster-radius", "0.5"))
    import pandas as pd

    table = pd.read_parquet(out)
    assert {"id", "path", "group", "cluster", "distance", "outlier"} <= set(table.columns) and len(table) == 60
    assert table.groupby("group")["cluster"].nunique().tolist() == [5, 5]
    # One folder per cluster under its group, every image exported once.
    folders = sorted(p for p in export.glob("*/cluster_*") if p.is_dir())
    assert len(folders) == 10 and len(list(export.rglob("*.png"))) == 60
    answers = ok(run("assign", synthetic_gallery / "synth_a01", "--clusters", out, "--model", tiny_model_path))
    lines = [json.loads(line) for line in answers.stdout.strip().splitlines()]
    assert len(lines) == 30 and all(line["group"] in ("synth_a01", "synth_a02") for line in lines)
    assert "cluster_radius=0.5000" in answers.stderr
    assert fails(run("cluster", built[0], "--clusters", "0"), 2)
    assert "truth needs labels" not in fails(run("cluster", built[0], "--clusters", "many"), 2)


def test_report_writes_one_html_file(built, tmp_path):
    out = tmp_path / "report.html"
    ok(run("report", built[0], "--out", out, "--episodes", 20))
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text


# ---------------------------------------------------------------- errors


def test_missing_source_is_a_usage_error(tmp_path):
    message = fails(run("embed", tmp_path / "nope", "--out", tmp_path / "x.parquet"), 2)
    assert "does not exist" in message
    assert not (tmp_path / "x.parquet").exists()


def test_corrupt_image_names_the_file_and_leaves_nothing(tmp_path, synthetic_gallery, tiny_model_path):
    gallery = shutil.copytree(synthetic_gallery, tmp_path / "gallery")
    bad = gallery / "synth_a02" / "char03" / "broken.png"
    bad.write_bytes(b"this is not a png\x00\x01\x02")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    message = fails(run("embed", gallery, "--out", out_dir / "g.parquet", "--model", tiny_model_path,
                        "--on-error", "fail"), 1)
    assert "broken.png" in message and "synth_a02/char03" in message
    assert len(message.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []  # no store, no temporary file, no lock left


def test_non_model_file_as_model_names_it(tmp_path, synthetic_gallery):
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(b"\x00" * 64)
    message = fails(run("embed", synthetic_gallery, "--out", tmp_path / "g.parquet", "--model", fake), 1)
    assert str(fake) in message and "model file" in message
    assert not (tmp_path / "g.parquet").exists()


# ---------------------------------------------------------------- train


def test_train_synthetic_with_config(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    out = tmp_path / "run"
    result = ok(run("train", "--synthetic", "--config", config, "--out", out))
    found = re.search(r"best validation 5-way accuracy (\d\.\d+) at step (\d+)", result.output)
    assert found, result.output
    assert 0.0 <= float(found.group(1)) <= 1.0 and int(found.group(2)) in (2, 4)
    assert (out / "model.safetensors").is_file() and (out / "history.csv").is_file()
    from oneshot.embedder.artifact import load_model

    model = load_model(out / "model.safetensors")
    assert model.dim == 8 and model.recipe.size == 16
    assert model.info["val_accuracy"] == pytest.approx(float(found.group(1)), abs=1e-4)
    assert model.info["train_config"]["precision"] == "fp32"
    ok(run("train", "--synthetic", "--config", config, "--precision", "bfloat16", "--out", tmp_path / "bf16"))
    assert load_model(tmp_path / "bf16" / "model.safetensors").info["train_config"]["precision"] == "bf16"  # one name kept


def test_training_a_matched_model_calibrates_the_unknown_threshold_of_its_trained_score(tmp_path):
    from oneshot.embedder.artifact import load_model

    config = tmp_path / "matched.json"
    config.write_text(json.dumps({**TINY_CONFIG, "match_dim": 4, "every_support": True, "items_per_class": 3}))
    ok(run("train", "--synthetic", "--config", config, "--out", tmp_path / "run"))
    thresholds = load_model(tmp_path / "run" / "model.safetensors").info["thresholds"]
    reranked = thresholds["unknown_reranked"]
    assert np.isfinite(reranked["value"]) and reranked["metric"].startswith("trained score")
    assert reranked["calibrated_on"] == thresholds["unknown"]["calibrated_on"]  # the same held-out images
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(TINY_CONFIG))
    ok(run("train", "--synthetic", "--config", plain, "--out", tmp_path / "plain"))
    assert "unknown_reranked" not in load_model(tmp_path / "plain" / "model.safetensors").info["thresholds"]


def test_train_with_teachers_distills_and_refuses_a_teacher_of_other_images(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    ok(run("train", "--synthetic", "--config", config, "--out", tmp_path / "teacher"))
    teacher = tmp_path / "teacher" / "model.safetensors"
    ok(run("train", "--synthetic", "--config", config, "--teacher", teacher, "--out", tmp_path / "student"))
    from oneshot.embedder.artifact import load_model

    info = load_model(tmp_path / "student" / "model.safetensors").info
    assert [d["path"] for d in info["distilled_from"]] == [str(teacher)]
    assert info["train_config"]["teachers"] == [str(teacher)] and info["teacher_seconds"] >= 0
    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe

    other = save_model(Embedder("conv", dim=8, recipe=Recipe(size=20), backbone_options={"channels": 4, "blocks": 2}),
                       tmp_path / "other.safetensors")
    message = fails(run("train", "--synthetic", "--config", config, "--teacher", other, "--out", tmp_path / "refused"), 1)
    assert str(other) in message and "must match" in message
    assert not (tmp_path / "refused" / "model.safetensors").exists()


def test_train_unknown_config_key_names_it(tmp_path):
    config = tmp_path / "typo.json"
    config.write_text(json.dumps({**TINY_CONFIG, "stepz": 3}))
    message = fails(run("train", "--synthetic", "--config", config, "--out", tmp_path / "run"), 1)
    assert "stepz" in message
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("text, expected", [("[1, 2]", "JSON object"), ("{steps: 3", "not valid JSON")])
def test_train_bad_config_file_names_it(tmp_path, text, expected):
    config = tmp_path / "bad.json"
    config.write_text(text)
    message = fails(run("train", "--synthetic", "--config", config, "--out", tmp_path / "run"), 1)
    assert str(config) in message and expected in message


# ---------------------------------------------------------------- lake


def test_lake_runs_with_tiny_model(omniglot_dir, tiny_model_path):
    result = ok(run("lake", "--data", omniglot_dir, "--model", tiny_model_path))
    found = re.search(r"mean error (\d\.\d+) over (\d+) trials", result.output)
    assert found, result.output
    assert 0.0 <= float(found.group(1)) <= 1.0
    assert int(found.group(2)) == 400  # 20 runs x 20 trials
    assert len(re.findall(r"^run\d\d ", result.output, flags=re.M)) == 20
