"""Backbone registry: image batch (N, 1, S, S) -> features (N, F).

``@register_backbone(name)`` adds a factory; ``create_backbone(name, **options)`` builds one,
dropping options that are ``None`` so CLI defaults never override a backbone's own defaults.
Each backbone exposes ``feature_dim``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from oneshot.errors import InvalidInputError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    def decorator(factory):
        if name in _BACKBONES:
            raise InvalidInputError(f"backbone {name!r} registered twice")
        _BACKBONES[name] = factory
        return factory

    return decorator


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, **options) -> nn.Module:
    """Build a registered backbone; unknown names raise and list the known ones."""
    if name not in _BACKBONES:
        raise InvalidInputError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")
    return _BACKBONES[name](**{k: v for k, v in options.items() if v is not None})


def _conv_block(cin: int, cout: int, pool: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """``blocks`` x [conv 3x3, batch norm, ReLU, max-pool 2], then global average pooling.

    The classic 4-block few-shot backbone (Vinyals et al., Snell et al.): ``channels`` in every
    block, or ``widths`` (one per block, e.g. ``(64, 64, 128, 256)``: the late blocks work on small
    maps, so widening them adds features for little compute). ``pool_last=False``: the last block
    has no max-pool, so the global average sees its whole map (see :func:`_check_pool_last`).
    ``grid=g``: the last map is averaged onto a g x g grid and flattened (see :func:`pool_to_grid`).
    """

    def __init__(self, channels: int = 64, blocks: int = 4, in_channels: int = 1,
                 widths: Sequence[int] | None = None, pool_last: bool = True, grid: int = 1):
        super().__init__()
        _check_pool_last(pool_last)
        self.grid = _checked_grid(grid)
        if widths is not None:
            if isinstance(widths, (str, bytes)) or len(widths) != blocks or \
                    not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
                raise InvalidInputError(f"widths must be {blocks} positive ints (one per block), got {widths!r}")
        elif blocks < 1 or channels < 1:
            raise InvalidInputError(f"blocks and channels must be positive, got {blocks}, {channels}")
        widths = [in_channels] + (list(widths) if widths is not None else [channels] * blocks)
        pools = [True] * (len(widths) - 2) + [pool_last]
        self.features = nn.Sequential(*[_conv_block(a, b, pool) for a, b, pool in zip(widths, widths[1:], pools)])
        self.feature_dim = widths[-1] * self.grid ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_to_grid(self.features(x), self.grid)

    def map_channels(self, tap: int = 2) -> int:
        """Channels of the map :meth:`forward_with_map` taps ``tap`` blocks from the end (2: the
        second-to-last); the backbone needs ``tap`` blocks or more."""
        _check_tap(tap, len(self.features), "block")
        return self.features[-tap][0].out_channels

    def forward_with_map(self, x: torch.Tensor, tap: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (features as :meth:`forward` gives them, the map of the block ``tap`` from the end
        before its pool (N, C, H, W): 7 x 7 at 28 px for the second-to-last, 14 x 14 for the one before),
        for :class:`~oneshot.embedder.matching.MapMatcher`."""
        _check_tap(tap, len(self.features), "block")
        for block in self.features[:-tap]:
            x = block(x)
        tapped = self.features[-tap][:-1](x)  # conv, batch norm, ReLU
        x = self.features[-tap][-1](tapped)
        for block in self.features[len(self.features) - tap + 1:]:
            x = block(x)
        return pool_to_grid(x, self.grid), tapped


def _check_tap(tap, blocks: int, name: str) -> None:
    """A map matcher taps a block with a pool after it: one of the first ``blocks - 1``."""
    if isinstance(tap, bool) or not isinstance(tap, int) or not 2 <= tap <= blocks:
        raise InvalidInputError(f"a map matcher taps a {name} 2 or more from the end (2: the second-to-last); this "
                                f"backbone has {blocks} {name}s, so the tap must be in [2, {blocks}], got {tap!r}")


def pool_to_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """maps (N, C, H, W) -> features (N, C * grid * grid): the average over each cell of a
    ``grid`` x ``grid`` partition of the map, flattened channel-major. ``grid=1`` is the global
    average; with ``grid`` equal to the map's size (3 for a 28 px input without the last pool) every
    cell keeps its place, so the vector knows where a stroke is, not only that it is there."""
    if grid == 1:
        return maps.mean(dim=(2, 3))
    return nn.functional.adaptive_avg_pool2d(maps, grid).flatten(1)


def _checked_grid(grid) -> int:
    return _positive_integer(grid, "grid", "1: global average")


def _positive_integer(value, name: str, meaning: str) -> int:
    """``value`` when it is an integer >= 1 (not a bool), else an error naming ``name`` and ``meaning``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer ({meaning}), got {value!r}")
    return value


def _check_pool_last(pool_last) -> None:
    """``pool_last`` must be a bool. Why it exists: a 28 px input reaches the last block as 3x3
    (28 -> 14 -> 7 -> 3), and a 2x2 max-pool with stride 2 keeps only its top-left 2x2, so five of
    the nine cells never reach the vector; without that pool the global average sees all nine."""
    if not isinstance(pool_last, bool):
        raise InvalidInputError(f"pool_last must be true or false, got {pool_last!r}")


class _ResidualBlock(nn.Module):
    """``drop``: in training, each image's residual branch is dropped with this probability (the
    skip alone passes) and kept ones scaled by 1 / (1 - drop), so inference needs no change
    (stochastic depth, Huang et al. 2016)."""

    def __init__(self, cin: int, cout: int, pool: bool = True, convs: int = 2, drop: float = 0.0):
        super().__init__()
        self.drop = drop
        layers = []
        for i in range(convs):  # conv, batch norm (, ReLU but after the last): the skip is added before it
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            layers += [nn.ReLU(inplace=True)] if i < convs - 1 else []
        self.body = nn.Sequential(*layers)
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.out = nn.Sequential(nn.ReLU(inplace=True), *([nn.MaxPool2d(2)] if pool else []))

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        body = self.body(x)
        if self.training and self.drop > 0:
            keep = torch.rand(body.shape[0], 1, 1, 1, device=body.device) >= self.drop
            body = body * (keep.to(body.dtype) / (1 - self.drop))
        return body + self.skip(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self._branch(x))

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (the block's output, its map before the pool)."""
        tapped = self.out[0](self._branch(x))
        return self.out[1:](tapped), tapped


class ResNetSmall(nn.Module):
    """A small residual net: a stem conv, then residual stages that halve the size, then GAP.
    ``pool_last=False``: the last stage keeps its size (see :func:`_check_pool_last`); ``grid`` as
    in :class:`ConvNet`; ``convs``: 3 x 3 convolutions in each stage's residual branch (2; 3 as in
    ResNet-12); ``drop_path``: the last stage's stochastic-depth rate in training, earlier stages
    a linear share of it (stage i of n: ``drop_path * i / n``); 0, the default, drops nothing."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), in_channels: int = 1, pool_last: bool = True,
                 grid: int = 1, convs: int = 2, drop_path: float = 0.0):
        super().__init__()
        _check_pool_last(pool_last)
        convs = _positive_integer(convs, "convs", "3 x 3 convolutions a stage")
        if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0 <= drop_path < 1:
            raise InvalidInputError(f"drop_path must be a number in [0, 1), got {drop_path!r}")
        self.grid = _checked_grid(grid)
        widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        pools = [True] * (len(widths) - 1) + [pool_last]
        drops = [drop_path * (i + 1) / len(widths) for i in range(len(widths))]
        stages = [_ResidualBlock(a, b, pool, convs, drop)
                  for a, b, pool, drop in zip((widths[0],) + widths[:-1], widths, pools, drops)]
        self.stages = nn.Sequential(*stages)
        self.feature_dim = widths[-1] * self.grid ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_to_grid(self.stages(self.stem(x)), self.grid)

    def map_channels(self, tap: int = 2) -> int:
        """Channels of the map :meth:`forward_with_map` taps ``tap`` stages from the end."""
        _check_tap(tap, len(self.stages), "stage")
        return self.stages[-tap].skip[0].out_channels

    def forward_with_map(self, x: torch.Tensor, tap: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (features as :meth:`forward` gives them, the map of the stage ``tap`` from the end
        before its pool (N, C, H, W): 7 x 7 at 28 px for the second-to-last, 14 x 14 for the one before),
        for :class:`~oneshot.embedder.matching.MapMatcher`."""
        _check_tap(tap, len(self.stages), "stage")
        x = self.stages[: len(self.stages) - tap](self.stem(x))
        x, tapped = self.stages[-tap].forward_with_map(x)
        return pool_to_grid(self.stages[len(self.stages) - tap + 1:](x), self.grid), tapped


class KochNet(nn.Module):
    """Koch et al. (2015): conv 64@10, pool, 128@7, pool, 128@4, pool, 256@4, flatten, dense + sigmoid.

    Expects 105x105 input; the dense layer's width is ``hidden`` (4096 in the paper).
    """

    def __init__(self, hidden: int = 4096, in_channels: int = 1, input_size: int = 105):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 10), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.Sigmoid())
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(x))


register_backbone("conv4")(lambda channels=64, in_channels=1, widths=None, pool_last=True, grid=1:
                           ConvNet(channels, 4, in_channels, widths, pool_last, grid))
register_backbone("conv")(ConvNet)
register_backbone("resnet-small")(ResNetSmall)
register_backbone("koch")(KochNet)

from oneshot.embedder import face_resnet  # noqa: E402,F401  (registers "face-resnet29")
