"""Thresholds a model carries: 1:1 verification and 1:K "unknown", calibrated out of sample.

A trained model's thresholds are calibrated on its validation split (images and, by default,
classes it never trained on) and stored in the model file's info::

    info["thresholds"] = {"verification": {"value", "metric", "calibrated_on", "rule", "n_pairs"},
                          "unknown": {"value", "metric", "calibrated_on", "rule", ...}}

A model that re-ranks by a trained score (map matchers) also carries ``"unknown_reranked"``: the
"unknown" threshold on that score, for the queries it re-scores (:func:`calibrate_unknown_scored`).

``identify``, ``verify``, ``cluster`` and the report use them unless given another threshold, and
say which one they used: :func:`resolve_threshold` is the one resolver of every kind (the
clustering thresholds of :mod:`~oneshot.pipelines.evaluation.cluster_thresholds` included).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.metric import get_metric

log = logging.getLogger(__name__)
KINDS = ("verification", "unknown", "unknown_reranked")
ALL_KINDS = KINDS + ("cluster_distance", "cluster_radius")


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
    from oneshot.pipelines.evaluation.verification import calibrate_threshold, pair_scores, sample_pairs

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
    from oneshot.pipelines.evaluation.open_set import calibrate_unknown_threshold

    labels, in_gallery, queries, known = _half_known(labels, seed)
    table = pd.DataFrame({"id": np.flatnonzero(in_gallery), "path": "", "label": labels[in_gallery], "group": ""})
    index = ExactSearch(embeddings[in_gallery], table, metric)
    value = calibrate_unknown_threshold(index, embeddings[queries], labels[queries], embeddings[~known])
    return _unknown_record(value, get_metric(metric).name, described, queries, known,
                           calibrate_unknown_by_size(embeddings, labels, metric, seed))


def _unknown_record(value: float, metric: str, described: str, queries: np.ndarray, known: np.ndarray,
                    by_size: dict) -> dict:
    """The record of a half-known "unknown" threshold (:func:`_half_known`'s ``queries`` and ``known``),
    with its per-database-size values when any size could be calibrated."""
    found = {"value": float(value), "metric": metric, "calibrated_on": described, "rule": HALF_KNOWN_RULE,
             "gallery_per_class": 1, "n_known_queries": int(queries.sum()), "n_unknown_queries": int((~known).sum())}
    if by_size["enrolled"]:
        found["by_enrolled"] = by_size
    return found


SCORED_ROWS = 2048  # query rows :func:`calibrate_unknown_scored` scores against the gallery at once
HALF_KNOWN_RULE = "open-set accuracy: half the classes known (1 image each in the gallery), half unknown"


def rows_of_drawn_classes(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Row positions (sorted) of whole classes drawn in a seeded order while their rows fit in
    ``limit`` (a class that does not fit is passed over for a smaller one); every row when there
    are no more than ``limit``.

    Args:
        labels: (N,) class of each row.
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    if len(labels) <= limit:
        return np.arange(len(labels))
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    taken, total = np.zeros(len(classes), bool), 0
    for c in np.random.default_rng(seed + 23).permutation(len(classes)):
        if total + counts[c] <= limit:
            taken[c], total = True, total + counts[c]
    return np.flatnonzero(taken[codes])


def _half_known(labels: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """The half-known split of :func:`calibrate_unknown`: (labels as str (N,), in the gallery (N,),
    known queries (N,), of a known class (N,)), the last three bool."""
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
    return labels, in_gallery, queries, known


def calibrate_unknown_scored(score, labels: np.ndarray, described: str, seed: int = 0, what: str = "score") -> dict:
    """:func:`calibrate_unknown` for a score that is not a vector metric (e.g. a re-ranking model's
    trained score with map matchers): the same split and rule, and thresholds per database size.

    Args:
        score: ``score(rows_a (A,), rows_b (B,)) -> (A, B)`` similarities of row positions, higher
            closer (NaN: no score; never the best).
        labels: (N,) class of each row.
        what: how the record names the score (``metric``).
    """
    from oneshot.pipelines.evaluation.metrics import best_threshold

    labels, in_gallery, queries, known = _half_known(labels, seed)
    gallery = np.flatnonzero(in_gallery)
    positive, negative = [], []
    for rows, is_known in ((np.flatnonzero(queries), True), (np.flatnonzero(~known), False)):
        for start in range(0, len(rows), SCORED_ROWS):  # (rows, gallery) scores a chunk at a time
            chunk = rows[start : start + SCORED_ROWS]
            scores = np.nan_to_num(score(chunk, gallery), nan=-np.inf)
            best = scores.max(axis=1)
            if is_known:
                positive.append(best[(labels[gallery][scores.argmax(axis=1)] == labels[chunk]) & np.isfinite(best)])
            else:
                negative.append(best[np.isfinite(best)])
    value, _ = best_threshold(np.concatenate(positive), np.concatenate(negative))
    return _unknown_record(value, what, described, queries, known, unknown_by_size(score, labels, seed))


#: Database sizes (people or classes enrolled) the "unknown" threshold is calibrated for.
ENROLLED_SIZES = (10, 30, 100, 300, 1000, 3000)


def calibrate_unknown_by_size(embeddings: np.ndarray, labels: np.ndarray, metric, seed: int = 0,
                              sizes: tuple[int, ...] = ENROLLED_SIZES, queries: int = 4000) -> dict:
    """The "unknown" threshold for databases of each size: the best score of a query rises with the
    number of people enrolled, so one threshold cannot suit 20 and 2,000 alike.

    For each size n (while 2n classes have 2 or more images): seeded draws of n enrolled classes
    (one image each in the gallery; another image of each is a known query) and n other classes
    (one image each: unknown queries), about ``queries`` known queries in all; the threshold
    maximises right answers over the pooled queries (a known query is right when named right and
    accepted, an unknown one when rejected).

    Returns:
        ``{"enrolled": [n, ...], "values": [threshold, ...], "draws": [...], "rule": ...}``.
    """
    similarity = get_metric(metric)
    prepared = np.ascontiguousarray(embeddings, dtype=np.float32)
    return unknown_by_size(lambda a, b: similarity.similarity(prepared[a], prepared[b]), labels, seed, sizes, queries)


def unknown_by_size(score, labels: np.ndarray, seed: int = 0, sizes: tuple[int, ...] = ENROLLED_SIZES,
                    queries: int = 4000) -> dict:
    """:func:`calibrate_unknown_by_size` for any ``score(rows_a (A,), rows_b (B,)) -> (A, B)``
    (higher closer; NaN: no score, never the best)."""
    from oneshot.pipelines.evaluation.metrics import best_threshold
    from oneshot.pipelines.evaluation.verification import _csr

    classes, codes, order, starts = _csr(np.asarray(labels, dtype=object).astype(str))
    counts = np.bincount(codes, minlength=len(classes))
    eligible = np.flatnonzero(counts >= 2)
    rng = np.random.default_rng(seed + 11)
    out = {"enrolled": [], "values": [], "draws": [],
           "rule": "open-set accuracy on databases of n classes (1 image each) queried by another image of each and "
                   "by one image of each of n classes not enrolled"}
    for size in sizes:
        if 2 * size > len(eligible):
            break
        draws = max(1, queries // size)
        positive, negative = [], []
        for _ in range(draws):
            chosen = rng.choice(eligible, 2 * size, replace=False)
            pick = [order[starts[c] + rng.choice(counts[c], 2, replace=False)] for c in chosen[:size]]
            gallery = np.array([p[0] for p in pick])
            known = np.array([p[1] for p in pick])
            unknown = np.array([order[starts[c] + rng.integers(counts[c])] for c in chosen[size:]])
            known_scores = np.nan_to_num(score(known, gallery), nan=-np.inf)
            unknown_best = np.nan_to_num(score(unknown, gallery), nan=-np.inf).max(axis=1)
            right = known_scores.argmax(axis=1) == np.arange(size)
            positive.append(known_scores.max(axis=1)[right])
            negative.append(unknown_best)
        positive, negative = np.concatenate(positive), np.concatenate(negative)
        value, _ = best_threshold(positive[np.isfinite(positive)], negative[np.isfinite(negative)])
        out["enrolled"].append(int(size))
        out["values"].append(float(value))
        out["draws"].append(int(draws))
    return out


def threshold_for_enrolled(by_enrolled: dict, enrolled: int) -> tuple[float, str]:
    """The threshold of a database of ``enrolled`` people: linear in log(n) between the sizes calibrated,
    the nearest one outside them. Returns (value, how it was read)."""
    sizes = np.asarray(by_enrolled["enrolled"], dtype=np.float64)
    values = np.asarray(by_enrolled["values"], dtype=np.float64)
    n = float(max(1, enrolled))
    if n <= sizes[0] or n >= sizes[-1]:
        nearest = 0 if n <= sizes[0] else len(sizes) - 1
        return float(values[nearest]), f"as calibrated for {int(sizes[nearest])} enrolled (this index: {enrolled})"
    value = float(np.interp(np.log(n), np.log(sizes), values))
    below = int(sizes[sizes <= n].max())
    above = int(sizes[sizes >= n].min())
    how = (f"as calibrated for {below} enrolled" if below == above else
           f"between those calibrated for {below} and {above} enrolled, for this index's {enrolled}")
    return value, how


def calibrate_thresholds(embeddings: np.ndarray, labels: np.ndarray, metric, described: str, seed: int = 0,
                         forged: np.ndarray | None = None, groups: np.ndarray | None = None) -> dict:
    """Every threshold a model carries; a kind that cannot be calibrated records why instead of a value.

    ``verification`` and ``unknown`` (see above) and ``cluster`` (``cluster_distance`` and
    ``cluster_radius`` of :func:`oneshot.pipelines.evaluation.cluster_thresholds.calibrate_cluster_threshold`,
    within ``groups`` when given), all on the same held-out images.
    """
    from oneshot.pipelines.evaluation.cluster_thresholds import calibrate_cluster_threshold

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


def carried_threshold(info: dict | None, kind: str) -> dict:
    """What a model's ``info`` carries for ``kind`` (``{}`` when nothing): ``{"value", "calibrated_on", "rule", ...}``.

    ``verification`` and ``unknown`` live at ``info["thresholds"][kind]``; the clustering thresholds
    at ``info["thresholds"]["cluster"][kind]`` (where training and ``oneshot calibrate`` put them),
    or directly under ``info["thresholds"]`` in older files.
    """
    thresholds = (info or {}).get("thresholds") or {}
    if kind in KINDS:
        return thresholds.get(kind) or {}
    for holder in (thresholds.get("cluster"), thresholds):
        if (holder or {}).get(kind) is not None:
            return {"value": float(holder[kind]), "calibrated_on": holder.get("calibrated_on"),
                    "rule": holder.get("rule")}
    return {}


def config_threshold(config: dict, kind: str) -> dict:
    """:func:`carried_threshold` of a model file's config: its ``info``, or (older files) its top level."""
    return carried_threshold(config.get("info"), kind) or carried_threshold(config, kind)


def resolve_threshold(model, kind: str, given: float | str | None = "model", owner: str = "the model",
                      default: tuple[float, str] | None = None, enrolled: int | None = None) -> tuple[float | None, str]:
    """The threshold to use and the one sentence that says where it came from.

    Args:
        model: an ``Embedder`` (its ``info``), a model file's config (its ``"info"``), or None.
        kind: ``"verification"``, ``"unknown"``, ``"unknown_reranked"``, ``"cluster_distance"`` or
            ``"cluster_radius"``.
        given: a number (used as is), ``None``/``"none"`` (no threshold), or ``"model"`` (the
            model's own calibrated threshold, if it has one).
        owner: how the sentence names the model (e.g. ``"the shipped model default.safetensors"``).
        default: (value, where it came from) to use when the model carries none.
        enrolled: for the "unknown" kinds, how many people (classes) the index holds: a model calibrated
            per database size (``by_enrolled``) gives the threshold of that size.
    Returns:
        (value or None, a sentence for the user).
    """
    if kind not in ALL_KINDS:
        raise InvalidInputError(f"threshold kind must be one of {ALL_KINDS}, got {kind!r}")
    if given is None or (isinstance(given, str) and given.lower() == "none"):
        return None, "no threshold (every answer accepted)"
    if isinstance(given, str) and given.lower() != "model":
        try:
            given = float(given)
        except ValueError:
            raise InvalidInputError(f"threshold must be a number, 'model' or 'none', got {given!r}") from None
    if not isinstance(given, str):
        return float(given), "given on the command line"
    if isinstance(model, dict):
        stored = config_threshold(model, kind)
    else:
        stored = carried_threshold(getattr(model, "info", None), kind)
    if stored.get("value") is None:
        if default is not None:
            return float(default[0]), default[1]
        why = stored.get("not_calibrated", "the model file carries none")
        return None, f"no threshold: {why}"
    calibrated = f", calibrated on {stored['calibrated_on']}" if stored.get("calibrated_on") else ""
    by_size = stored.get("by_enrolled") or {}
    if kind.startswith("unknown") and enrolled is not None and by_size.get("enrolled"):
        value, how = threshold_for_enrolled(by_size, enrolled)
        return value, f"carried by {owner}{calibrated}, {how} ({by_size['rule']})"
    rule = f" ({stored['rule']})" if stored.get("rule") else ""
    return float(stored["value"]), f"carried by {owner}{calibrated}{rule}"


def resolve_cluster_thresholds(store_metadata: dict | None = None, model: str | os.PathLike | None = None,
                               given: dict | None = None) -> tuple[dict, str]:
    """The clustering thresholds to use (:func:`resolve_threshold` for each) and where they came from.

    Args:
        store_metadata: the store's metadata (its ``model_fingerprint`` picks the shipped model).
        model: a model file whose ``info["thresholds"]`` to read.
        given: values set by the caller (``None`` entries ignored).

    Returns:
        ``({"cluster_distance", "cluster_radius"}, source)``; thresholds from the same place share
        one sentence.
    """
    from oneshot.embedder.artifact import model_path, read_model_config, shipped_model_with
    from oneshot.pipelines.evaluation.cluster_thresholds import (
        DEFAULT_FINGERPRINT,
        DEFAULT_SOURCE,
        DEFAULT_THRESHOLDS,
        THRESHOLD_KEYS,
    )

    given = {k: float(v) for k, v in (given or {}).items() if v is not None}
    fingerprint = (store_metadata or {}).get("model_fingerprint")
    config, owner = None, "the model"
    if model is not None:
        config = read_model_config(model_path(model))
        if fingerprint and config.get("fingerprint") != fingerprint:
            log.warning("the store was made with model %s but --model is %s", fingerprint, config.get("fingerprint"))
        owner = f"the model file {model}"
    elif fingerprint:
        shipped = shipped_model_with(fingerprint)
        if shipped is not None:
            config, owner = read_model_config(shipped), f"the shipped model {shipped.name}"
    values, sources = {}, {}
    for key in THRESHOLD_KEYS:
        values[key], source = resolve_threshold(config, key, given.get(key, "model"), owner,
                                                default=(DEFAULT_THRESHOLDS[key], DEFAULT_SOURCE))
        if source == DEFAULT_SOURCE and fingerprint and fingerprint != DEFAULT_FINGERPRINT:
            log.warning("%s: the default was calibrated for model %s, this store comes from model %s; calibrate "
                        "with pipelines.evaluation.cluster_thresholds.calibrate_cluster_threshold",
                        key, DEFAULT_FINGERPRINT, fingerprint)
        sources.setdefault(source, []).append(f"{key}={values[key]:.4f}")
    return values, "; ".join(f"{', '.join(keys)} ({source})" for source, keys in sources.items())
