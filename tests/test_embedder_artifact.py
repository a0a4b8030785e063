"""Model files: safetensors + JSON sidecar round trips, fingerprints, corrupt files, atomic writes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import oneshot.embedder.artifact as artifact
from oneshot.embedder.artifact import load_model, model_fingerprint, read_model_config, save_model
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe

torch.set_num_threads(1)


def _model(head: str = "normalized", seed: int = 0) -> Embedder:
    torch.manual_seed(seed)
    model = Embedder("conv", dim=16, head=head, recipe=Recipe(size=16, threshold=100),
                     backbone_options={"channels": 8, "blocks": 2})
    with torch.no_grad():  # non-default buffers and head parameters must survive too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        if head == "siamese":
            model.head.raw_weight.normal_()
            model.head.bias.fill_(0.7)
    return model.eval()


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["normalized", "siamese"])
def test_round_trip(tmp_path, head):
    model = _model(head)
    path = save_model(model, tmp_path / "sub" / "m.safetensors", info={"seed": 3, "val_accuracy": 0.5})
    assert path == tmp_path / "sub" / "m.safetensors"
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config() == model.config()
    assert loaded.metric == model.metric and loaded.dim == 16
    assert loaded.recipe == model.recipe
    with torch.no_grad():
        assert torch.equal(loaded(_images()), model(_images()))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.fingerprint == model.fingerprint == model_fingerprint(model)
    assert loaded.info == {"seed": 3, "val_accuracy": 0.5}
    sidecar = json.loads((tmp_path / "sub" / "m.json").read_text())
    assert sidecar == read_model_config(path)
    assert sidecar["metric"] == model.metric and sidecar["model"] == json.loads(json.dumps(model.config()))
    assert {"torch", "numpy", "python", "oneshot"} <= set(sidecar["versions"])
    # a folder holding model.safetensors loads too
    save_model(model, tmp_path / "run" / "model.safetensors")
    assert load_model(tmp_path / "run").fingerprint == model.fingerprint


def test_weights_file_alone_loads(tmp_path):
    model = _model()
    path = save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "m.json").unlink()
    loaded = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(_images()), model(_images()))
    assert loaded.recipe == Recipe(size=16, threshold=100)


def test_fingerprint_follows_weights_and_config():
    model = _model()
    before = model_fingerprint(model)
    assert model_fingerprint(_model()) == before  # same weights, same fingerprint
    with torch.no_grad():
        model.head.project.weight[0, 0] += 1e-3
    assert model_fingerprint(model) != before
    with torch.no_grad():
        model.head.project.weight[0, 0] -= 1e-3
    assert model_fingerprint(model) == before
    # a buffer counts as well
    model.backbone.features[0][1].running_mean[0] += 1.0
    assert model_fingerprint(model) != before
    # and so does the recipe, with identical weights
    other = _model()
    other.recipe = Recipe(size=16, threshold=101)
    assert model_fingerprint(other) != before


@pytest.mark.parametrize("content", [b"", b"not a model at all" * 20])
def test_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_model(path)


def test_truncated_file_names_it(tmp_path):
    path = save_model(_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 64])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_model(cut)


def test_flipped_weight_bytes_are_detected(tmp_path):
    path = save_model(_model(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the last tensor's bytes; the header still parses
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="flipped.safetensors.*fingerprint"):
        load_model(bad)


def test_foreign_safetensors_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors: safetensors file without a oneshot config"):
        load_model(plain)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"oneshot": json.dumps({"format": "else"})})
    with pytest.raises(ValueError, match="other.safetensors: unsupported model format"):
        load_model(other)
    # right header, wrong tensors
    config = json.loads(json.dumps({"format": artifact.FORMAT, "format_version": 1, "model": _model().config(),
                                    "fingerprint": "0"}))
    mismatch = tmp_path / "mismatch.safetensors"
    save_file({"x": torch.zeros(2)}, str(mismatch), metadata={"oneshot": json.dumps(config)})
    with pytest.raises(ValueError, match="mismatch.safetensors: weights do not match"):
        load_model(mismatch)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_model(_model(), tmp_path / "m.pt")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:  # a half-written file, then the disk fills up
            handle.write(b"partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(artifact, "save_file", failing_save_file)
    with pytest.raises(OSError, match="no space"):
        save_model(_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_model(tmp_path, monkeypatch):
    old = _model(seed=0)
    path = save_model(old, tmp_path / "m.safetensors")
    sidecar_before = (tmp_path / "m.json").read_text()

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_file", failing_save_file)
    with pytest.raises(OSError):
        save_model(_model(seed=1), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    assert (tmp_path / "m.json").read_text() == sidecar_before
    assert load_model(path).fingerprint == model_fingerprint(old)
