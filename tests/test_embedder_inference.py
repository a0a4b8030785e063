"""Tests for embedder.inference: folded BatchNorm, channels_last and frozen graphs match eager."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from oneshot.embedder.artifact import load_model
from oneshot.embedder.inference import InferenceModel, choose_batch_size, fold_batchnorm, fold_conv_bn
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _trained_like(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def test_fold_conv_bn_equals_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=False), _trained_like(nn.Sequential(nn.BatchNorm2d(5)))[0]
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_replaces_every_conv_bn_pair():
    model = _trained_like(Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2}))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


@pytest.mark.parametrize("backbone,options", [("conv4", {}), ("resnet-small", {"widths": (8, 16)})])
@pytest.mark.parametrize("mode", ["eager", "script"])
def test_inference_model_matches_eager(backbone, options, mode):
    torch.manual_seed(1)
    model = _trained_like(Embedder(backbone, dim=16, recipe=Recipe(size=28), backbone_options=options))
    x = np.random.default_rng(0).random((37, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    engine = InferenceModel(model, mode=mode)
    got = engine(x)
    assert engine.mode == mode
    assert got.shape == expected.shape and got.dtype == np.float32
    assert _cosines(got, expected).min() >= 0.9999
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_shipped_model_vectors_match_eager_on_blank_heavy_images():
    model = load_model()
    rng = np.random.default_rng(2)
    x = np.zeros((64, 1, 28, 28), dtype=np.float32)  # mostly blank, like digits: denormals get flushed
    x[:, :, 8:20, 10:14] = rng.random((64, 1, 12, 4), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    got = InferenceModel(model).embed_tensor(torch.from_numpy(x)).numpy()
    assert _cosines(got, expected).min() >= 0.9999


def test_tta_matches_the_eager_tta_path():
    from oneshot.embedder.encode import embed_tensor

    model = _trained_like(Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2}))
    x = np.random.default_rng(3).random((9, 1, 16, 16), dtype=np.float32)
    expected = embed_tensor(model, torch.from_numpy(x), tta=True).numpy()
    assert _cosines(InferenceModel(model)(x, tta=True), expected).min() >= 0.9999


def test_unknown_mode_is_refused():
    model = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
    with pytest.raises(ValueError, match="mode"):
        InferenceModel(model, mode="fast")


def test_batch_size_depends_on_device_and_input_size():
    small = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
    large = Embedder("conv", dim=8, recipe=Recipe(size=105), backbone_options={"channels": 4, "blocks": 2})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_batch_size(small, cpu) >= choose_batch_size(large, cpu) >= 32
    assert choose_batch_size(small, cuda) >= choose_batch_size(small, cpu)


def test_runs_on_the_models_device_without_assuming_cuda():
    model = Embedder("conv", dim=8, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
    engine = InferenceModel(model)
    assert engine.device == next(model.parameters()).device
    assert engine(np.zeros((2, 1, 16, 16), np.float32)).shape == (2, 8)


@pytest.mark.parametrize("recipe", [Recipe(size=16, kind="photo", channels=3), Recipe(size=16, width=48, crop_to_ink=True)],
                         ids=["colour", "wide"])
def test_colour_and_wide_inputs_get_the_frozen_graph_and_the_eager_vectors(recipe):
    model = _trained_like(Embedder("conv4", 32, "normalized", recipe)).eval()
    inference = InferenceModel(model, mode="auto")
    assert inference.mode == "script"  # traced with the recipe's channels and canvas, not a square grey one
    batch = torch.rand(6, recipe.channels, *recipe.shape)
    with torch.no_grad():
        eager = model(batch).numpy()
    assert _cosines(inference(batch.numpy()), eager).min() >= 0.9999


@pytest.mark.parametrize("tta", [False, True])
def test_bfloat16_vectors_are_float32_unit_vectors_close_to_float32s(tta):
    """The shipped model under autocast: float32 out, unit length, within cosine 0.999 of float32's
    (0.99996 at worst over the 13,180 evaluation images when this was written)."""
    model = load_model()
    rng = np.random.default_rng(3)
    x = np.zeros((48, 1, 28, 28), dtype=np.float32)
    x[:, :, 6:22, 9:19] = rng.random((48, 1, 16, 10), dtype=np.float32) > 0.6
    full = InferenceModel(model)(x, tta=tta)
    engine = InferenceModel(model, precision="bfloat16")
    half = engine(x, tta=tta)
    assert engine.precision == "bfloat16" and engine.mode == "eager"
    assert half.dtype == np.float32 and half.shape == full.shape
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    assert _cosines(half, full).min() >= 0.999
    assert not np.array_equal(half, full)  # it did run in bfloat16


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        InferenceModel(load_model(), precision="float16")


def test_every_spelling_of_a_precision_means_one_thing():
    from oneshot.embedder.precision import check_precision, training_precision

    assert [check_precision(p) for p in ("float32", "fp32", "bfloat16", "bf16")] == ["float32"] * 2 + ["bfloat16"] * 2
    assert [training_precision(p) for p in ("float32", "fp32", "bfloat16", "bf16")] == ["fp32"] * 2 + ["bf16"] * 2
    assert InferenceModel(load_model(), mode="eager", precision="bf16").precision == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision(["bf16"])
