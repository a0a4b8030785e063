"""The handwriting recipe's fast path (bounding box and paper level read on uint8 grey levels, only
the crop made float) gives exactly, bit for bit, what the plain float computation gives.

The reference below is the recipe as first written: the whole image made float32, the paper level
as ``np.median`` of its float border, the ink box from float maxima. Every stored vector was
encoded through it, so the fast path must not move a single pixel.
"""
from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oneshot.data.decode import decode_image
from oneshot.embedder.preprocess import Recipe, border_pixels, paper_level


def reference(recipe: Recipe, image: np.ndarray) -> np.ndarray:
    """The handwriting recipe on a float32 image throughout: uint8 (H, W[, 3]) -> float32 (height, width)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    grey = image.astype(np.float32) / 255.0
    invert = recipe.invert
    if invert == "auto":
        invert = float(np.median(border_pixels(grey))) > 0.5
    if recipe.threshold is not None:
        level = recipe.threshold / 255.0
        ink = (grey >= level if not invert else grey < level).astype(np.float32)
    else:
        ink = 1.0 - grey if invert else grey
    if recipe.crop_to_ink:
        rows = np.flatnonzero(ink.max(axis=1) > 0.2)
        cols = np.flatnonzero(ink.max(axis=0) > 0.2)
        if rows.size and cols.size:
            ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    out_h, out_w = recipe.shape
    border = 2 * round(recipe.margin * min(out_h, out_w)) if recipe.crop_to_ink else 0
    height, width = ink.shape
    scale = min((out_h - border) / height, (out_w - border) / width)
    new_h = max(1, min(out_h, round(height * scale)))
    new_w = max(1, min(out_w, round(width * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(ink, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((out_h, out_w), dtype=np.float32)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return np.clip(canvas, 0.0, 1.0)


RECIPES = [
    Recipe(size=28, crop_to_ink=True),  # the shipped models' recipe
    Recipe(size=28),
    Recipe(size=20, threshold=128),
    Recipe(size=28, crop_to_ink=True, threshold=200, invert=True),
    Recipe(size=28, crop_to_ink=True, invert=False),
    Recipe(size=28, width=96, crop_to_ink=True, margin=0.0),
]


def test_paper_level_matches_the_float_median_for_every_pair_of_levels():
    levels = np.arange(256, dtype=np.uint8)
    low, high = np.meshgrid(levels, levels)
    for a, b in zip(low.ravel()[::7], high.ravel()[::7]):  # 9,363 of the 65,536 pairs, both orders among them
        image = np.array([[a, b], [b, a]], dtype=np.uint8)  # border a, b, b, a, a, b, b, a
        assert paper_level(image) == float(np.median(border_pixels(image.astype(np.float32) / 255.0)))
    odd = np.array([[3, 200, 90]], dtype=np.uint8)  # an odd border: the middle level itself
    assert paper_level(odd) == float(np.median(border_pixels(odd.astype(np.float32) / 255.0)))


def _paper_and_ink(draw_dark: bool):
    paper, ink = (st.integers(150, 255), st.integers(0, 120)) if draw_dark else (st.integers(0, 100), st.integers(130, 255))
    return paper, ink


@st.composite
def handwriting_like(draw):
    """A grey, or BGR, image of random size: paper at one level with strokes at another, and noise."""
    height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    paper_level_, ink_level = (draw(s) for s in _paper_and_ink(draw(st.booleans())))
    image = np.full((height, width), paper_level_, dtype=np.uint8)
    for _ in range(draw(st.integers(0, 4))):
        top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        image[top : top + draw(st.integers(1, 20)), left : left + draw(st.integers(1, 20))] = ink_level
    noise = draw(arrays(np.uint8, (height, width)))
    image = np.where(noise > 240, noise, image).astype(np.uint8)
    if draw(st.booleans()):
        image = np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    return image


@settings(max_examples=300, deadline=None)
@given(image=handwriting_like(), recipe=st.sampled_from(RECIPES))
def test_fast_path_equals_the_float_reference(image, recipe):
    out = recipe(image)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference(recipe, image))


@settings(max_examples=150, deadline=None)
@given(image=arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))), recipe=st.sampled_from(RECIPES))
def test_fast_path_equals_the_float_reference_on_noise(image, recipe):
    np.testing.assert_array_equal(recipe(image), reference(recipe, image))


def test_other_dtypes_take_the_float_route():
    """A float or 16-bit image (the Python API takes them) gives what the float computation gives."""
    rng = np.random.default_rng(0)
    recipe = Recipe(size=16, crop_to_ink=True)
    for image in (rng.uniform(0, 255, (30, 20)), rng.integers(0, 256, (30, 20)).astype(np.uint16)):
        image[:3] = 250  # light paper at the top
        np.testing.assert_array_equal(recipe(image), reference(recipe, image))


def test_fast_path_on_the_evaluation_alphabets(omniglot_dir):
    """Every 7th of the 13,180 evaluation PNGs, through every recipe above (all 13,180 and the 60,000
    MNIST digits were compared when the fast path was written: no pixel differed)."""
    path = omniglot_dir / "images_evaluation.zip"
    if not path.exists():
        pytest.skip(f"{path} not found (the evaluation alphabets as a folder are not read here)")
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".png"))[::7]
        images = [decode_image(archive.read(name), name) for name in names]
    assert len(images) > 1800
    for recipe in RECIPES:
        expected = np.stack([reference(recipe, image) for image in images])[:, None]
        np.testing.assert_array_equal(recipe.batch(images), expected)
