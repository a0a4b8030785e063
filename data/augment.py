"""Batched, seeded image augmentation in torch for (B, C, H, W) images (ink on black, or photos).

The reference notebook's set, each part switchable: flips, small rotation, translation, moving the
ink to a random place on the canvas, resizing the ink, aspect change, plus shear (affine
distortion); optionally, for handwriting, an elastic warp (a smooth random displacement field, as
in Simard et al. 2003) and a change of stroke width (a partial dilation or erosion). Every image
draws its own parameters; with ``pair_ids`` the flip and the rotation (with a little noise) are
shared by the two images of a pair, as in the notebook.
Rotation by 90 degrees as new classes lives in the training set (``embedder.train``), since it
changes labels.

Presets (``PRESETS``, ``oneshot train --augment``): ``handwriting`` (the defaults below),
``photo`` (horizontal flips, small crops and shifts, brightness and contrast; no shear, no
vertical flips) and ``none``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from oneshot.errors import InvalidInputError


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of each distortion; a zero range (or ``False``) switches that part off.

    Attributes:
        probability: chance that an image is distorted at all.
        flip: chance of a horizontal flip and, separately, of a vertical flip.
        rotation: maximum rotation in degrees (uniform in +-rotation).
        translate: maximum shift as a fraction of the side.
        scale: maximum relative change of the ink's size (uniform in 1 +- scale).
        aspect: maximum stretch along one axis (uniform in 1 +- aspect).
        shear: maximum shear, in radians.
        move_ink: shift the ink's bounding box to a random place that keeps it on the canvas.
        pair_noise: with ``pair_ids``, degrees of noise added to the shared rotation.
        vertical_flip: whether ``flip`` also flips upside down (off for photos).
        brightness: maximum shift of the values (uniform in +-brightness, in the images' units).
        contrast: maximum relative change of contrast (uniform in 1 +- contrast).
        elastic: maximum displacement of the elastic warp, in pixels (each control point of an
            ``elastic_cells`` x ``elastic_cells`` grid moves uniformly in +-elastic; bicubic between).
        elastic_cells: control points per side of the elastic warp's grid.
        stroke: maximum change of stroke width (uniform in +-stroke; 1 = a full 3x3 dilation, -1 a
            full erosion); for ink on black.
    """

    probability: float = 1.0
    flip: float = 0.0
    rotation: float = 10.0
    translate: float = 0.08
    scale: float = 0.15
    aspect: float = 0.1
    shear: float = 0.15
    move_ink: bool = False
    pair_noise: float = 2.0
    vertical_flip: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    elastic: float = 0.0
    elastic_cells: int = 4
    stroke: float = 0.0

    def __post_init__(self):
        if self.elastic_cells < 2:
            raise InvalidInputError(f"elastic_cells must be at least 2, got {self.elastic_cells}")
        if self.elastic < 0 or self.stroke < 0:
            raise InvalidInputError(f"elastic and stroke must be non-negative, got {self.elastic}, {self.stroke}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        if set(config) - known:
            raise InvalidInputError(f"unknown augmentation keys {sorted(set(config) - known)}; known: {sorted(known)}")
        return cls(**config)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(probability=0.0)

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        """``"handwriting"``, ``"photo"`` or ``"none"``."""
        if name not in PRESETS:
            raise InvalidInputError(f"unknown augmentation preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS = {
    "handwriting": {},
    "photo": dict(flip=0.5, vertical_flip=False, rotation=5.0, translate=0.06, scale=0.1, aspect=0.05,
                  shear=0.0, brightness=0.2, contrast=0.2),
    "none": dict(probability=0.0),
}


def _uniform(n: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * bound


def _ink_boxes(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 4) ink box [x0, x1, y0, y1] in [-1, 1] coordinates.

    The box spans the ink pixels' full extent in ``grid_sample``'s ``align_corners=False``
    coordinates (pixel ``i`` of ``n`` covers ``[-1 + 2i/n, -1 + 2(i+1)/n]``), the convention ``augment`` uses.
    """
    plane = images[:, 0] > 0.2  # (B, rows, cols)
    boxes = []
    for present in (plane.any(dim=1), plane.any(dim=2)):  # columns (x), then rows (y)
        size = present.shape[1]
        edges = torch.linspace(-1, 1, size + 1)
        found = present.any(1)
        lo = edges[present.float().argmax(1)]
        hi = edges[size - present.flip(1).float().argmax(1)]
        boxes += [torch.where(found, lo, -torch.ones_like(lo)), torch.where(found, hi, torch.ones_like(hi))]
    return torch.stack(boxes, dim=1)


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
            pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Distort a batch.

    Args:
        images: float32 (B, C, H, W) (ink bright on black, or normalised photos), on the CPU.
        config: the distortion ranges.
        generator: a seeded ``torch.Generator`` (CPU).
        pair_ids: optional int64 (B,); images with the same id share flip and rotation.
    Returns:
        float32 (B, C, H, W).
    """
    if config.probability <= 0:
        return images
    if images.ndim != 4:
        raise InvalidInputError(f"expected images (B, C, H, W), got {tuple(images.shape)}")
    n = images.shape[0]
    share = (lambda v: v[pair_ids]) if pair_ids is not None else (lambda v: v[: n])
    draws = n if pair_ids is None else int(pair_ids.max()) + 1

    angle = share(_uniform(draws, math.radians(config.rotation), generator))
    if pair_ids is not None:
        angle = angle + _uniform(n, math.radians(config.pair_noise), generator)
    flip_x = share(torch.rand(draws, generator=generator) < config.flip).float() * -2 + 1
    flip_y = share(torch.rand(draws, generator=generator) < config.flip).float() * -2 + 1
    if not config.vertical_flip:
        flip_y = torch.ones_like(flip_y)
    scale = 1 + _uniform(n, config.scale, generator)
    stretch = 1 + _uniform(n, config.aspect, generator)
    along_x = torch.rand(n, generator=generator) < 0.5
    sx = scale * torch.where(along_x, stretch, torch.ones(n)) * flip_x
    sy = scale * torch.where(along_x, torch.ones(n), stretch) * flip_y
    shear = _uniform(n, config.shear, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map (input -> output) = rotation @ shear @ scale
    forward = torch.stack([
        torch.stack([cos * sx, (cos * shear - sin) * sy], dim=1),
        torch.stack([sin * sx, (sin * shear + cos) * sy], dim=1),
    ], dim=1)
    aspect = images.shape[3] / images.shape[2]
    if aspect != 1:  # the map above is in pixels; grid coordinates run -1..1 along each side
        forward[:, 0, 1] /= aspect
        forward[:, 1, 0] *= aspect
    shift = torch.stack([_uniform(n, 2 * config.translate, generator), _uniform(n, 2 * config.translate, generator)], dim=1)
    if config.move_ink:
        boxes = _ink_boxes(images)
        centre = torch.stack([(boxes[:, 0] + boxes[:, 1]) / 2, (boxes[:, 2] + boxes[:, 3]) / 2], dim=1)
        half = torch.stack([(boxes[:, 1] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 2]) / 2], dim=1)
        room = (1 - half).clamp_min(0)
        target = (torch.rand(n, 2, generator=generator) * 2 - 1) * room
        shift = target - centre
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], dim=2)
    keep = torch.rand(n, generator=generator) >= config.probability
    theta[keep] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # the optional parts draw after the older ones, so runs without them keep their random stream
    if config.elastic:
        grid = grid + _elastic_field(images.shape, config, generator) * (~keep).float().view(n, 1, 1, 1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if config.brightness or config.contrast:
        gain = 1 + _uniform(n, config.contrast, generator)
        shift = _uniform(n, config.brightness, generator)
        gain[keep], shift[keep] = 1.0, 0.0
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * gain.view(n, 1, 1, 1) + mean + shift.view(n, 1, 1, 1)
    if config.stroke:
        width = _uniform(n, config.stroke, generator)
        width[keep] = 0.0
        out = change_stroke_width(out, width)
    return out


def _elastic_field(shape, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A smooth random displacement, (B, H, W, 2) in ``grid_sample`` coordinates."""
    n, _, height, width = shape
    cells = config.elastic_cells
    points = torch.rand(n, 2, cells, cells, generator=generator) * 2 - 1
    field = F.interpolate(points, size=(height, width), mode="bicubic", align_corners=True)
    field = field * config.elastic * torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)  # pixels -> grid
    return field.permute(0, 2, 3, 1)


def change_stroke_width(images: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Thicken (``width > 0``) or thin (``width < 0``) bright strokes: a blend of each image with its
    3x3 dilation or erosion. (B, C, H, W), width (B,) in [-1, 1] -> (B, C, H, W)."""
    dilated = F.max_pool2d(images, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-images, 3, stride=1, padding=1)
    amount = width.view(-1, 1, 1, 1)
    return images + amount.clamp_min(0) * (dilated - images) + (-amount).clamp_min(0) * (eroded - images)
