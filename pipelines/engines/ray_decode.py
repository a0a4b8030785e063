"""The Ray engine's decode step: read, hash and preprocess one planned batch in a Ray task.

Kept apart from :mod:`oneshot.pipelines.engines.ray` so that decode workers import the readers and
the recipe only (no torch: a worker's first task starts in ~0.3 s instead of ~1.2 s).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from oneshot.data.archive import escape_name
from oneshot.data.content_hash import content_hash
from oneshot.data.source import ImageSource
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError
from oneshot.index.dataset_store import HASH_COLUMN
from oneshot.pipelines.reading import Rejects
from oneshot.pipelines.reading import read_batch as read_images_or_reject


class SharedObject:
    """An object in Ray's object store, fetched once per worker process (not per batch).

    Wrapping the reference keeps Ray from resolving it when it is passed as an argument.
    """

    _cache: dict[str, Any] = {}

    def __init__(self, ref):
        self.ref = ref

    def get(self):
        key = self.ref.hex()
        if key not in SharedObject._cache:
            import ray

            SharedObject._cache.clear()  # one job's objects at a time per worker
            SharedObject._cache[key] = ray.get(self.ref)
        return SharedObject._cache[key]


# ------------------------------------------------------------------------------ decoding


def read_with_rejects(source: ImageSource, paths: list[str],
                      color: bool = False) -> tuple[list[np.ndarray | None], list[str]]:
    """Decode ``paths``: (image or None per path, reason per path: ``""`` when it decoded).

    The same reader as the local engine (:func:`oneshot.pipelines.reading.read_batch`): one bad
    file rejects only itself; the executor's ``on_error`` decides what a reject does.
    """
    collector = Rejects()
    images, kept = read_images_or_reject(source, paths, collector, color=color)
    found = dict(zip(kept, images))
    reasons = dict(collector.items)
    return ([found.get(path) for path in paths],
            ["" if path in found else reasons.get(escape_name(str(path)), "cannot be read") for path in paths])


def decode_batch(batch: dict[str, np.ndarray], source: SharedObject, recipe: Recipe,
                 known: SharedObject | None) -> dict[str, np.ndarray]:
    """A Ray task: read, hash and preprocess one planned batch.

    Args:
        batch: ``id`` (int64) and ``path`` (str) arrays for n rows.
        known: content hash by id (appending): rows whose image is unchanged are not encoded.
    Returns:
        The input columns plus ``content_hash`` (str), ``reason`` (str; ``""`` when the image
        decoded), ``encode`` (bool) and ``pixels`` float32 (n, C, H, W) (zeros where not encoded).
    """
    if recipe.faces == "all" and recipe.kind == "face":
        raise InvalidInputError("embedding every face of a photo (--all-faces) runs on the local engine only")
    images, reasons = read_with_rejects(source.get(), [str(p) for p in batch["path"]], color=recipe.channels == 3)
    hashes = np.array([content_hash(image) if image is not None else "" for image in images], dtype=object)
    encode = np.array([image is not None for image in images], dtype=bool)
    if known is not None and encode.any():
        previous = known.get().reindex(np.asarray(batch["id"], dtype=np.int64)).to_numpy()
        encode &= previous != hashes
    pixels = np.zeros((len(images), recipe.channels, *recipe.shape), dtype=np.float32)
    chosen = np.flatnonzero(encode)
    if len(chosen):
        prepared = recipe.prepare([images[i] for i in chosen])  # a photo without a face: a reject
        for position, reason in prepared.reasons.items():
            row = chosen[position]
            reasons[row] = reason
            encode[row] = False
        pixels[chosen[prepared.kept]] = prepared.pixels
    return {**batch, HASH_COLUMN: hashes, "reason": np.array(reasons, dtype=object), "encode": encode,
            "pixels": pixels}
