"""A generated photo-like gallery (for tests and benchmarks): textured scenes, colour or grey.

Each class is a small scene: a background colour gradient and a few filled shapes (ellipses and
rectangles) of class-specific colours, sizes and places. Each image of a class moves, scales and
re-lights the scene, adds clutter and noise, so classes are told apart by colour and layout,
not by ink on paper. Written as ``root/<class>/<image>.png`` (a class-per-folder gallery).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from oneshot.errors import InvalidInputError


def _scene(rng: np.random.Generator) -> dict:
    return {"background": rng.uniform(40, 215, (2, 3)), "shapes": [
        {"kind": rng.choice(["ellipse", "rect"]), "centre": rng.uniform(0.2, 0.8, 2), "axes": rng.uniform(0.08, 0.3, 2),
         "angle": rng.uniform(0, 180), "colour": rng.uniform(0, 255, 3)} for _ in range(rng.integers(2, 5))]}


def _render(scene: dict, size: int, rng: np.random.Generator, colour: bool) -> np.ndarray:
    top, bottom = scene["background"]
    ramp = np.linspace(0, 1, size)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp) * np.ones((size, size, 3))
    texture = cv2.resize(rng.normal(0, 40, (6, 6, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    image = image + texture  # uneven light and texture, as in photos
    for _ in range(rng.integers(1, 4)):  # clutter shared by no class
        centre = tuple(int(v) for v in rng.uniform(0, size, 2))
        cv2.circle(image, centre, int(rng.uniform(2, size / 8)), rng.uniform(0, 255, 3).tolist(), -1)
    shift, scale = rng.normal(0, 0.05, 2), rng.uniform(0.85, 1.15)
    for shape in scene["shapes"]:
        centre = tuple(int(v) for v in (shape["centre"] + shift) * size)
        axes = tuple(max(1, int(v * size * scale)) for v in shape["axes"])
        tint = np.clip(shape["colour"] + rng.normal(0, 12, 3), 0, 255).tolist()
        angle = shape["angle"] + rng.normal(0, 8)
        if shape["kind"] == "ellipse":
            cv2.ellipse(image, centre, axes, angle, 0, 360, tint, -1)
        else:
            box = cv2.boxPoints((centre, (2 * axes[0], 2 * axes[1]), angle)).astype(np.int32)
            cv2.fillPoly(image, [box], tint)
    image = image * rng.uniform(0.75, 1.25) + rng.normal(0, 10, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image if colour else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def make_photo_gallery(folder: str | os.PathLike, n_classes: int = 20, per_class: int = 10, size: int = 48,
                       colour: bool = True, seed: int = 0) -> Path:
    """Write ``folder/<class>/<image>.png``; returns ``folder``."""
    if n_classes < 2 or per_class < 1 or size < 16:
        raise InvalidInputError(f"need n_classes >= 2, per_class >= 1, size >= 16; got {n_classes}, {per_class}, {size}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        scene = _scene(rng)
        target = folder / f"class{c:03d}"
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(target / f"{i:03d}.png"), _render(scene, size, rng, colour))
    return folder
