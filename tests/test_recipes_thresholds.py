"""Recipe inference from pixel statistics, validation hold-outs, and threshold provenance."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.recipes import infer_recipe, with_normalisation
from oneshot.errors import InvalidInputError


def _ink_images(n=20, seed=0):
    from oneshot.data.synthetic import make_alphabets

    return list(make_alphabets(1, n, drawers=1, size=48, seed=seed).images)


def _photos(colour: bool, n=20):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        base = cv2.resize(rng.uniform(0, 255, (6, 6, 3)), (48, 48), interpolation=cv2.INTER_CUBIC)
        image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        out.append(image if colour else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return out


def test_ink_on_paper_is_handwriting_even_stored_as_three_channels():
    ink = _ink_images()
    assert infer_recipe(ink)[0].kind == "handwriting"
    as_bgr = [cv2.cvtColor(i, cv2.COLOR_GRAY2BGR) for i in ink]
    recipe, reason = infer_recipe(as_bgr)
    assert recipe.kind == "handwriting" and recipe.channels == 1 and "background level" in reason


def test_photos_are_photos_and_colour_only_when_they_carry_chroma():
    colour, _ = infer_recipe(_photos(True))
    assert (colour.kind, colour.channels) == ("photo", 3)
    grey_as_bgr = [cv2.cvtColor(i, cv2.COLOR_GRAY2BGR) for i in _photos(False)]
    grey, _ = infer_recipe(grey_as_bgr)
    assert (grey.kind, grey.channels) == ("photo", 1)  # three channels stored, no colour in them


def test_photo_recipe_normalises_per_channel_and_round_trips():
    photos = _photos(True)
    recipe = with_normalisation(Recipe(size=32, kind="photo", channels=3), photos)
    batch = recipe.batch(photos)
    assert batch.shape == (20, 3, 32, 32)
    assert np.allclose(batch.mean(axis=(0, 2, 3)), 0, atol=1e-3)
    assert np.allclose(batch.std(axis=(0, 2, 3)), 1, atol=1e-2)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_handwriting_recipe_dict_is_unchanged_for_old_models():
    assert set(Recipe(size=28, crop_to_ink=True).to_dict()) == {"size", "threshold", "invert", "crop_to_ink", "margin"}
    with pytest.raises(InvalidInputError):
        Recipe(kind="handwriting", channels=3)


def _table(n_classes=10, per_class=5, groups=None):
    labels = np.repeat([f"c{i}" for i in range(n_classes)], per_class)
    group = [groups[i % len(groups)] for i in range(n_classes) for _ in range(per_class)] if groups else ""
    return pd.DataFrame({"id": np.arange(len(labels)), "path": [f"p{i}" for i in range(len(labels))],
                         "label": labels, "group": group})


def test_hold_out_defaults_whole_classes_then_whole_groups_then_images():
    from oneshot.pipelines.jobs.train import hold_out

    table = _table()
    held, why = hold_out(table, seed=0)
    assert 0 < held.sum() < len(table) and "held-out classes" in why
    assert not set(table.label[held]) & set(table.label[~held])  # never trained on
    grouped = _table(20, 3, groups=["a", "b", "c", "d", "e"])
    held, why = hold_out(grouped, seed=0)
    assert "held-out groups" in why and not set(grouped.group[held]) & set(grouped.group[~held])
    held, why = hold_out(table, val_split="images", seed=0)
    assert set(table.label[held]) == set(table.label) and "also trained on" in why
    held, _ = hold_out(table, val_classes=["c1", "c2"])
    assert set(table.label[held]) == {"c1", "c2"}
    with pytest.raises(InvalidInputError):
        hold_out(_table(3), seed=0)


def test_eval_calibration_split_is_disjoint():
    from oneshot.pipelines.evaluation.evaluate import calibration_split

    labels = np.repeat(np.arange(8), 4).astype(str)
    mask, why = calibration_split(labels, seed=1)
    assert not set(labels[mask]) & set(labels[~mask]) and "disjoint" in why


def test_resolve_threshold_says_where_it_came_from():
    from oneshot.pipelines.evaluation.thresholds import resolve_threshold

    class Model:
        info = {"thresholds": {"unknown": {"value": 0.7, "calibrated_on": "held-out X", "rule": "r"},
                               "verification": {"value": None, "not_calibrated": "too few classes"}}}

    assert resolve_threshold(Model(), "unknown") == (0.7, "carried by the model, calibrated on held-out X (r)")
    assert resolve_threshold(Model(), "unknown", 0.5) == (0.5, "given on the command line")
    assert resolve_threshold(Model(), "unknown", "none")[0] is None
    value, why = resolve_threshold(Model(), "verification")
    assert value is None and "too few classes" in why


def test_shipped_model_thresholds_come_from_the_validation_alphabets():
    from oneshot.embedder.artifact import load_model

    thresholds = load_model().info["thresholds"]
    for kind in ("verification", "unknown"):
        assert 0 < thresholds[kind]["value"] < 1
        assert "Bengali" in thresholds[kind]["calibrated_on"] and "oneshot calibrate" in thresholds[kind]["command"]


def test_verify_reports_the_threshold_and_its_source(tmp_path):
    from oneshot.pipelines.cli import main

    images = _ink_images(2)
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
    out = CliRunner().invoke(main, ["verify", str(tmp_path / "0.png"), str(tmp_path / "1.png")])
    answer = json.loads(out.output)
    from oneshot.embedder.artifact import load_model

    stored = load_model().info["thresholds"]["verification"]["value"]
    assert answer["threshold"] == stored and "Bengali" in answer["threshold_source"]
    assert answer["same"] == (answer["score"] >= stored)
    given = json.loads(CliRunner().invoke(main, ["verify", str(tmp_path / "0.png"), str(tmp_path / "0.png"),
                                                 "--threshold", "0.5"]).output)
    assert given["same"] is True and given["threshold_source"] == "given on the command line"


def _wide_ink(n=12, letters=3, seed=0):
    """Signature-like images: ``letters`` synthetic characters side by side, dark ink on white."""
    glyphs = _ink_images(n * letters, seed)
    return [np.concatenate(glyphs[i * letters:(i + 1) * letters], axis=1) for i in range(n)]


def test_canvas_follows_the_inks_shape():
    from oneshot.embedder.recipes import MAX_ASPECT, with_canvas

    square = Recipe(size=28, crop_to_ink=True)
    assert with_canvas(square, _ink_images()) == (square, "")
    wide, note = with_canvas(square, _wide_ink())
    assert wide.shape[0] == 28 and 28 * 1.5 < wide.shape[1] <= 28 * MAX_ASPECT and wide.shape[1] % 4 == 0
    assert "canvas 28x" in note and wide.to_dict()["width"] == wide.shape[1]
    tall, _ = with_canvas(square, [image.T for image in _wide_ink()])
    assert tall.shape == wide.shape[::-1]
    very_wide, _ = with_canvas(square, _wide_ink(letters=8))
    assert very_wide.shape == (28, int(28 * MAX_ASPECT))
    photo = Recipe(size=32, kind="photo")
    assert with_canvas(photo, _wide_ink()) == (photo, "")


def test_wide_canvas_keeps_the_ink_large():
    """A signature on a square canvas keeps a few rows of ink; on its own canvas it fills the height."""
    image = _wide_ink(1)[0]
    square = Recipe(size=28, crop_to_ink=True)(image)
    wide = Recipe(size=28, crop_to_ink=True, width=84)(image)
    assert wide.shape == (28, 84)
    ink_rows = lambda canvas: int((canvas.max(axis=1) > 0.2).sum())  # noqa: E731
    assert ink_rows(wide) >= 2 * ink_rows(square)
    assert ink_rows(wide) >= 20  # 28 less the 10% margins
    photo = Recipe(size=16, kind="photo", width=32)(np.full((40, 40), 128, np.uint8))
    assert photo.shape == (1, 16, 32)
    with pytest.raises(InvalidInputError, match="width"):
        Recipe(width=4)


def test_gallery_step_budget_follows_the_canvas_area():
    from oneshot.pipelines.jobs.train import GALLERY_DEFAULTS, gallery_defaults

    assert gallery_defaults(Recipe(size=28, crop_to_ink=True))["steps"] == GALLERY_DEFAULTS["steps"]
    assert gallery_defaults(Recipe(size=32, kind="photo", channels=3))["steps"] == GALLERY_DEFAULTS["steps"]
    wide = gallery_defaults(Recipe(size=28, crop_to_ink=True, width=96))
    assert wide["steps"] == 900 and wide["steps"] % wide["val_every"] == 0  # 3,000 x 28 / 96, rounded up
    assert wide["max_seconds"] == GALLERY_DEFAULTS["max_seconds"]
