"""End to end on the user's own galleries: tiny MNIST IDX files, a colour class-per-folder gallery
and a writer/genuine/forged gallery; train (a few steps), embed, eval, index, identify, cluster."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from oneshot.embedder.artifact import load_model
from oneshot.pipelines.cli import main

FEW_STEPS = ("--steps", "2", "--seed", "0")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def _idx(path: Path, array: np.ndarray) -> Path:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """train/t10k IDX files of 10 synthetic 'digits' x 8 drawings (ink bright on black, 28x28)."""
    import cv2

    from oneshot.data.synthetic import make_alphabets

    folder = tmp_path_factory.mktemp("mnist")
    for name, seed in (("train", 0), ("t10k", 1)):
        drawn = make_alphabets(1, 10, drawers=8, size=28, seed=seed)
        images = np.stack([255 - cv2.resize(i, (28, 28)) if i[0, 0] > 127 else i for i in drawn.images])
        labels = np.repeat(np.arange(10), 8)
        _idx(folder / f"{name}-images-idx3-ubyte.gz", images)
        _idx(folder / f"{name}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def colour_gallery(tmp_path_factory) -> Path:
    from oneshot.data.synthetic_photos import make_photo_gallery

    return make_photo_gallery(tmp_path_factory.mktemp("colour") / "gallery", n_classes=10, per_class=6, size=24)


@pytest.fixture(scope="module")
def signature_gallery(tmp_path_factory) -> Path:
    from oneshot.data.synthetic_signatures import make_signature_gallery

    return make_signature_gallery(tmp_path_factory.mktemp("sig") / "gallery", n_writers=10, genuine=4, forged=2, size=24)


def _end_to_end(tmp_path: Path, data: Path, train_args=(), query: Path | None = None) -> dict:
    run_dir, store, index = tmp_path / "run", tmp_path / "store.parquet", tmp_path / "store.faiss"
    trained = ok(run("train", "--data", data, "--out", run_dir, *FEW_STEPS, *train_args)).output
    assert "recipe inferred" in trained or "recipe given" in trained
    assert "verification threshold" in trained
    model = run_dir / "model.safetensors"
    ok(run("embed", query or data, "--out", store, "--model", model))
    report = json.loads(ok(run("eval", store, "--episodes", "20")).output.split("\nWARNING")[0])
    ok(run("index", "build", store, "--out", index))
    answered = ok(run("identify", query or data, "--index", index, "--model", model))
    assert "threshold:" in answered.stderr and "calibrated on the validation split" in answered.stderr
    clustered = ok(run("cluster", store)).output
    assert "ARI" in clustered
    return {"report": report, "model": load_model(model), "train_output": trained}


def test_mnist_idx_files_end_to_end(tmp_path, mnist_dir):
    found = _end_to_end(tmp_path, mnist_dir, ("--val-split", "images"),
                        query=mnist_dir / "t10k-images-idx3-ubyte.gz")
    model, report = found["model"], found["report"]
    assert model.recipe.kind == "handwriting" and model.recipe.channels == 1
    assert "of classes also trained on" in model.info["validation"]
    assert report["oneshot"]["n_way"] == 10  # 10 digits: 20-way asked, N follows the classes
    assert "accuracy" in report["raw_pixels"]["oneshot"]
    assert "disjoint" in report["verification"]["threshold_calibrated_on"]


def test_colour_gallery_end_to_end(tmp_path, colour_gallery):
    found = _end_to_end(tmp_path, colour_gallery)
    model = found["model"]
    assert model.recipe.kind == "photo" and model.recipe.channels == 3 and len(model.recipe.mean) == 3
    assert model.backbone.features[0][0].in_channels == 3
    assert model.info["train_config"]["augment"]["brightness"] > 0  # the photo preset
    assert model.info["train_config"]["rotations"] is False
    assert "held-out classes" in model.info["validation"]
    assert model.info["thresholds"]["unknown"]["value"] is not None
    report = found["report"]
    assert report["oneshot"]["n_way"] == 10 and "oneshot" in report["raw_pixels"]


def test_forgery_gallery_end_to_end(tmp_path, signature_gallery):
    found = _end_to_end(tmp_path, signature_gallery)
    report = found["report"]
    assert 0.0 <= report["forgery"]["eer"] <= 1.0 and report["forgery"]["n_forgeries"] == 20
    assert "writers disjoint" in report["forgery"]["threshold_calibrated_on"]
    assert report["oneshot"]["n_way"] == 10  # writers, never forgeries as classes
    rule = found["model"].info["thresholds"]["verification"]["rule"]
    assert "forgery" in rule
    height, width = found["model"].recipe.shape  # three letters side by side: a wide canvas end to end
    assert height == 28 and width >= 2 * height


def test_forgery_layout_is_recognised(signature_gallery):
    from oneshot.data.source import open_source

    table = open_source(signature_gallery).table
    assert set(table["label"]) == {f"writer{w:03d}" for w in range(10)}
    assert int(table["forged"].sum()) == 20 and (table["group"] == "").all()


def test_rotations_refused_for_photos(tmp_path, colour_gallery):
    result = run("train", "--data", colour_gallery, "--out", tmp_path / "r", "--rotations", *FEW_STEPS)
    assert result.exit_code == 1 and "handwriting only" in result.output
    result = run("train", "--data", colour_gallery, "--out", tmp_path / "m", "--reflections", *FEW_STEPS)
    assert result.exit_code == 1 and "handwriting only" in result.output and "--reflections" in result.output


def test_reflections_reach_the_training_set(tmp_path, mnist_dir, monkeypatch):
    import oneshot.pipelines.jobs.train as train_job

    made, original = [], train_job.training_sets

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(train_job, "training_sets", recording)
    out = tmp_path / "mirrored"
    ok(run("train", "--data", mnist_dir, "--val-split", "images", "--out", out, "--rotations", "--reflections",
           *FEW_STEPS))
    train_set, val_set = made[0]
    assert train_set.copies == 8 and val_set.copies == 1  # validation stays on the real classes
    assert load_model(out).info["train_config"]["reflections"] is True


def test_init_from_shipped_model_adapts_first_layer_to_colour(tmp_path, colour_gallery):
    out = tmp_path / "ft"
    ok(run("train", "--data", colour_gallery, "--out", out, "--init", "default", "--size", "28", *FEW_STEPS))
    model = load_model(out)
    assert model.recipe.channels == 3 and model.info["init"] == "default"


def test_init_refuses_a_different_architecture(tmp_path, colour_gallery):
    result = run("train", "--data", colour_gallery, "--out", tmp_path / "bad", "--init", "default", "--dim", "16",
                 *FEW_STEPS)
    assert result.exit_code == 1 and "cannot start from" in result.output


def test_handwriting_gallery_starts_from_the_shipped_model_and_keeps_it_when_training_does_worse(tmp_path, mnist_dir):
    import pandas as pd

    out = tmp_path / "run"
    trained = ok(run("train", "--data", mnist_dir, "--out", out, "--val-split", "images", *FEW_STEPS))
    assert "start from the shipped handwriting model" in trained.output
    model = load_model(out / "model.safetensors")
    assert model.info["init"] == "default" and model.info["train_config"]["lr"] == pytest.approx(5e-4)
    history = pd.read_csv(out / "history.csv")
    assert history["step"].iloc[0] == 0  # the starting model was validated as a candidate
    assert "training images (AdaBN" in model.info["batchnorm_recalibrated_on"]
    best = history.loc[history["val_accuracy"].idxmax(), "step"]
    assert model.info["step"] == best  # the kept model is the best validated one, step 0 included
    scratch = ok(run("train", "--data", mnist_dir, "--out", tmp_path / "scratch", "--val-split", "images",
                     "--init", "none", *FEW_STEPS))
    assert "from scratch (--init none)" in scratch.output
    assert load_model(tmp_path / "scratch" / "model.safetensors").info["init"] is None


def test_handwriting_gallery_takes_the_default_architecture_or_the_shipped_model_with_the_one_named(tmp_path,
                                                                                                  mnist_dir):
    default = load_model("default")
    v1 = load_model("handwriting-v1")
    assert default.fingerprint != v1.fingerprint
    ok(run("train", "--data", mnist_dir, "--out", tmp_path / "d", "--val-split", "images", *FEW_STEPS))
    started = load_model(tmp_path / "d")
    assert started.info["init"] == "default" and started.info["init_fingerprint"] == default.fingerprint
    assert started.config()["backbone_options"] == default.config()["backbone_options"]
    # Naming the first model's architecture (conv4, 64 channels in every block) starts from it.
    named = ok(run("train", "--data", mnist_dir, "--out", tmp_path / "v1", "--val-split", "images",
                   "--backbone", "conv4", "--dim", "128", *FEW_STEPS))
    assert "'handwriting-v1', which has the architecture asked for" in named.output
    model = load_model(tmp_path / "v1")
    assert model.info["init"] == "handwriting-v1" and model.info["init_fingerprint"] == v1.fingerprint
    assert model.config()["backbone_options"] == v1.config()["backbone_options"]
    # --init names a model and no architecture: the run takes the model's.
    ok(run("train", "--data", mnist_dir, "--out", tmp_path / "i", "--val-split", "images", "--init", "handwriting-v1",
           *FEW_STEPS))
    assert load_model(tmp_path / "i").config()["backbone_options"] == v1.config()["backbone_options"]
    # An architecture no shipped model has: from scratch.
    other = ok(run("train", "--data", mnist_dir, "--out", tmp_path / "o", "--val-split", "images", "--dim", "16",
                   *FEW_STEPS))
    assert load_model(tmp_path / "o").info["init"] is None and "start from" not in other.output
