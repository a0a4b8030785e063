"""A generated signature gallery with skilled forgeries, laid out as ``root/<writer>/genuine|forged/*.png``.

Each writer's signature is three synthetic characters side by side (dark ink on white paper); a
genuine image is the signature by that writer's hand (one simulated drawing of each character),
a forgery the same three characters drawn by other hands, then sheared and with heavier or
lighter strokes, as a forger's careful copy would be. For tests and benchmarks.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from oneshot.data.synthetic import make_alphabets
from oneshot.errors import InvalidInputError

LETTERS = 3


def _forge(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape
    shear = rng.uniform(-0.25, 0.25)
    matrix = np.float32([[1, shear, -shear * height / 2], [0, 1 + rng.uniform(-0.1, 0.1), 0]])
    warped = cv2.warpAffine(image, matrix, (width, height), borderValue=0)
    kernel = np.ones((2, 2), np.uint8)
    return cv2.dilate(warped, kernel) if rng.random() < 0.5 else cv2.erode(cv2.dilate(warped, kernel), kernel)


def make_signature_gallery(folder: str | os.PathLike, n_writers: int = 10, genuine: int = 6, forged: int = 4,
                           size: int = 40, seed: int = 0) -> Path:
    """Write ``folder/<writer>/genuine/*.png`` and ``folder/<writer>/forged/*.png``; returns ``folder``."""
    if n_writers < 2 or genuine < 2 or forged < 1:
        raise InvalidInputError(f"need n_writers >= 2, genuine >= 2, forged >= 1; got {n_writers}, {genuine}, {forged}")
    drawers = genuine + forged
    letters = make_alphabets(1, LETTERS * n_writers, drawers=drawers, size=size, seed=seed, prefix="signature")
    images = letters.images.reshape(n_writers, LETTERS, drawers, size, size)
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for w in range(n_writers):
        for kind, drawn in (("genuine", range(genuine)), ("forged", range(genuine, drawers))):
            target = folder / f"writer{w:03d}" / kind
            target.mkdir(parents=True, exist_ok=True)
            for i, d in enumerate(drawn):
                ink = np.concatenate([images[w, k, d] for k in range(LETTERS)], axis=1)
                ink = 255 - ink if ink[0].mean() > 127 else ink  # ink bright while warping
                if kind == "forged":
                    ink = _forge(ink, rng)
                cv2.imwrite(str(target / f"{i:03d}.png"), 255 - ink)  # dark ink on white paper
    return folder
