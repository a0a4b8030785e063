"""The 1:1 verification job: are two image files the same class (person, writer, character)?"""
from __future__ import annotations

import os

from oneshot.data.archive import read_image_file
from oneshot.embedder.artifact import as_model
from oneshot.embedder.encode import encode
from oneshot.embedder.model import Embedder
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.thresholds import resolve_threshold


def verify_images(image_a: str | os.PathLike, image_b: str | os.PathLike,
                  model: Embedder | str | os.PathLike | None = None, threshold: float | str | None = "model") -> dict:
    """1:1 verification of two image files: their similarity and "same or not" at ``threshold``
    (a number, ``"model"``: the model's calibrated verification threshold, or ``None``)."""
    model = as_model(model)
    colour = model.recipe.channels == 3
    vectors = encode(model, [read_image_file(image_a, color=colour), read_image_file(image_b, color=colour)],
                     show_progress=False)
    score = float(get_metric(model.metric).pairwise(vectors[:1], vectors[1:])[0])
    threshold, source = resolve_threshold(model, "verification", threshold)
    return {"a": str(image_a), "b": str(image_b), "metric": model.metric, "score": score,
            "same": None if threshold is None else bool(score >= threshold), "threshold": threshold,
            "threshold_source": source}
