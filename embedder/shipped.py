"""Which shipped model suits a gallery when the user names none: face photos get the face model.

:func:`choose_shipped_model` looks at a small sample of the images: ink on plain paper (the
recipe inference of :mod:`oneshot.embedder.recipes`) keeps the handwriting model; photos in
which dlib's detector finds a face, in at least :data:`FACE_SHARE` of the sample, get the face
model. Anything else keeps the handwriting model (the default), and the reason says so.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from oneshot.embedder.artifact import DEFAULT_MODEL, FACE_MODEL
from oneshot.embedder.recipes import infer_recipe
from oneshot.errors import MissingDataError

log = logging.getLogger(__name__)

FACE_SHARE = 0.5   # a gallery is of faces when at least half of its sampled photos hold one
SAMPLE = 24        # photos looked at


def sample_rows(count: int, size: int = SAMPLE) -> np.ndarray:
    """Up to ``size`` row positions spread evenly over ``count`` rows (no randomness)."""
    return np.unique(np.linspace(0, count - 1, num=min(size, count)).round().astype(np.int64)) if count else \
        np.zeros(0, dtype=np.int64)


def choose_shipped_model(images: Sequence[np.ndarray]) -> tuple[Path, str]:
    """(the shipped model file for these sample images, a one-line reason)."""
    if not len(images):
        return DEFAULT_MODEL, "the handwriting model (no images to look at)"
    recipe, why = infer_recipe(images)
    if recipe.kind == "handwriting":
        return DEFAULT_MODEL, f"the handwriting model: the images look like {why}"
    from oneshot.embedder.faces import as_rgb, face_finder

    try:
        finder = face_finder()
        with_face = sum(bool(finder.boxes(as_rgb(image))) for image in images)
    except MissingDataError as error:  # dlib missing (the face extra): say so, keep the default
        return DEFAULT_MODEL, f"the handwriting model: photos, but faces cannot be looked for ({error})"
    if with_face >= FACE_SHARE * len(images):
        return FACE_MODEL, f"the face model: a face in {with_face} of {len(images)} sampled photos"
    return DEFAULT_MODEL, (f"the handwriting model: photos, but a face in only {with_face} of {len(images)} sampled "
                           "(train one on your photos with `oneshot train --data`)")
