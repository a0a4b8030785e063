"""The preprocessing recipe on small synthetic images whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from oneshot.embedder.preprocess import Recipe


def _paper(height: int, width: int) -> np.ndarray:
    return np.full((height, width), 255, dtype=np.uint8)


def _ink_box(image: np.ndarray, level: float = 0.5):
    rows = np.flatnonzero(image.max(axis=1) > level)
    cols = np.flatnonzero(image.max(axis=0) > level)
    return rows[0], rows[-1], cols[0], cols[-1]


def test_auto_inverts_dark_on_white():
    image = _paper(32, 32)
    image[8:24, 8:24] = 0  # a black square on white paper
    out = Recipe(size=16)(image)
    assert out.shape == (16, 16) and out.dtype == np.float32
    assert out[4:12, 4:12].min() == pytest.approx(1.0)  # the ink is bright
    assert out[:3].max() == 0 and out[:, :3].max() == 0  # the paper is black
    # already light-on-dark: "auto" leaves it alone
    light = 255 - image
    np.testing.assert_array_equal(Recipe(size=16)(light), out)
    # forced choices
    np.testing.assert_allclose(Recipe(size=16, invert=False)(image), 1 - out, atol=1e-6)
    np.testing.assert_allclose(Recipe(size=16, invert=True)(light), 1 - out, atol=1e-6)


def test_threshold_binarises():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(20, 20)).astype(np.uint8)
    image[0, :] = image[-1, :] = image[:, 0] = image[:, -1] = 255  # white border: dark ink on paper
    recipe = Recipe(size=20, threshold=128)
    ink = recipe.ink(image)
    np.testing.assert_array_equal(ink, (image < 128).astype(np.float32))  # dark pixels are ink
    out = recipe(image)  # same size: no resampling
    assert set(np.unique(out).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, ink)
    # without inversion the bright pixels are ink
    np.testing.assert_array_equal(Recipe(size=20, threshold=128, invert=False).ink(image),
                                  (image >= 128).astype(np.float32))


def test_aspect_preserving_resize_pads_and_centres():
    wide = np.zeros((20, 60), dtype=np.uint8)
    wide[:] = 255  # a full light-on-dark rectangle, 3 times wider than tall
    out = Recipe(size=30, invert=False)(wide)
    top, bottom, left, right = _ink_box(out)
    assert (left, right) == (0, 29)  # the long side fills the canvas
    assert (top, bottom) == (10, 19)  # 60 -> 30 halves 20 -> 10 rows, centred
    assert out[10:20].min() == pytest.approx(1.0)
    assert out[:10].max() == 0 and out[20:].max() == 0
    # and a tall one stays tall
    tall = Recipe(size=30, invert=False)(np.ascontiguousarray(wide.T))
    np.testing.assert_array_equal(tall, out.T)


def test_small_image_is_enlarged_to_fill():
    small = np.zeros((4, 8), dtype=np.uint8)
    small[1:3, 2:6] = 255
    out = Recipe(size=16, invert=False)(small)
    assert out.shape == (16, 16)
    top, bottom, left, right = _ink_box(out)
    assert bottom - top < right - left  # still wider than tall
    assert abs((top + bottom) / 2 - 7.5) <= 1 and abs((left + right) / 2 - 7.5) <= 1


def test_crop_to_ink_enlarges_a_small_glyph():
    image = _paper(64, 64)
    image[5:13, 40:46] = 0  # a small 8x6 glyph near a corner
    plain = Recipe(size=32)(image)
    cropped = Recipe(size=32, crop_to_ink=True, margin=0.1)(image)
    assert (cropped > 0.5).sum() > 10 * (plain > 0.5).sum()
    top, bottom, left, right = _ink_box(cropped)
    # the ink fills the inner 32 - 2 * round(3.2) = 26 pixels along its long side, centred
    assert bottom - top + 1 == 26
    assert (top, 31 - bottom) == (3, 3)
    assert abs((left + right) / 2 - 15.5) <= 0.5
    assert right - left + 1 < 26  # the aspect is kept (6 wide vs 8 tall)
    # a blank page stays blank instead of failing
    assert Recipe(size=32, crop_to_ink=True)(_paper(40, 40)).max() == 0


def test_colour_input_equals_gray():
    gray = _paper(24, 24)
    gray[6:18, 10:14] = 30
    colour = np.repeat(gray[:, :, None], 3, axis=2)
    recipe = Recipe(size=16)
    np.testing.assert_allclose(recipe(colour), recipe(gray), atol=1e-6)
    # a coloured stroke on white is still found as ink
    red = np.full((24, 24, 3), 255, dtype=np.uint8)
    red[6:18, 10:14] = (0, 0, 255)  # BGR red
    assert recipe(red)[6:10, 7:9].min() > 0.5


def test_bad_images_raise():
    with pytest.raises(ValueError, match="expected an image"):
        Recipe()(np.zeros((0, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected an image"):
        Recipe()(np.zeros(10, dtype=np.uint8))


def test_dict_round_trip_and_unknown_keys():
    recipe = Recipe(size=20, threshold=100, invert=True, crop_to_ink=True, margin=0.2)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match=r"unknown recipe keys \['sise'\]"):
        Recipe.from_dict({"sise": 20})
    with pytest.raises(ValueError, match="size"):
        Recipe(size=4)
    with pytest.raises(ValueError, match="threshold"):
        Recipe(threshold=300)
    with pytest.raises(ValueError, match="invert"):
        Recipe(invert="yes")
    with pytest.raises(ValueError, match="margin"):
        Recipe(margin=0.5)


def test_batch_shape_dtype_range():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=shape).astype(np.uint8) for shape in [(30, 30), (12, 40), (50, 20, 3)]]
    out = Recipe(size=24).batch(images)
    assert out.shape == (3, 1, 24, 24)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert out.min() >= 0 and out.max() <= 1
    for i, image in enumerate(images):
        np.testing.assert_array_equal(out[i, 0], Recipe(size=24)(image))
    assert Recipe(size=24).batch([]).shape == (0, 1, 24, 24)
