"""Seeded batch augmentation: identity when off, flips, determinism, pairs, ink preservation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oneshot.data.augment import AugmentConfig, augment
from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.preprocess import Recipe

torch.set_num_threads(1)

STILL = dict(flip=0.0, rotation=0.0, translate=0.0, scale=0.0, aspect=0.0, shear=0.0, pair_noise=0.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise(n: int = 8, size: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=_gen(99))


@pytest.fixture(scope="module")
def glyphs() -> torch.Tensor:
    """16 synthetic characters, ink bright on black, cropped with a wide blank margin: (16, 1, 32, 32)."""
    raw = make_alphabets(2, 4, drawers=2, seed=0, size=48).images
    return torch.from_numpy(Recipe(size=32, crop_to_ink=True, margin=0.2).batch(list(raw)))


def test_probability_zero_is_identity():
    images = _noise()
    assert torch.equal(augment(images, AugmentConfig.off(), _gen()), images)
    assert torch.equal(augment(images, AugmentConfig(probability=0.0, rotation=45, flip=1.0), _gen()), images)


def test_zero_ranges_are_identity():
    images = _noise()
    out = augment(images, AugmentConfig(**STILL), _gen())
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_probability_one_half_keeps_some_images():
    images = _noise(64)
    out = augment(images, AugmentConfig(probability=0.5, rotation=30.0), _gen())
    kept = [(out[i] - images[i]).abs().max().item() < 1e-5 for i in range(64)]
    assert 10 < sum(kept) < 54


def test_flips_flip():
    images = _noise()
    both = augment(images, AugmentConfig(**{**STILL, "flip": 1.0}), _gen())
    torch.testing.assert_close(both, images.flip(2, 3), atol=1e-5, rtol=0)
    # with flip=0.5 each image is one of the four flips, and all four occur
    out = augment(_noise(64), AugmentConfig(**{**STILL, "flip": 0.5}), _gen())
    seen = set()
    for i, image in enumerate(_noise(64)):
        variants = [image, image.flip(2), image.flip(1), image.flip(1, 2)]  # none, horizontal, vertical, both
        matches = [k for k, v in enumerate(variants) if torch.allclose(out[i], v, atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_same_seed_same_output(glyphs):
    config = AugmentConfig(flip=0.5, move_ink=True)
    a = augment(glyphs, config, _gen(5))
    b = augment(glyphs, config, _gen(5))
    assert torch.equal(a, b)
    c = augment(glyphs, config, _gen(6))
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, glyphs)


def test_output_shape_and_dtype(glyphs):
    out = augment(glyphs, AugmentConfig(), _gen())
    assert out.shape == glyphs.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    colour = augment(torch.rand(2, 3, 8, 8), AugmentConfig.preset("photo"), _gen())
    assert colour.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment(torch.rand(8, 8), AugmentConfig(), _gen())


def test_pairs_share_flip_and_rotation():
    base = _noise(6)
    images = torch.cat([base, base])  # pair i = rows i and 6 + i, identical images
    pair_ids = torch.arange(12) % 6
    # flips and rotations only: the two images of a pair come out identical
    config = AugmentConfig(**{**STILL, "flip": 0.5, "rotation": 40.0})
    out = augment(images, config, _gen(1), pair_ids)
    torch.testing.assert_close(out[:6], out[6:], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:6], base, atol=1e-3)
    # without pair_ids each image draws its own
    alone = augment(images, config, _gen(1))
    assert not torch.allclose(alone[:6], alone[6:], atol=1e-3)
    # the flip is shared exactly, with or without the pair noise on the rotation
    flips = augment(images, AugmentConfig(**{**STILL, "flip": 0.5}), _gen(2), pair_ids)
    for i in range(6):
        variants = [base[i], base[i].flip(2), base[i].flip(1), base[i].flip(1, 2)]
        kinds = [[k for k, v in enumerate(variants) if torch.allclose(flips[j], v, atol=1e-5)] for j in (i, 6 + i)]
        assert kinds[0] == kinds[1] and len(kinds[0]) == 1
    noisy = augment(images, AugmentConfig(**{**STILL, "rotation": 40.0, "pair_noise": 2.0}), _gen(1), pair_ids)
    difference = (noisy[:6] - noisy[6:]).abs().amax(dim=(1, 2, 3))
    assert (difference > 0).all()  # the rotation noise makes the twins differ a little ...
    assert ((noisy[:6] - noisy[6:]).abs().mean() < 0.5 * (noisy[:6] - alone[6:]).abs().mean())  # ... not a lot


def test_small_transforms_roughly_keep_ink_mass(glyphs):
    config = AugmentConfig(rotation=8.0, translate=0.03, scale=0.05, aspect=0.05, shear=0.05)
    before = glyphs.sum(dim=(1, 2, 3))
    for seed in range(3):
        after = augment(glyphs, config, _gen(seed)).sum(dim=(1, 2, 3))
        ratio = after / before
        assert ((ratio > 0.75) & (ratio < 1.3)).all(), ratio
        assert abs(ratio.mean().item() - 1) < 0.1


def test_move_ink_keeps_ink_on_canvas():
    # small glyphs near each corner and in the middle of a 32 x 32 canvas
    images = torch.zeros(5, 1, 32, 32)
    for i, (r, c) in enumerate([(0, 0), (0, 24), (24, 0), (24, 24), (12, 12)]):
        images[i, 0, r : r + 8, c : c + 8] = 1.0
        images[i, 0, r + 2 : r + 6, c + 2 : c + 6] = 0.0  # a hollow square
    config = AugmentConfig(**{**STILL, "move_ink": True})
    centres = []
    for seed in range(20):
        out = augment(images, config, _gen(seed))
        mass = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
        assert (mass > 0.999).all() and (mass < 1.001).all(), mass  # nothing pushed off the canvas
        rows = out[:, 0].amax(dim=2) > 0.2
        cols = out[:, 0].amax(dim=1) > 0.2
        for r, c in zip(rows, cols):
            found_rows, found_cols = torch.nonzero(r).flatten(), torch.nonzero(c).flatten()
            assert 7 <= len(found_rows) <= 10 and 7 <= len(found_cols) <= 10  # moved, not resized
            centres.append((found_rows.float().mean().item(), found_cols.float().mean().item()))
    centres = np.array(centres)
    assert centres[:, 0].std() > 4 and centres[:, 1].std() > 4  # the ink lands all over the canvas
    assert centres.min() >= 3.5 and centres.max() <= 27.5


def test_config_dict_round_trip():
    config = AugmentConfig(flip=0.3, move_ink=True)
    assert AugmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown augmentation keys \['rotate'\]"):
        AugmentConfig.from_dict({"rotate": 5})


def test_wide_canvas_rotates_like_a_square_one(glyphs):
    """Geometry is drawn in pixels: a glyph padded into a 3x wider canvas turns exactly as on its square."""
    size = glyphs.shape[-1]
    wide = torch.zeros(glyphs.shape[0], 1, size, 3 * size)
    wide[..., size:2 * size] = glyphs
    config = AugmentConfig(rotation=30.0, translate=0.0, scale=0.1, aspect=0.1, shear=0.2)
    square_out = augment(glyphs, config, _gen(3))
    wide_out = augment(wide, config, _gen(3))
    assert torch.allclose(wide_out[..., size:2 * size], square_out, atol=1e-5)


def test_stroke_width_blends_dilation_and_erosion():
    from oneshot.data.augment import change_stroke_width

    line = torch.zeros(3, 1, 9, 9)
    line[:, 0, 4, 2:7] = 1.0  # a one-pixel horizontal stroke
    thick = torch.zeros(1, 1, 9, 9)
    thick[0, 0, 3:6, 2:7] = 1.0
    out = change_stroke_width(torch.cat([line[:2], thick]), torch.tensor([0.0, 1.0, -1.0]))
    assert torch.equal(out[0], line[0])                                    # zero width: unchanged
    assert torch.equal(out[1], torch.nn.functional.max_pool2d(line[1:2], 3, 1, 1)[0])  # full dilation
    assert out[1].sum() == 21                                              # 3 rows x 7 columns
    assert out[2].sum() == 3 and out[2, 0, 4, 3:6].eq(1).all()             # full erosion keeps the core
    half = change_stroke_width(line[:1], torch.tensor([0.5]))
    assert half.sum() == pytest.approx(5 + 0.5 * 16)


def test_stroke_and_elastic_are_seeded_and_draw_after_the_geometry(glyphs):
    from oneshot.data.augment import _uniform, change_stroke_width

    geometry = AugmentConfig(rotation=8.0, shear=0.1)
    plain = augment(glyphs, geometry, _gen(4))
    stroked = augment(glyphs, AugmentConfig(rotation=8.0, shear=0.1, stroke=0.6), _gen(4))
    # the same geometry as without the option, then the stroke width drawn next from the stream
    generator = _gen(4)
    assert torch.equal(augment(glyphs, geometry, generator), plain)
    width = _uniform(len(glyphs), 0.6, generator)
    assert torch.allclose(stroked, change_stroke_width(plain, width))
    config = AugmentConfig(**{**STILL, "elastic": 1.5})
    assert torch.equal(augment(glyphs, config, _gen(2)), augment(glyphs, config, _gen(2)))
    assert not torch.equal(augment(glyphs, config, _gen(2)), augment(glyphs, config, _gen(3)))


def test_elastic_warp_moves_ink_a_little_and_keeps_it(glyphs):
    out = augment(glyphs, AugmentConfig(**{**STILL, "elastic": 1.5}), _gen(1))
    assert not torch.allclose(out, glyphs)
    mass_in, mass_out = glyphs.sum(dim=(1, 2, 3)), out.sum(dim=(1, 2, 3))
    assert torch.allclose(mass_out, mass_in, rtol=0.25)  # a warp stretches locally; the ink stays
    coords = torch.arange(32, dtype=torch.float32)

    def centre(images):  # ink centre of mass, (B, 2) in pixels
        plane = images[:, 0]
        total = plane.sum(dim=(1, 2))
        return torch.stack([(plane.sum(1) * coords).sum(1) / total, (plane.sum(2) * coords).sum(1) / total], dim=1)

    assert (centre(out) - centre(glyphs)).abs().max() <= 1.5 + 0.1  # no point moves more than 1.5 pixels
    untouched = augment(glyphs, AugmentConfig(**{**STILL, "elastic": 1.5, "probability": 0.5}), _gen(1))
    assert (untouched == glyphs).all(dim=(1, 2, 3)).any()  # images the draw leaves alone stay exact


def test_elastic_and_stroke_options_are_checked():
    with pytest.raises(ValueError, match="elastic_cells"):
        AugmentConfig(elastic=1.0, elastic_cells=1)
    with pytest.raises(ValueError, match="non-negative"):
        AugmentConfig(stroke=-0.5)
