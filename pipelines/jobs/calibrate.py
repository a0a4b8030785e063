"""Calibrate a model file's thresholds on a labelled source and store them in its info (weights untouched).

Used for the shipped model (Omniglot background validation alphabets) and for any model a user
wants to calibrate on their own held-out data (never on what they report on). With a re-ranking
model, the margin ``identify --rerank`` uses for this model's indexes is chosen there too. A model
that re-ranks by a trained score (map matchers) also gets the "unknown" threshold of that score.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pandas as pd

from oneshot.data.forgeries import has_forgeries
from oneshot.data.source import ImageSource, describe_source, open_source, rows_of_groups
from oneshot.embedder.artifact import load_model, rewrite_info
from oneshot.embedder.ensemble import reranks_by_trained_score
from oneshot.errors import InvalidInputError
from oneshot.pipelines.engines.local import encode_source, prepare_batch
from oneshot.pipelines.evaluation.evaluate import oneshot_episodes
from oneshot.pipelines.evaluation.reranked import KEEP, MARGINS, margin_by_rule, rerank_episodes
from oneshot.pipelines.evaluation.thresholds import (
    calibrate_thresholds,
    calibrate_unknown_scored,
    rows_of_drawn_classes,
)
from oneshot.pipelines.jobs.evaluate import feasible_way
from oneshot.pipelines.reading import Rejects

RERANK_EPISODES = 1000


def calibrate_model_file(model_path: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None,
                         groups: list[str] | None = None, split: str | None = None, seed: int = 0,
                         command: str | None = None, rerank=None) -> dict:
    """Calibrate ``model_path``'s verification, "unknown" and clustering thresholds on ``data`` (only ``groups``
    of it, if given) and write the model with them to ``out`` (default: in place).

    ``rerank``: a :class:`~oneshot.pipelines.engines.rerank.Reranker`; the margin it re-scores this
    model's hesitant queries at is then chosen on the same data (:func:`calibrate_rerank_margin`) and
    stored as ``info["rerank_margin"]``, where ``identify --rerank`` finds it.

    Returns:
        The thresholds stored (``info["thresholds"]``), and ``"rerank_margin"``'s record when asked.
    """
    model = load_model(model_path)
    if rerank is not None:
        check_rerank_pair(model, rerank)  # before the encoding, not after
    source = open_source(data, split=split)
    table = source.table
    if groups:
        table = table[rows_of_groups(table, groups, f"the data {describe_source(source)}")].reset_index(drop=True)
    from oneshot.data.omniglot import OmniglotSplit

    name = f"omniglot/{split or 'background'}" if isinstance(source, OmniglotSplit) else describe_source(source)
    described = name + (f" (split {split})" if split and not isinstance(source, OmniglotSplit) else "") + \
        (f", groups {sorted(groups)}" if groups else "")
    subset = copy.copy(source)
    subset.table = table.reset_index(drop=True)
    rejects = Rejects()  # unreadable files and photos without a face are left out, and counted
    table, embeddings = encode_source(model, subset, rejects, show_progress=False)
    if rejects.items:
        described += f", {len(rejects.items)} of {len(subset.table)} images left out (unreadable or no face found)"
    forged = table["forged"].astype(bool).to_numpy() if has_forgeries(table) else None
    thresholds = calibrate_thresholds(embeddings, table["label"].to_numpy(), model.metric, described, seed, forged,
                                      groups=table["group"].to_numpy())
    genuine = ~forged if forged is not None else np.ones(len(table), bool)
    if reranks_by_trained_score(model):  # read again: only the rows encode_source could read, within the cap
        held = table[genuine].reset_index(drop=True)
        drawn = held.iloc[rows_of_drawn_classes(held["label"].to_numpy(), TRAINED_SCORE_ROWS, seed)]
        batch = prepare_batch(subset, drawn, model.recipe)
        labels = drawn.set_index("id").loc[batch.rows["id"], "label"].to_numpy()
        thresholds["unknown_reranked"] = calibrate_reranked_unknown(model, batch.pixels, labels, described, seed,
                                                                    held_out=len(held))
    for found in thresholds.values():
        found["command"] = command
    info = {**model.info, "thresholds": thresholds}
    if rerank is not None:
        info["rerank_margin"] = {**calibrate_rerank_margin(model, table[genuine].reset_index(drop=True),
                                                           embeddings[genuine], rerank, subset, described, seed),
                                 "command": command}
    rewrite_info(model, Path(out) if out is not None else Path(model_path), info)
    return {**thresholds, **({"rerank_margin": info["rerank_margin"]} if rerank is not None else {})}


TRAINED_SCORE = "trained score: the cosine less the map matchers' learned weight times the match distance"
#: Held-out images the trained score's calibration encodes at most (whole classes, drawn with the
#: seed): each matcher keeps 32 KB an image in memory, so 8,192 images take 256 MB a matcher.
TRAINED_SCORE_ROWS = 8192


def calibrate_reranked_unknown(model, pixels: np.ndarray, labels: np.ndarray, described: str, seed: int = 0,
                               held_out: int | None = None) -> dict:
    """The "unknown" threshold on the score ``model`` re-scores by as a re-ranker, for a model that
    re-scores by a trained score (:func:`~oneshot.embedder.ensemble.reranks_by_trained_score`: a map
    matcher, or an ensemble with such members); a cosine re-ranker's is its "unknown" threshold.

    The rule and split are the "unknown" threshold's (:func:`calibrate_unknown_scored`), every pair
    scored from the images' encodings, kept in memory; past ``TRAINED_SCORE_ROWS`` images, on
    whole classes drawn with ``seed`` (:func:`rows_of_drawn_classes`), and the record says so.

    Args:
        pixels: float32 (N, C, H, W) held-out images as ``model``'s recipe prepares them.
        labels: (N,) their classes.
        held_out: how many held-out images there were when the caller drew ``pixels`` from more
            (for the record); default N.
    Returns:
        The record, or one saying why instead of a value when it cannot be calibrated.
    """
    from oneshot.pipelines.engines.rerank import Reranker

    held_out = held_out or len(labels)
    if len(labels) > TRAINED_SCORE_ROWS:
        drawn = rows_of_drawn_classes(labels, TRAINED_SCORE_ROWS, seed)
        pixels, labels = pixels[drawn], np.asarray(labels)[drawn]
    if len(labels) < held_out:
        described += (f"; scored on {len(labels)} of its {held_out} images (whole classes drawn with seed {seed}, "
                      f"at most {TRAINED_SCORE_ROWS})")
    rerank = Reranker(model, None, margin=None)
    entries = rerank.encode_pixels(np.ascontiguousarray(pixels, dtype=np.float32))

    def score(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        return rerank.score_entries([entries[i] for i in rows_a], [entries[j] for j in rows_b])

    try:
        return calibrate_unknown_scored(score, labels, described, seed, what=TRAINED_SCORE)
    except InvalidInputError as error:
        return {"value": None, "calibrated_on": described, "not_calibrated": str(error)}


def check_rerank_pair(model, rerank) -> None:
    """Refuse a model and re-ranking model ``identify --rerank`` would refuse together."""
    if model.metric != "cosine":
        raise InvalidInputError(f"re-ranking margins are in the index model's cosine; this model gives "
                                f"{model.metric!r} vectors")
    rerank.check_base(model, "the model")


def calibrate_rerank_margin(model, table: pd.DataFrame, embeddings: np.ndarray, rerank, source: ImageSource,
                            described: str, seed: int = 0) -> dict:
    """The margin (in ``model``'s cosine) below which ``rerank`` should re-score ``model``'s answers,
    chosen on labelled held-out rows.

    On seeded 20-way one-shot episodes of ``table`` (within a group when there are groups; fewer
    ways when the data has fewer classes), every margin of ``MARGINS`` is scored
    (:func:`~oneshot.pipelines.evaluation.reranked.rerank_episodes`); the chosen one re-scores the
    fewest queries while keeping ``KEEP`` of the gain of re-scoring every query. When re-scoring
    every query gains nothing here, the margin is 0 (never re-score); when no margin keeps enough,
    2 (every query: cosine gaps are below 2).

    Args:
        embeddings: (N, D) ``model``'s vectors of ``table``'s rows (``id``, ``path``, ``label``, ``group``).
        source: where ``table``'s paths are read from.
    Returns:
        The record ``info["rerank_margin"]`` keeps: ``value``, ``chosen_on``, ``rule``, ``reranker``,
        and every margin's accuracy (``runs``) beside the model alone's (``first_accuracy``).
    """
    check_rerank_pair(model, rerank)
    way, within = feasible_way(table, 20, True)
    episodes = oneshot_episodes(table, way, 1, RERANK_EPISODES, within, seed)
    rerank.bind_rows(table, "the data", source=source)
    runs = []
    for margin in MARGINS:
        rerank.margin = margin
        result = rerank_episodes(embeddings, episodes, model.metric, table["id"].to_numpy(), rerank)
        runs.append({"margin": margin, "accuracy": result["accuracy"],
                     "reranked_share": result["reranked"] / result["queries"]})
    first, full = result["first_accuracy"], runs[0]["accuracy"]
    chosen = margin_by_rule(first, runs)
    value = chosen["margin"] if chosen is not None else (2.0 if full > first else 0.0)
    rule = (f"the margin re-scoring the fewest queries whose gain over the model alone is >= {KEEP:.0%} of "
            f"re-scoring every query's, of {[m for m in MARGINS if m is not None]}; 0 (never) when re-scoring every "
            "query gains nothing, 2 (every query) when no margin keeps enough")
    rerank.margin, rerank.margin_source = value, "chosen here"
    return {"value": value, "chosen_on": f"{described}: {len(episodes)} {way}-way one-shot episodes"
                                         f"{' within groups' if within else ''} (seed {seed})",
            "rule": rule, "reranker": f"{rerank.name} (fingerprint {rerank.fingerprint})",
            "first_accuracy": first, "runs": runs}
