"""The map matcher: its distance against a direct ridge reconstruction, its loss against the
prototypical loss, the tapped maps, model files with a matcher, and training with one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oneshot.embedder.artifact import load_model, read_model_config, save_model
from oneshot.embedder.backbones import create_backbone
from oneshot.embedder.encode import encode, encode_with_local
from oneshot.embedder.losses import PrototypicalLoss
from oneshot.embedder.matching import MapMatcher, coordinates, match_loss
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.train import TrainConfig, embed_batch_with_local
from oneshot.errors import InvalidInputError

torch.set_num_threads(1)


def _unit_locations(n: int, locations: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, locations, dim, generator=generator, dtype=torch.float64), dim=2)


def _reconstruction_residual(query: torch.Tensor, reference: torch.Tensor, ridge: float) -> float:
    """Mean squared residual per location of the ridge reconstruction of ``query`` (L, d) from the rows of
    ``reference`` (L, d), solved directly: weights W (L, L) minimise ||Q - W S||^2 + ridge ||W||^2."""
    gram = reference @ reference.T
    weights = query @ reference.T @ torch.linalg.inv(gram + ridge * torch.eye(len(gram), dtype=gram.dtype))
    return float(((query - weights @ reference) ** 2).sum(1).mean())


@pytest.mark.parametrize("locations", [4, 9])  # fewer locations than channels (an L x L solve), then more (d x d)
def test_distances_are_the_mean_ridge_reconstruction_residual_both_ways(locations):
    matcher = MapMatcher(channels=3, dim=5).double()
    with torch.no_grad():
        matcher.log_ridge.fill_(np.log(0.3))
    queries, references = _unit_locations(3, locations, 5, seed=0), _unit_locations(2, locations, 5, seed=1)
    with torch.no_grad():
        found = matcher.distances(queries, references)
    assert found.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            both = (_reconstruction_residual(queries[i], references[j], 0.3)
                    + _reconstruction_residual(references[j], queries[i], 0.3)) / 2
            assert float(found[i, j]) == pytest.approx(both, rel=1e-9, abs=1e-12)


def test_a_map_is_closer_to_itself_than_to_another_and_distances_are_symmetric():
    matcher = MapMatcher(channels=3, dim=8).double()
    with torch.no_grad():
        matcher.log_ridge.fill_(np.log(1e-3))
    maps = _unit_locations(5, 6, 8, seed=2)  # 6 locations span a 6-d subspace of 8: itself reconstructs almost exactly
    with torch.no_grad():
        found = matcher.distances(maps, maps)
    assert torch.allclose(found, found.T)
    with torch.no_grad():  # all pairs of one batch take a shortcut (one way, transposed): the same numbers
        assert torch.allclose(found, matcher.distances(maps, maps.clone()), rtol=1e-12, atol=1e-12)
    assert found.diagonal().max() < 1e-3 < found.fill_diagonal_(1.0).min()
    assert float(found.max()) <= 1.0


def test_maps_of_different_shapes_are_refused():
    matcher = MapMatcher(channels=3, dim=4)
    with pytest.raises(InvalidInputError, match="different shapes"):
        matcher.distances(torch.zeros(2, 9, 4), torch.zeros(2, 4, 4))
    with pytest.raises(InvalidInputError, match="match dim"):
        MapMatcher(channels=3, dim=0)


@pytest.mark.parametrize("every_support", [False, True])
def test_without_the_match_the_loss_is_the_prototypical_loss(every_support):
    """With the match's scale at zero the combined distance is the global one, and the loss is
    :class:`PrototypicalLoss`'s at the matcher's global scale: the same episodes, the same logits."""
    torch.manual_seed(0)
    matcher = MapMatcher(channels=3, dim=4)
    with torch.no_grad():
        matcher.log_scale_match.fill_(-float("inf"))
    embeddings = F.normalize(torch.randn(12, 6), dim=1)
    local = F.normalize(torch.randn(12, 5, 4), dim=2)
    labels = torch.tensor([3, 1, 3, 2, 1, 2, 3, 1, 2, 3, 1, 2])  # 3 classes x 4 rows, interleaved
    reference = PrototypicalLoss(k_shot=1, scale=float(matcher.log_scale_global.detach().exp()),
                                 every_support=every_support)
    found = match_loss(matcher, embeddings, local, labels, k_shot=1, every_support=every_support)
    assert found.item() == pytest.approx(reference(embeddings, labels).item(), rel=1e-5)


def test_the_loss_sends_gradient_to_the_matcher_and_needs_enough_rows():
    torch.manual_seed(0)
    matcher = MapMatcher(channels=3, dim=4)
    maps = torch.randn(8, 3, 2, 2, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(2)
    loss = match_loss(matcher, F.normalize(torch.randn(8, 6), dim=1), matcher.local_features(maps), labels, 1, True)
    loss.backward()
    for parameter in (matcher.project.weight, matcher.log_ridge, matcher.log_scale_match, matcher.log_scale_global):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0
    with pytest.raises(InvalidInputError, match="more than k_shot=2"):
        match_loss(matcher, torch.zeros(8, 6), torch.zeros(8, 4, 4), labels, 2, False)


@pytest.mark.parametrize("name", ["conv4", "resnet-small"])
@pytest.mark.parametrize("tap, channels, side", [(2, 8, 7), (3, 6, 14), (4, 4, 28)])
def test_the_tapped_map_is_a_block_before_its_pool(name, tap, channels, side):
    backbone = create_backbone(name, widths=[4, 6, 8, 10]).eval()
    images = torch.rand(3, 1, 28, 28)
    features, tapped = backbone.forward_with_map(images, tap)
    assert torch.equal(features, backbone(images))
    assert tapped.shape == (3, channels, side, side) and backbone.map_channels(tap) == channels
    assert (tapped >= 0).all()  # after the ReLU, before the pool
    with torch.no_grad():
        assert torch.equal(backbone.forward_with_map(images)[1], backbone.forward_with_map(images, 2)[1])


def test_backbones_without_a_map_to_tap_are_refused():
    with pytest.raises(InvalidInputError, match="no map to match"):
        Embedder("koch", dim=8, recipe=Recipe(size=105), backbone_options={"hidden": 16}, match_dim=4)
    with pytest.raises(InvalidInputError, match=r"tap must be in \[2, 1\]"):
        Embedder("conv", dim=8, recipe=Recipe(size=28), backbone_options={"channels": 4, "blocks": 1}, match_dim=4)
    for tap in (1, 5, True, 2.0):
        with pytest.raises(InvalidInputError, match="tap must be in"):
            Embedder("conv4", dim=8, recipe=Recipe(size=28), backbone_options={"widths": [4, 4, 8, 8]}, match_dim=4,
                     match_tap=tap)


def test_a_model_file_with_a_matcher_round_trips_and_encodes_as_without(tmp_path):
    torch.manual_seed(0)
    plain = Embedder("conv4", dim=8, recipe=Recipe(size=28), backbone_options={"widths": [4, 4, 8, 8]})
    assert "match_dim" not in plain.config()  # files without a matcher keep their config and fingerprint
    model = Embedder("conv4", dim=8, recipe=Recipe(size=28), backbone_options={"widths": [4, 4, 8, 8]}, match_dim=5)
    save_model(model, tmp_path / "m.safetensors")
    assert read_model_config(tmp_path / "m.safetensors")["model"]["match_dim"] == 5
    again = load_model(tmp_path / "m.safetensors")
    assert again.fingerprint == model.fingerprint
    images = [np.random.default_rng(i).integers(0, 255, (40, 30), dtype=np.uint8) for i in range(5)]
    vectors, local = encode_with_local(again, images, batch_size=2)
    assert np.allclose(vectors, encode(again, images), atol=1e-6)
    assert local.shape == (5, 49, 5) and local.dtype == np.float32
    assert np.allclose(np.linalg.norm(local, axis=2), 1.0, atol=1e-5)
    with pytest.raises(InvalidInputError, match="no map matcher"):
        encode_with_local(plain, images)


def test_detached_local_features_send_no_gradient_to_the_backbone():
    torch.manual_seed(0)
    model = Embedder("resnet-small", dim=8, recipe=Recipe(size=28), backbone_options={"widths": [4, 6, 8, 10]},
                     match_dim=6)
    images = torch.rand(4, 1, 28, 28)
    for detach in (False, True):
        model.zero_grad()
        _, local = embed_batch_with_local(model, images, "fp32", detach)
        local.sum().backward()
        stem = model.backbone.stem[0].weight.grad
        assert (stem is not None and stem.abs().sum() > 0) != detach
        assert model.matcher.project.weight.grad.abs().sum() > 0  # the matcher learns either way


def test_bf16_local_features_follow_fp32():
    torch.manual_seed(0)
    model = Embedder("resnet-small", dim=8, recipe=Recipe(size=28), backbone_options={"widths": [4, 6, 8, 10]},
                     match_dim=6).eval()
    images = torch.rand(4, 1, 28, 28)
    full, full_local = embed_batch_with_local(model, images, "fp32")
    half, half_local = embed_batch_with_local(model, images, "bf16")
    assert half.dtype == half_local.dtype == torch.float32
    assert F.cosine_similarity(full, half).min() > 0.98
    assert F.cosine_similarity(full_local, half_local, dim=2).min() > 0.98


def test_match_options_are_checked():
    TrainConfig(match_dim=32)
    with pytest.raises(InvalidInputError, match="match_dim must be >= 0"):
        TrainConfig(match_dim=-1)
    with pytest.raises(InvalidInputError, match="match_dim needs the prototypical objective"):
        TrainConfig(objective="triplet", match_dim=8)
    with pytest.raises(InvalidInputError, match="match_weight must be a non-negative number"):
        TrainConfig(match_dim=8, match_weight=-1)
    with pytest.raises(InvalidInputError, match="match_dim must be an integer"):
        TrainConfig(match_dim=8.5)
    TrainConfig(match_dim=8, match_position=True)
    with pytest.raises(InvalidInputError, match="match_position, match_tap and match_detach need a map matcher"):
        TrainConfig(match_position=True)
    with pytest.raises(InvalidInputError, match="match_position, match_tap and match_detach need a map matcher"):
        TrainConfig(match_tap=3)
    with pytest.raises(InvalidInputError, match="match_tap must be an integer"):
        TrainConfig(match_dim=8, match_tap=2.5)
    with pytest.raises(InvalidInputError, match="match_detach need a map matcher"):
        TrainConfig(match_detach=True)
    with pytest.raises(InvalidInputError, match="match_position must be true or false"):
        TrainConfig(match_dim=8, match_position=1)
    with pytest.raises(InvalidInputError, match="match_position and match_tap need a map matcher"):
        Embedder("conv4", dim=8, recipe=Recipe(size=28), match_position=True)


def test_coordinates_run_from_minus_one_to_one_left_to_right_and_top_to_bottom():
    grid = coordinates(torch.zeros(2, 3, 4, 5))
    assert grid.shape == (2, 2, 4, 5)
    x, y = grid[1]
    assert torch.equal(x[0], torch.linspace(-1, 1, 5)) and torch.equal(x[:, 2], torch.zeros(4))
    assert torch.equal(y[:, 0], torch.linspace(-1, 1, 4)) and torch.equal(y[1], y[1, :1].expand(5))


def test_with_position_a_map_no_longer_matches_its_locations_moved():
    """Reconstruction ignores where a location is: a map with its locations moved (flipped) is as
    close as the map itself. With position, the moved map is farther than the map itself."""
    torch.manual_seed(0)
    maps = torch.randn(1, 16, 3, 3)  # 9 locations in 32 dimensions: their span does not hold every location
    both = torch.cat([maps, maps.flip(2, 3)])
    plain, placed = MapMatcher(16, 32), MapMatcher(16, 32, position=True)
    with torch.no_grad():
        distance = {m: m.distances(*[m.local_features(both)] * 2) for m in (plain, placed)}
    assert placed.project.in_channels == 18 and plain.project.in_channels == 16
    assert torch.allclose(distance[plain][0, 1], distance[plain][0, 0], atol=1e-5)
    assert distance[placed][0, 1] > distance[placed][0, 0] + 0.1


def test_a_model_file_with_a_placed_matcher_round_trips(tmp_path):
    torch.manual_seed(0)
    options = {"backbone_options": {"widths": [4, 4, 8, 8]}, "recipe": Recipe(size=28), "dim": 8}
    assert "match_position" not in Embedder("conv4", match_dim=5, **options).config()
    model = Embedder("conv4", match_dim=5, match_position=True, **options)
    save_model(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert read_model_config(tmp_path / "m.safetensors")["model"]["match_position"] is True
    assert again.matcher.position and again.fingerprint == model.fingerprint
    assert "match_tap" not in model.config()
    tapped = Embedder("conv4", match_dim=5, match_tap=3, **options)
    save_model(tapped, tmp_path / "t.safetensors")
    assert read_model_config(tmp_path / "t.safetensors")["model"]["match_tap"] == 3
    assert load_model(tmp_path / "t.safetensors").eval().forward_with_local(torch.rand(2, 1, 28, 28))[1].shape == \
        (2, 14 * 14, 5)
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(again.eval().forward_with_local(images)[1], model.eval().forward_with_local(images)[1])


def test_residual_operators_survive_an_explicit_thread_count():
    """torch 2.13's batched LU solve of 256 x 256 systems fails after torch.set_num_threads(n >= 2) in
    the process (as the encode jobs' thread guard sets it); the Cholesky solves the matcher uses do
    not. In a fresh process, so this file's own set_num_threads(1) does not hide it."""
    import subprocess
    import sys

    script = ("import torch\n"
              "from torch.nn.functional import normalize\n"
              "from oneshot.embedder.matching import MapMatcher\n"
              "torch.set_num_threads(2)\n"
              "for locations, dim in ((256, 256), (196, 64)):  # an L x L solve, then a d x d one\n"
              "    local = normalize(torch.rand(8, locations, dim), dim=2)\n"
              "    assert torch.isfinite(MapMatcher(4, dim).residual_operators(local)).all()\n"
              "print('solved')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "solved" in done.stdout, done.stderr[-2000:]
