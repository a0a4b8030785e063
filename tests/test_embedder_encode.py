"""Batch encoding: raw vs preprocessed input, batch-size invariance, single images, TTA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.encode import embed_tensor, encode, tta_views
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def raw_images() -> list[np.ndarray]:
    return list(make_alphabets(1, 4, drawers=3, seed=0, size=40).images)  # 12 uint8 (40, 40), dark on white


def _model(head: str = "normalized") -> Embedder:
    torch.manual_seed(0)
    return Embedder("conv", dim=16, head=head, recipe=Recipe(size=16),
                    backbone_options={"channels": 8, "blocks": 2})


def test_raw_equals_preprocessed(raw_images):
    model = _model()
    from_raw = encode(model, raw_images, batch_size=5)
    preprocessed = model.recipe.batch(raw_images)
    from_floats = encode(model, preprocessed, batch_size=5)
    np.testing.assert_array_equal(from_raw, from_floats)
    # the same as running the network by hand in eval mode
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocessed)).numpy()
    np.testing.assert_allclose(from_raw, expected, atol=1e-6)
    # a uint8 stack (N, H, W) is a batch of raw images too
    np.testing.assert_array_equal(encode(model, np.stack(raw_images), batch_size=5), from_raw)


def test_encode_switches_to_eval(raw_images):
    model = _model().train()
    out = encode(model, raw_images[:3])
    assert not model.training
    np.testing.assert_array_equal(out, encode(model, raw_images[:3]))  # BN uses running stats: repeatable


@pytest.mark.parametrize("head", ["normalized", "siamese"])
def test_batch_size_does_not_change_results(raw_images, head):
    model = _model(head)
    reference = encode(model, raw_images, batch_size=len(raw_images))
    for batch_size in (1, 4, 5, 100):
        np.testing.assert_allclose(encode(model, raw_images, batch_size=batch_size), reference, atol=1e-6)


def test_single_image_gives_one_vector(raw_images):
    model = _model()
    vector = encode(model, raw_images[2])
    assert vector.shape == (16,)
    np.testing.assert_allclose(vector, encode(model, raw_images)[2], atol=1e-6)
    colour = np.repeat(raw_images[2][:, :, None], 3, axis=2)
    np.testing.assert_allclose(encode(model, colour), vector, atol=1e-6)


def test_output_float32_c_contiguous(raw_images):
    model = _model()
    out = encode(model, raw_images, batch_size=5)
    assert out.shape == (12, 16)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    empty = encode(model, [])
    assert empty.shape == (0, 16) and empty.dtype == np.float32


def test_tta_views_are_one_pixel_shifts():
    batch = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    views = tta_views(batch)
    assert len(views) == 5
    assert torch.equal(views[0], batch)
    for view in views[1:]:
        assert not torch.equal(view, batch)
        assert torch.equal(view.sum(), batch.sum())  # rolls move pixels, never lose them
    assert torch.equal(views[1][0, 0, :-1], batch[0, 0, 1:])  # shifted up by one row


def test_tta_normalised_for_cosine(raw_images):
    model = _model().eval()
    batch = torch.from_numpy(model.recipe.batch(raw_images))
    with torch.no_grad():  # centre the projection on these images, so shifted views point different ways
        features = torch.cat([model.backbone(v) for v in tta_views(batch)])
        model.head.project.bias.sub_(model.head.project(features).mean(0))
    out = encode(model, raw_images, tta=True)
    assert out.shape == (12, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    plain = encode(model, raw_images)
    assert not np.allclose(out, plain)
    # it is the normalised mean of the views' embeddings
    with torch.no_grad():
        mean = torch.stack([model(v) for v in tta_views(batch)]).mean(0)
    np.testing.assert_allclose(out, torch.nn.functional.normalize(mean, dim=1).numpy(), atol=1e-6)
    assert (torch.linalg.norm(mean, dim=1) < 0.99).all()  # so the normalisation did something


def test_tta_siamese_is_plain_mean(raw_images):
    model = _model("siamese").eval()
    batch = torch.from_numpy(model.recipe.batch(raw_images))
    with torch.no_grad():
        mean = torch.stack([model(v) for v in tta_views(batch)]).mean(0)
    np.testing.assert_allclose(embed_tensor(model, batch, tta=True).numpy(), mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(encode(model, raw_images, tta=True), mean.numpy(), atol=1e-6)
