"""The embedding network: backbones, heads, input checks, and the siamese score = L1 search claim."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from oneshot.embedder.backbones import backbone_names, create_backbone, register_backbone
from oneshot.embedder.model import Embedder, NormalizedHead, SiameseHead
from oneshot.embedder.preprocess import Recipe
from oneshot.index.vector_index import VectorIndex

torch.set_num_threads(1)

# tiny options per registered backbone, with the input side each needs
TINY = {
    "conv": ({"channels": 8, "blocks": 2}, 16),
    "conv4": ({"channels": 4}, 16),
    "resnet-small": ({"widths": (4, 8)}, 16),
    "koch": ({"hidden": 16, "input_size": 72}, 72),  # the smallest Koch input is 65 pixels
    "face-resnet29": ({"in_channels": 1}, 120),  # dlib's layout, full size (shipped input 150; under ~110 pixels too small)
    "ensemble": ({"members": [Embedder("conv", 6, recipe=Recipe(size=16), backbone_options={"channels": 4, "blocks": 2})
                              .config()] * 2}, 16),  # two trained models side by side (embedder.ensemble)
}


def test_tiny_options_cover_the_registry():
    assert set(TINY) == set(backbone_names())


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("head", ["normalized", "siamese"])
def test_each_backbone_gives_n_by_d(name, head):
    torch.manual_seed(0)
    options, size = TINY[name]
    model = Embedder(name, dim=12, head=head, recipe=Recipe(size=size), backbone_options=options).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, size, size))
    assert out.shape == (3, 12) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.dim == 12
    # dim=None keeps the backbone's own feature size
    bare = Embedder(name, dim=None, head=head, recipe=Recipe(size=size), backbone_options=options).eval()
    with torch.no_grad():
        assert bare(torch.rand(2, 1, size, size)).shape == (2, bare.backbone.feature_dim)
    assert bare.dim == bare.backbone.feature_dim


def test_koch_paper_size():
    model = create_backbone("koch", hidden=8)
    with torch.no_grad():
        out = model(torch.rand(1, 1, 105, 105))
    assert out.shape == (1, 8)
    assert ((out > 0) & (out < 1)).all()  # sigmoid features


def test_none_options_are_dropped():
    model = create_backbone("conv", channels=None, blocks=2)
    assert model.feature_dim == 64  # ConvNet's own default, not None


def test_conv_widths_per_block_and_round_trip(tmp_path):
    from oneshot.embedder.artifact import load_model, save_model

    backbone = create_backbone("conv4", widths=[4, 4, 8, 16])
    assert backbone.feature_dim == 16
    assert [block[0].out_channels for block in backbone.features] == [4, 4, 8, 16]
    model = Embedder("conv4", dim=6, recipe=Recipe(size=16), backbone_options={"widths": [4, 4, 8, 16]}).eval()
    save_model(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
    for bad in ([4, 4, 8], [4, 0, 8, 16], "4448", [4.0, 4, 8, 16]):
        with pytest.raises(ValueError, match="widths"):
            create_backbone("conv4", widths=bad)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError) as error:
        Embedder("vgg99")
    message = str(error.value)
    assert "vgg99" in message
    for name in ("conv", "conv4", "koch", "resnet-small"):
        assert name in message
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("conv")(lambda: None)
    with pytest.raises(ValueError, match="normalized"):
        Embedder("conv", head="arcface")


def test_normalized_head_unit_norm():
    torch.manual_seed(0)
    head = NormalizedHead(feature_dim=10, dim=6)
    out = head(torch.randn(20, 10) * 50)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(20))
    model = Embedder("conv", dim=16, recipe=Recipe(size=16), backbone_options={"channels": 8, "blocks": 2}).eval()
    with torch.no_grad():
        vectors = model(torch.rand(5, 1, 16, 16))
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(5))
    assert model.metric == "cosine"


def test_wrong_input_raises():
    model = Embedder("conv", dim=16, recipe=Recipe(size=16), backbone_options={"channels": 8, "blocks": 2})
    for shape in [(2, 1, 20, 20), (2, 3, 16, 16), (1, 16, 16), (2, 1, 16, 20)]:
        with pytest.raises(ValueError, match=r"expected images \(N, 1, 16, 16\)"):
            model(torch.rand(*shape))


def test_config_round_trip():
    model = Embedder("resnet-small", dim=8, head="siamese", recipe=Recipe(size=16, threshold=90),
                     backbone_options={"widths": (4, 8)})
    again = Embedder.from_config(model.config())
    assert again.config() == model.config()
    assert again.metric == "l1" and again.dim == 8
    assert Embedder.from_config(Embedder("conv", dim=None, recipe=Recipe(size=16),
                                         backbone_options={"channels": 8, "blocks": 2}).config()).dim == 8


def test_siamese_head_weights_non_negative():
    head = SiameseHead(feature_dim=4, dim=None)
    with torch.no_grad():
        head.raw_weight.copy_(torch.tensor([-30.0, -1.0, 0.0, 3.0]))
    assert (head.weight >= 0).all()
    features = torch.randn(3, 4)
    torch.testing.assert_close(head(features), torch.sigmoid(features) * head.weight)


def _siamese_model(seed: int, images: torch.Tensor) -> Embedder:
    """A siamese model with random, clearly non-uniform head weights whose features spread over (0, 1)."""
    torch.manual_seed(seed)
    model = Embedder("conv", dim=10, head="siamese", recipe=Recipe(size=16),
                     backbone_options={"channels": 8, "blocks": 2}).eval()
    with torch.no_grad():
        model.head.raw_weight.copy_(torch.randn(10) * 1.5)
        model.head.bias.fill_(0.3)
        # standardise the random projection on these images, so the sigmoid features differ clearly
        z = model.head.project(model.backbone(images))
        mean, std = z.mean(0), z.std(0)
        model.head.project.weight.div_(std[:, None] / 1.5)
        model.head.project.bias.sub_(mean).div_(std / 1.5)
    return model


def _images(seed: int, n: int) -> torch.Tensor:
    """Random blobs of random brightness: a varied gallery."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 16, 16, generator=generator)
    images = images * torch.rand(n, 1, 1, 1, generator=generator)
    images[:, :, : int(torch.randint(2, 14, (1,), generator=generator))] *= 0.2
    corner = torch.randint(0, 8, (n, 2), generator=generator)
    for i, (r, c) in enumerate(corner.tolist()):
        images[i, 0, r : r + 8, c : c + 8] = 1.0
    return images


@pytest.mark.parametrize("seed", [0, 1])
def test_siamese_score_ranks_as_l1_search(seed):
    images = _images(seed, 30)
    gallery_images, query_images = images[:25], images[25:]
    model = _siamese_model(seed, images)
    w = model.head.weight.detach().double()
    assert w.std() > 0.3 * w.mean()  # not uniform: the weights matter to the ranking
    with torch.no_grad():
        # the twin network's own score, from the unscaled sigmoid features and the head weights
        def features(x):
            return torch.sigmoid(model.head.project(model.backbone(x))).double()

        e_gallery, e_query = features(gallery_images), features(query_images)
        vectors_gallery = model(gallery_images).numpy()
        vectors_query = model(query_images).numpy()
    ids = np.arange(25, dtype=np.int64) * 3 + 1000  # ids unrelated to positions
    table = pd.DataFrame({"id": ids, "label": [f"c{i}" for i in range(25)]})
    index = VectorIndex.build(vectors_gallery, table, "l1")
    found = index.search(vectors_query, k=25)
    bias = model.head.bias.detach().double()
    for q in range(5):
        weighted_l1 = (w * (e_query[q] - e_gallery).abs()).sum(dim=1)  # sum_j w_j |e1_j - e2_j|
        score = torch.sigmoid(bias - weighted_l1)  # the learned "same" probability
        gaps = np.diff(np.sort(weighted_l1.numpy()))
        assert gaps.min() > 1e-4  # clearly distinct scores: the order is well defined in float32
        score_order = np.argsort(-score.numpy(), kind="stable")
        assert np.array_equal(found.ids[q], ids[score_order]), f"query {q}"
        # and FAISS' similarity is minus the weighted L1 distance of the unscaled features
        np.testing.assert_allclose(-found.scores[q], weighted_l1.numpy()[score_order], rtol=1e-4, atol=1e-5)
    # the head's pair_logit on output vectors is the same logit
    with torch.no_grad():
        logit = model.head.pair_logit(torch.from_numpy(vectors_query[:1]).expand(25, -1),
                                      torch.from_numpy(vectors_gallery))
    expected = bias - (w * (e_query[0] - e_gallery).abs()).sum(1)
    np.testing.assert_allclose(logit.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_siamese_ranking_differs_from_unweighted_l1():
    """With non-uniform weights, plain L1 on the unscaled features ranks differently: the weights matter."""
    images = _images(0, 30)
    gallery, queries = images[:25], images[25:]
    model = _siamese_model(0, images)
    w = model.head.weight.detach().double()
    with torch.no_grad():
        e_g = torch.sigmoid(model.head.project(model.backbone(gallery))).double()
        e_q = torch.sigmoid(model.head.project(model.backbone(queries))).double()
    differs = 0
    for q in range(5):
        weighted = torch.argsort((w * (e_q[q] - e_g).abs()).sum(1))
        plain = torch.argsort((e_q[q] - e_g).abs().sum(1))
        differs += int(not torch.equal(weighted, plain))
    assert differs > 0


def _last_map(backbone, images):
    """The last block's map before any pooling: (N, C, 3, 3) for a 28 px input."""
    if hasattr(backbone, "features"):
        *early, last = backbone.features
        x = torch.nn.Sequential(*early)(images)
        return last[2](last[1](last[0](x)))
    *early, last = backbone.stages
    x = torch.nn.Sequential(*early)(backbone.stem(images))
    return last.out[0](last.body(x) + last.skip(x))


@pytest.mark.parametrize("name", ["conv4", "resnet-small"])
def test_pool_last_false_averages_the_whole_last_map(name, tmp_path):
    from oneshot.embedder.artifact import load_model, save_model

    torch.manual_seed(0)
    images = torch.rand(3, 1, 28, 28)
    pooled = create_backbone(name, widths=[4, 4, 8, 16]).eval()
    whole = create_backbone(name, widths=[4, 4, 8, 16], pool_last=False).eval()
    whole.load_state_dict(pooled.state_dict())  # same parameters: a model file of either kind loads into both
    with torch.no_grad():
        last = _last_map(pooled, images)
        assert last.shape == (3, 16, 3, 3)
        # the 2x2 max-pool keeps the top-left 2x2 of the 3x3 map; without it every cell counts
        assert torch.allclose(pooled(images), last[:, :, :2, :2].amax(dim=(2, 3)))
        assert torch.allclose(whole(images), last.mean(dim=(2, 3)))
    model = Embedder(name, dim=6, recipe=Recipe(size=28), backbone_options={"widths": [4, 4, 8, 16], "pool_last": False})
    save_model(model.eval(), tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.backbone_options["pool_last"] is False
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
    with pytest.raises(ValueError, match="pool_last"):
        create_backbone(name, widths=[4, 4, 8, 16], pool_last="no")


def test_resnet_stages_with_three_convolutions_each(tmp_path):
    from oneshot.embedder.artifact import load_model, save_model

    two = create_backbone("resnet-small", widths=[4, 8])
    three = create_backbone("resnet-small", widths=[4, 8], convs=3)
    convs = [[m for m in stage.body if isinstance(m, torch.nn.Conv2d)] for stage in three.stages]
    assert [len(c) for c in convs] == [3, 3] and convs[1][0].in_channels == 4 and convs[1][2].in_channels == 8
    # the default keeps its layer names, so every file written before the option loads as it did
    assert set(two.state_dict()) == set(create_backbone("resnet-small", widths=[4, 8], convs=2).state_dict())
    assert set(two.state_dict()) < set(three.state_dict())
    model = Embedder("resnet-small", dim=6, recipe=Recipe(size=28), backbone_options={"widths": [4, 8], "convs": 3})
    save_model(model.eval(), tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="convs must be a positive integer"):
            create_backbone("resnet-small", widths=[4, 8], convs=bad)


def test_resnet_stochastic_depth_drops_branches_in_training_only():
    torch.manual_seed(0)
    plain = create_backbone("resnet-small", widths=[4, 8, 8, 8])
    dropping = create_backbone("resnet-small", widths=[4, 8, 8, 8], drop_path=0.4)
    dropping.load_state_dict(plain.state_dict())  # no new weights: every file loads as it did
    assert [stage.drop for stage in dropping.stages] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    images = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain.eval()(images), dropping.eval()(images))  # inference unchanged
        last = dropping.train().stages[-1]
        maps = torch.rand(4096, 8, 3, 3)
        kept = last.body(maps)
        branch = last._branch(maps) - last.skip(maps)  # each image: its branch / 0.6, or nothing
        dropped = branch.flatten(1).abs().amax(1) == 0
        assert 0.3 < dropped.float().mean() < 0.5
        torch.testing.assert_close(branch[~dropped], kept[~dropped] / 0.6)
    for bad in (-0.1, 1.0, True, "0.1"):
        with pytest.raises(ValueError, match="drop_path must be a number in"):
            create_backbone("resnet-small", widths=[4, 8], drop_path=bad)


@pytest.mark.parametrize("name", ["conv4", "resnet-small"])
def test_grid_keeps_each_cell_of_the_last_map_in_place(name, tmp_path):
    from oneshot.embedder.artifact import load_model, save_model
    from oneshot.embedder.inference import InferenceModel

    torch.manual_seed(0)
    images = torch.rand(3, 1, 28, 28)
    averaged = create_backbone(name, widths=[4, 4, 8, 16], pool_last=False).eval()
    gridded = create_backbone(name, widths=[4, 4, 8, 16], pool_last=False, grid=3).eval()
    gridded.load_state_dict(averaged.state_dict())  # the grid adds no parameters to the backbone
    assert (averaged.feature_dim, gridded.feature_dim) == (16, 144)
    with torch.no_grad():
        last = _last_map(gridded, images)  # (3, 16, 3, 3): 3x3 cells, each kept as it is
        assert torch.allclose(gridded(images), last.flatten(1))
        assert torch.allclose(averaged(images), gridded(images).view(3, 16, 9).mean(dim=2), atol=1e-6)
        two = create_backbone(name, widths=[4, 4, 8, 16], pool_last=False, grid=2).eval()
        two.load_state_dict(averaged.state_dict())
        # a 2x2 grid over a 3x3 map: overlapping cells, the top-left one the mean of the top-left 2x2
        assert torch.allclose(two(images).view(3, 16, 4)[:, :, 0], last[:, :, :2, :2].mean(dim=(2, 3)), atol=1e-6)
    model = Embedder(name, dim=6, recipe=Recipe(size=28),
                     backbone_options={"widths": [4, 4, 8, 16], "pool_last": False, "grid": 3})
    save_model(model.eval(), tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.backbone_options["grid"] == 3
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
        # the fast inference copy (batch norm folded, channels_last) flattens in the same order
        fast = InferenceModel(again)(images.numpy())
        assert torch.allclose(torch.from_numpy(fast), model(images), atol=1e-5)
    for bad in (0, 1.5, True, "3"):
        with pytest.raises(ValueError, match="grid must be a positive integer"):
            create_backbone(name, widths=[4, 4, 8, 16], grid=bad)
