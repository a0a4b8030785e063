"""Choose a preprocessing recipe for a gallery: handwriting or photo, grey or colour.

The choice rests on pixel statistics, never on the channel count alone: an image is *ink on a
plain background* when most of its pixels sit at the level of its border (the paper) and the
border itself is flat; a set of such images is handwriting (digits, characters, signatures,
line drawings) when, in addition, it is nearly grey. Everything else is a photo. Colour means the colour images really carry
chroma (their channels differ), not merely that they are stored with three channels.
"""
from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from oneshot.embedder.preprocess import Recipe, border_pixels
from oneshot.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Input side of each kind (28 for handwriting as in Omniglot/MNIST work; 32 for photos).
SIZES = {"handwriting": 28, "photo": 32}
PLAIN_SHARE = 0.6    # share of pixels at the paper's level for "ink on a plain background"
FLAT_BORDER = 0.08   # largest border standard deviation (grey levels / 255) of plain paper
CHROMA = 4.0 / 255   # mean |channel difference| above which an image is colour
INK_CHROMA = 0.05    # ink on paper is nearly grey: more chroma than this is a photo
WIDE = 1.5           # ink boxes wider than this (or taller than 1 / this) get a rectangular canvas
MAX_ASPECT = 4.0     # longest side of a rectangular canvas, in multiples of the shorter one


def image_statistics(image: np.ndarray) -> dict:
    """Plain-background share, border flatness and chroma of one uint8 (H, W) or (H, W, 3) image."""
    colour = image.ndim == 3 and image.shape[2] == 3
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if colour else image.reshape(image.shape[:2])
    grey = grey.astype(np.float32) / 255.0
    border = border_pixels(grey)
    paper = float(np.median(border))
    chroma = 0.0
    if colour:
        planes = image.astype(np.float32) / 255.0
        chroma = float(np.mean(np.abs(planes[..., 0] - planes[..., 1]) + np.abs(planes[..., 1] - planes[..., 2])) / 2)
    return {"plain_share": float(np.mean(np.abs(grey - paper) < 0.1)), "border_std": float(border.std()),
            "chroma": chroma}


def infer_recipe(images: Sequence[np.ndarray], size: int | None = None) -> tuple[Recipe, str]:
    """The recipe suited to a sample of images (read in colour where the source has colour).

    Returns:
        (recipe, a one-line reason naming the statistics), the photo recipe without mean/std yet
        (see :func:`with_normalisation`).
    """
    if not len(images):
        raise InvalidInputError("no images to choose a recipe from")
    stats = [image_statistics(image) for image in images]
    plain = float(np.median([s["plain_share"] for s in stats]))
    border = float(np.median([s["border_std"] for s in stats]))
    chroma = float(np.median([s["chroma"] for s in stats]))
    handwriting = plain >= PLAIN_SHARE and border <= FLAT_BORDER and chroma <= INK_CHROMA
    kind = "handwriting" if handwriting else "photo"
    colour = not handwriting and chroma > CHROMA
    recipe = recipe_for(kind, colour, size)
    reason = (f"{kind}{' colour' if colour else ''} (median over {len(images)} images: "
              f"{plain:.0%} of pixels at the background level, border std {border:.3f}, chroma {chroma:.3f})")
    return recipe, reason


def recipe_for(kind: str, colour: bool = False, size: int | None = None) -> Recipe:
    """The preset recipe of a kind: handwriting crops to the ink; photos resize and centre-crop."""
    if kind == "handwriting":
        if colour:
            raise InvalidInputError("the handwriting recipe is grey; use --recipe photo for colour images")
        return Recipe(size=size or SIZES[kind], crop_to_ink=True)
    if kind == "photo":
        return Recipe(size=size or SIZES[kind], kind="photo", channels=3 if colour else 1)
    raise InvalidInputError(f"unknown recipe {kind!r}; known: handwriting, photo, photo-colour")


def ink_aspect(images: Sequence[np.ndarray]) -> float:
    """Median width / height of the ink's bounding box over a sample (ink found as the recipe finds it)."""
    finder = Recipe()
    ratios = []
    for image in images:
        ink = finder.ink(image) > 0.2
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        if rows.size and cols.size:
            ratios.append((cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1))
    return float(np.median(ratios)) if ratios else 1.0


def with_canvas(recipe: Recipe, images: Sequence[np.ndarray]) -> tuple[Recipe, str]:
    """A handwriting recipe whose canvas follows the ink's shape: square unless the sample's median
    ink box is more than :data:`WIDE` times wider than high (or higher than wide), as signatures and
    words are; then the shorter side keeps the recipe's size and the longer one grows with the ink
    (up to :data:`MAX_ASPECT` times, in steps of 4 pixels). Returns (recipe, a note, ``""`` if square)."""
    if recipe.kind != "handwriting" or recipe.width is not None or not len(images):
        return recipe, ""
    aspect = ink_aspect(images)
    if 1 / WIDE <= aspect <= WIDE:
        return recipe, ""
    short = recipe.size
    long = int(min(MAX_ASPECT, max(aspect, 1 / aspect)) * short / 4 + 0.5) * 4
    height, width = (short, long) if aspect > 1 else (long, short)
    return (Recipe.from_dict({**recipe.to_dict(), "size": height, "width": width}),
            f"canvas {height}x{width} pixels (median ink box {aspect:.2f} times as wide as high)")


def with_normalisation(recipe: Recipe, images: Sequence[np.ndarray]) -> Recipe:
    """A photo recipe with per-channel mean and std measured on ``images`` (handwriting: unchanged)."""
    if recipe.kind != "photo":
        return recipe
    plain = Recipe.from_dict({**recipe.to_dict(), "mean": None, "std": None})
    batch = plain.batch(images)
    mean = batch.mean(axis=(0, 2, 3))
    std = np.maximum(batch.std(axis=(0, 2, 3)), 1e-3)
    return Recipe.from_dict({**recipe.to_dict(), "mean": [round(float(v), 5) for v in mean],
                             "std": [round(float(v), 5) for v in std]})
