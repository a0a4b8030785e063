"""The embedding network: image batch (N, C, S, S) -> search vectors (N, D) (C from the recipe).

An :class:`Embedder` is a backbone plus a head. Its output is the vector the index stores:
- ``NormalizedHead``: linear projection then L2 normalisation; searched by cosine (inner product).
- ``SiameseHead`` (Koch et al.): sigmoid features ``e`` scaled by learned non-negative weights ``w``.
  The twin score is ``sigmoid(bias - sum_j w_j |e1_j - e2_j|)``; since ``w_j >= 0`` that equals
  ``sigmoid(bias - ||w*e1 - w*e2||_1)``, so L1 nearest-neighbour search on ``w*e`` ranks exactly
  as the learned score does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.embedder.backbones import create_backbone
from oneshot.embedder.matching import MapMatcher
from oneshot.embedder.precision import check_precision
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError


class NormalizedHead(nn.Module):
    metric = "cosine"

    def __init__(self, feature_dim: int, dim: int | None):
        super().__init__()
        self.project = nn.Linear(feature_dim, dim) if dim else nn.Identity()
        self.dim = dim or feature_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(features), dim=1)


class SiameseHead(nn.Module):
    metric = "l1"

    def __init__(self, feature_dim: int, dim: int | None):
        super().__init__()
        self.dim = dim or feature_dim
        self.project = nn.Linear(feature_dim, self.dim) if dim else nn.Identity()
        self.raw_weight = nn.Parameter(torch.full((self.dim,), -2.0))
        self.bias = nn.Parameter(torch.tensor(2.0))

    @property
    def weight(self) -> torch.Tensor:
        """The non-negative per-dimension weights w, shape (D,)."""
        return F.softplus(self.raw_weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.project(features)) * self.weight

    def pair_logit(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit of "same class" for embedded pairs a, b (P, D) -> (P,)."""
        return self.bias - (a - b).abs().sum(dim=1)


HEADS = {"normalized": NormalizedHead, "siamese": SiameseHead}


class Embedder(nn.Module):
    """Backbone + head, with the preprocessing recipe it expects.

    Args:
        backbone: registered backbone name (see ``embedder.backbones``).
        dim: output dimension (``None`` keeps the backbone's feature size).
        head: ``"normalized"`` (cosine search) or ``"siamese"`` (weighted L1 search).
        recipe: preprocessing; its ``size`` is the input side.
        backbone_options: passed to the backbone factory.
        match_dim: with a positive value, a :class:`~oneshot.embedder.matching.MapMatcher` of that
            many channels on the backbone's tapped map (``None``: none). ``forward`` never uses it.
        match_position: the matcher also sees each location's coordinates (``MapMatcher(position=)``).
        match_tap: the block the matcher taps, counted from the end (2: the second-to-last, 7 x 7 at
            28 px; 3: the one before, 14 x 14).
    """

    def __init__(
        self,
        backbone: str = "conv4",
        dim: int | None = 128,
        head: str = "normalized",
        recipe: Recipe | None = None,
        backbone_options: dict | None = None,
        match_dim: int | None = None,
        match_position: bool = False,
        match_tap: int = 2,
    ):
        super().__init__()
        if head not in HEADS:
            raise InvalidInputError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
        self.recipe = recipe or Recipe()
        self.backbone_name = backbone
        self.backbone_options = dict(backbone_options or {})
        self.head_name = head
        options = dict(self.backbone_options)
        if self.recipe.channels != 1:  # colour photos: the first conv takes the recipe's channels
            options.setdefault("in_channels", self.recipe.channels)
        self.backbone = create_backbone(backbone, **options)
        self.head = HEADS[head](self.backbone.feature_dim, dim)
        self.matcher = None
        if match_dim is not None:
            if not hasattr(self.backbone, "forward_with_map"):
                raise InvalidInputError(f"backbone {backbone!r} has no map to match (conv4, conv and resnet-small do)")
            self.matcher = MapMatcher(self.backbone.map_channels(match_tap), match_dim, match_position)
        elif match_position or match_tap != 2:
            raise InvalidInputError("match_position and match_tap need a map matcher (match_dim)")
        self.match_tap = match_tap

    @property
    def dim(self) -> int:
        return self.head.dim

    @property
    def metric(self) -> str:
        """How the index compares this model's vectors: ``"cosine"`` or ``"l1"``."""
        return self.head.metric

    def config(self) -> dict:
        config = {
            "backbone": self.backbone_name,
            "backbone_options": self.backbone_options,
            "dim": self.head.dim if not isinstance(self.head.project, nn.Identity) else None,
            "head": self.head_name,
            "recipe": self.recipe.to_dict(),
        }
        if self.matcher is not None:  # absent otherwise, so models without one keep their fingerprint
            config["match_dim"] = self.matcher.dim
            if self.matcher.position:  # likewise, so matchers without it keep theirs
                config["match_position"] = True
            if self.match_tap != 2:
                config["match_tap"] = self.match_tap
        return config

    @classmethod
    def from_config(cls, config: dict) -> "Embedder":
        return cls(
            backbone=config["backbone"],
            dim=config.get("dim"),
            head=config.get("head", "normalized"),
            recipe=Recipe.from_dict(config["recipe"]),
            backbone_options=config.get("backbone_options"),
            match_dim=config.get("match_dim"),
            match_position=config.get("match_position", False),
            match_tap=config.get("match_tap", 2),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float32 (N, C, H, W) (C, H, W: the recipe's channels and shape) -> vectors (N, D)."""
        self._check_images(images)
        return self.head(self.backbone(images))

    def _check_images(self, images: torch.Tensor) -> None:
        (height, width), channels = self.recipe.shape, self.recipe.channels
        if images.ndim != 4 or images.shape[1] != channels or tuple(images.shape[2:]) != (height, width):
            raise InvalidInputError(f"expected images (N, {channels}, {height}, {width}), got {tuple(images.shape)}")

    def forward_with_local(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, C, H, W) -> (vectors (N, D) as :meth:`forward`, the matcher's local features
        (N, L, d) float32). Needs a model trained with a matcher (``match_dim``)."""
        if self.matcher is None:
            raise InvalidInputError("this model has no map matcher (train one with the match_dim option)")
        self._check_images(images)
        features, maps = self.backbone.forward_with_map(images, self.match_tap)
        return self.head(features.float()), self.matcher.local_features(maps)


def embed_batch(model: Embedder, images: torch.Tensor, precision: str) -> torch.Tensor:
    """images (N, C, H, W) -> vectors (N, D) float32, as training computes them (for the loss) and
    the matched re-ranker encodes (``precision``: ``fp32``, ``bf16`` or another spelling of
    :data:`~oneshot.embedder.precision.PRECISION_SPELLINGS`).

    ``fp32``: the model as written. ``bf16``: mixed precision, the backbone under bfloat16 autocast
    (convolutions and matrix products in bfloat16), the head (projection and unit length) in float32;
    weights, batch-norm statistics, the loss and the optimiser stay float32, so the saved model is an
    ordinary float32 one. On CPUs with AVX-512 BF16 a step of the default's net takes about half the
    time; elsewhere bfloat16 is emulated and may be slower.
    """
    if check_precision(precision) == "float32":
        return model(images)
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        features = model.backbone(images)
    return model.head(features.float())


def embed_batch_with_local(model: Embedder, images: torch.Tensor, precision: str,
                           detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W) -> (vectors (N, D), the matcher's local features (N, L, d)), both float32,
    with the backbone in ``precision`` as :func:`embed_batch` runs it; the matcher runs in float32.
    ``detach``: no gradient from the local features reaches the backbone (only the matcher learns
    from them)."""
    model._check_images(images)
    half = check_precision(precision) == "bfloat16"
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=half):
        features, maps = model.backbone.forward_with_map(images, model.match_tap)
    maps = maps.float()
    return model.head(features.float()), model.matcher.local_features(maps.detach() if detach else maps)


def require_unit_vectors(model: Embedder, name, recipe: Recipe, recipe_of: str, role: str) -> None:
    """Refuse, naming ``name``, a model that does not give unit vectors or preprocesses images other
    than ``recipe`` (``recipe_of``'s): what joining models' vectors (ensembles, teachers) needs."""
    if model.metric != "cosine":
        raise InvalidInputError(f"{name}: {role} must give unit vectors (cosine metric), not {model.metric!r}")
    if model.recipe.to_dict() != recipe.to_dict():
        raise InvalidInputError(f"{name}: preprocesses images as {model.recipe.to_dict()}, {recipe_of} as "
                                f"{recipe.to_dict()}; {role} must match")


from oneshot.embedder import ensemble  # noqa: E402,F401  (registers the "ensemble" backbone)
