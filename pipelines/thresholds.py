"""Thresholds a model carries: 1:1 verification and 1:K "unknown", calibrated out of sample.

A trained model's thresholds are calibrated on its validation split (images and, by default,
classes it never trained on) and stored in the model file's info::

    info["thresholds"] = {"verification": {"value", "metric", "calibrated_on", "rule", "n_pairs"},
                          "unknown": {"value", "metric", "calibrated_on", "rule", ...}}

``identify`` and ``verify`` use them unless given another threshold, and say which one they used
(:func:`resolve_threshold`).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.metric import get_metric

log = logging.getLogger(__name__)
KINDS = ("verification", "unknown")


def _forgery_pairs(labels: np.ndarray, forged: np.ndarray, n_pairs: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(genuine of a writer, forgery of the same writer) row pairs."""
    writers = [w for w in np.unique(labels[forged]) if ((labels == w) & ~forged).any()]
    if not writers:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    chosen = rng.choice(len(writers), n_pairs)
    a = np.array([rng.choice(np.flatnonzero((labels == writers[c]) & ~forged)) for c in chosen], np.int64)
    b = np.array([rng.choice(np.flatnonzero((labels == writers[c]) & forged)) for c in chosen], np.int64)
    return a, b


# The calibrations import their pipelines (and through them scikit-learn) when they run, so that
# reading a model's thresholds (``identify``, ``verify``) starts fast.


def calibrate_verification(embeddings: np.ndarray, labels: np.ndarray, metric, described: str,
                           n_pairs: int = 2000, seed: int = 0, forged: np.ndarray | None = None) -> dict:
    """The accuracy-maximising 1:1 threshold on balanced pairs of ``embeddings`` (N, D).

    With ``forged`` (N,) bool, a third of the negatives are (genuine, forgery of the same writer).
    """
    from oneshot.pipelines.verify import calibrate_threshold, pair_scores, sample_pairs

    labels = np.asarray(labels, dtype=object).astype(str)
    forged = np.zeros(len(labels), bool) if forged is None else np.asarray(forged, bool)
    genuine = np.flatnonzero(~forged)
    a, b, same = sample_pairs(labels[genuine], n_pairs, seed)
    a, b = genuine[a], genuine[b]
    rule = "accuracy-maximising on balanced same/different-class pairs"
    if forged.any():
        rng = np.random.default_rng(seed + 7)
        fa, fb = _forgery_pairs(labels, forged, max(1, int(same.sum()) // 2), rng)
        a, b, same = np.concatenate([a, fa]), np.concatenate([b, fb]), np.concatenate([same, np.zeros(len(fa), bool)])
        rule += " plus genuine-vs-forgery pairs as negatives"
    scores = pair_scores(embeddings, a, b, metric)
    value = calibrate_threshold(scores, same)
    return {"value": float(value), "metric": get_metric(metric).name, "calibrated_on": described, "rule": rule,
            "n_pairs": int(len(same))}


def calibrate_unknown(embeddings: np.ndarray, labels: np.ndarray, metric, described: str, seed: int = 0) -> dict:
    """The "unknown" threshold of 1:K identification: half the classes (seeded) are known, one
    image each in the gallery and the rest as known queries; every image of the other half is an
    unknown query; the threshold maximises open-set accuracy."""
    from oneshot.index.search import ExactSearch
    from oneshot.pipelines.identify import calibrate_unknown_threshold

    labels = np.asarray(labels, dtype=object).astype(str)
    classes = np.unique(labels)
    if len(classes) < 4:
        raise InvalidInputError(f"need at least 4 classes to calibrate the unknown threshold, got {len(classes)}")
    rng = np.random.default_rng(seed)
    known_classes = set(rng.choice(classes, len(classes) // 2, replace=False))
    known = np.isin(labels, list(known_classes))
    first = pd.Series(np.arange(len(labels)))[known].groupby(labels[known]).first().to_numpy()
    in_gallery = np.zeros(len(labels), bool)
    in_gallery[first] = True
    queries = known & ~in_gallery
    if not queries.any():
        raise InvalidInputError("known classes need 2 or more images each to calibrate the unknown threshold")
    table = pd.DataFrame({"id": np.flatnonzero(in_gallery), "path": "", "label": labels[in_gallery], "group": ""})
    index = ExactSearch(embeddings[in_gallery], table, metric)
    value = calibrate_unknown_threshold(index, embeddings[queries], labels[queries], embeddings[~known])
    return {"value": float(value), "metric": get_metric(metric).name, "calibrated_on": described,
            "rule": "open-set accuracy: half the classes known (1 image each in the gallery), half unknown",
            "gallery_per_class": 1, "n_known_queries": int(queries.sum()), "n_unknown_queries": int((~known).sum())}


def calibrate_thresholds(embeddings: np.ndarray, labels: np.ndarray, metric, described: str, seed: int = 0,
                         forged: np.ndarray | None = None, groups: np.ndarray | None = None) -> dict:
    """Every threshold a model carries; a kind that cannot be calibrated records why instead of a value.

    ``verification`` and ``unknown`` (see above) and ``cluster`` (``cluster_distance`` and
    ``cluster_radius`` of :func:`oneshot.pipelines.cluster_calibration.calibrate_cluster_threshold`,
    within ``groups`` when given), all on the same held-out images.
    """
    from oneshot.pipelines.cluster_calibration import calibrate_cluster_threshold

    genuine = ~np.asarray(forged, bool) if forged is not None else np.ones(len(labels), dtype=bool)
    labels = np.asarray(labels)
    table = pd.DataFrame({"label": labels[genuine].astype(str),
                          "group": (np.asarray(groups)[genuine].astype(str) if groups is not None else "")})
    out = {}
    for kind, fn in (("verification", lambda: calibrate_verification(embeddings, labels, metric, described,
                                                                     seed=seed, forged=forged)),
                     ("unknown", lambda: calibrate_unknown(embeddings[genuine], labels[genuine], metric, described,
                                                           seed)),
                     ("cluster", lambda: {**calibrate_cluster_threshold(embeddings[genuine], table, metric),
                                          "calibrated_on": described})):
        try:
            out[kind] = fn()
        except InvalidInputError as error:
            out[kind] = {"value": None, "calibrated_on": described, "not_calibrated": str(error)}
            log.warning("%s threshold not calibrated: %s", kind, error)
    return out


def resolve_threshold(model, kind: str, given: float | str | None = "model") -> tuple[float | None, str]:
    """The threshold to use and where it came from.

    Args:
        model: an ``Embedder`` with ``info`` (from its file).
        kind: ``"verification"`` or ``"unknown"``.
        given: a number (used as is), ``None``/``"none"`` (no threshold), or ``"model"`` (the
            model's own calibrated threshold, if it has one).
    Returns:
        (value or None, a sentence for the user).
    """
    if kind not in KINDS:
        raise InvalidInputError(f"threshold kind must be one of {KINDS}, got {kind!r}")
    if given is None or (isinstance(given, str) and given.lower() == "none"):
        return None, "no threshold (every answer accepted)"
    if isinstance(given, str) and given.lower() != "model":
        try:
            given = float(given)
        except ValueError:
            raise InvalidInputError(f"threshold must be a number, 'model' or 'none', got {given!r}") from None
    if not isinstance(given, str):
        return float(given), "given on the command line"
    stored = (getattr(model, "info", None) or {}).get("thresholds", {}).get(kind) or {}
    if stored.get("value") is None:
        why = stored.get("not_calibrated", "the model file carries none")
        return None, f"no threshold: {why}"
    return float(stored["value"]), (f"the model's {kind} threshold, calibrated on {stored.get('calibrated_on', '?')} "
                                    f"({stored.get('rule', '')})")
