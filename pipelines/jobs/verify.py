"""The 1:1 verification job: are two image files the same class (person, writer, character)?"""
from __future__ import annotations

import os

import numpy as np

from oneshot.data.archive import read_image_file
from oneshot.embedder.artifact import as_model
from oneshot.embedder.encode import encode
from oneshot.embedder.faces import NoFaceError
from oneshot.embedder.model import Embedder
from oneshot.embedder.shipped import choose_shipped_model
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.thresholds import resolve_threshold


def verify_images(image_a: str | os.PathLike, image_b: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, threshold: float | str | None = "model") -> dict:
    """1:1 verification of two image files: their similarity and "same or not" at ``threshold``
    (a number, ``"model"``: the model's calibrated verification threshold, or ``None``).

    Without a ``model``, the shipped one that suits the two images (two face photos: the face model).
    """
    paths, choice = (image_a, image_b), ""
    if model is None:  # look at both in colour to choose; then read them as the chosen model reads
        model, choice = choose_shipped_model([read_image_file(path, color=True) for path in paths])
    model = as_model(model)
    images = [read_image_file(path, color=model.recipe.channels == 3) for path in paths]
    pixels = []
    for path, image in zip(paths, images):
        try:
            pixels.append(model.recipe.batch([image]))
        except NoFaceError as error:
            raise NoFaceError(f"{path}: {error}") from error
    vectors = encode(model, np.concatenate(pixels), show_progress=False)
    score = float(get_metric(model.metric).pairwise(vectors[:1], vectors[1:])[0])
    threshold, source = resolve_threshold(model, "verification", threshold)
    return {"a": str(image_a), "b": str(image_b), "metric": model.metric, "score": score,
            "same": None if threshold is None else bool(score >= threshold), "threshold": threshold,
            "threshold_source": source, "model": str(getattr(model, "fingerprint", "")), "model_choice": choice}
