"""Raw pixels as a baseline: the store's own images, preprocessed by its recipe, compared directly.

``oneshot eval`` puts this beside the model on the same episodes, pairs and splits, so a user sees
at once whether the model helps on their data. The images are read back through
:func:`~oneshot.data.source.open_source` from the store's ``source`` metadata.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from oneshot.data.source import open_source, read_images
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import OneshotError

log = logging.getLogger(__name__)
MAX_IMAGES = 100_000
_CHUNK = 2048


def raw_pixel_vectors(table: pd.DataFrame, metadata: dict) -> tuple[np.ndarray | None, str]:
    """Flattened preprocessed pixels of the store's rows: (float32 (N, C*S*S) or None, where from / why not)."""
    source, recipe = metadata.get("source"), metadata.get("recipe")
    if not source or not recipe:
        return None, "the store does not say which images and recipe made it"
    if len(table) > MAX_IMAGES:
        return None, f"more than {MAX_IMAGES} images"
    try:
        opened = open_source(source)
    except OneshotError as error:
        return None, f"cannot read the store's source again ({error})"
    paths = list(table["path"])
    missing = set(paths) - set(opened.table["path"])
    if missing:
        return None, f"{source} no longer holds {len(missing)} of the store's images"
    recipe = Recipe.from_dict(recipe)
    chunks = []
    for start in range(0, len(paths), _CHUNK):
        images = read_images(opened, paths[start : start + _CHUNK], color=recipe.channels == 3)
        chunks.append(recipe.batch(images).reshape(len(images), -1))
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32), f"{source} with the store's recipe"
