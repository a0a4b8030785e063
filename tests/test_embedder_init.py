"""Starting from another model: BatchNorm statistics re-estimated on the new gallery (AdaBN)."""
from __future__ import annotations

import numpy as np
import torch

from oneshot.embedder.init import RECALIBRATION_IMAGES, recalibrate_batchnorm
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe


def _model() -> Embedder:
    torch.manual_seed(0)
    return Embedder("conv", 16, "normalized", Recipe(size=16), {"channels": 8, "blocks": 2}).eval()


def test_statistics_are_those_of_the_new_images_and_weights_do_not_move():
    model = _model()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    images = (np.random.default_rng(0).random((64, 1, 16, 16), dtype=np.float32) * 3 + 2)  # far from the defaults
    assert recalibrate_batchnorm(model, images, batch_size=16) == 64
    first_conv, first_bn = model.backbone.features[0][0], model.backbone.features[0][1]
    with torch.no_grad():
        activations = first_conv(torch.from_numpy(images))
    assert torch.allclose(first_bn.running_mean, activations.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(first_bn.running_var, activations.var(dim=(0, 2, 3)), rtol=0.05)
    assert first_bn.momentum == 0.1 and not model.training
    for name, value in model.state_dict().items():
        if name in weights:
            assert torch.equal(value, weights[name]), name


def test_a_large_gallery_is_sampled_with_the_seed_and_one_image_changes_nothing():
    images = np.random.default_rng(1).random((RECALIBRATION_IMAGES + 100, 1, 16, 16), dtype=np.float32)
    a, b = _model(), _model()
    assert recalibrate_batchnorm(a, images, seed=3) == RECALIBRATION_IMAGES
    recalibrate_batchnorm(b, images, seed=3)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    untouched = _model()
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    assert recalibrate_batchnorm(untouched, images[:1]) == 0
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())
