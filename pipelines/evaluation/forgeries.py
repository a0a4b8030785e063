"""Genuine-versus-forgery verification for ``writer/genuine|forged`` stores (see :mod:`oneshot.data.forgeries`).

Positive pairs are two genuine images of one writer; negative pairs a genuine image and a skilled
forgery of the same writer. The threshold is calibrated on half the writers and the report is on
the other half; the EER needs no threshold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric
from oneshot.pipelines.evaluation.verification import calibrate_threshold, pair_scores, verification_report


def _writer_pairs(labels: np.ndarray, forged: np.ndarray, writers: np.ndarray, n_pairs: int, rng):
    a, b, same = [], [], []
    for k in range(n_pairs):
        writer = writers[rng.integers(len(writers))]
        genuine = np.flatnonzero((labels == writer) & ~forged)
        if k % 2 == 0:
            i, j = rng.choice(genuine, 2, replace=False)
            a.append(i), b.append(j), same.append(True)
        else:
            a.append(rng.choice(genuine)), b.append(rng.choice(np.flatnonzero((labels == writer) & forged)))
            same.append(False)
    return np.array(a, np.int64), np.array(b, np.int64), np.array(same)


def forgery_verification(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric | str, n_pairs: int = 2000,
                         seed: int = 0) -> dict:
    """Genuine-vs-forgery accuracy (threshold from other writers), ROC AUC and EER."""
    labels = table["label"].astype(str).to_numpy()
    forged = table["forged"].astype(bool).to_numpy()
    writers = np.array([w for w in np.unique(labels)
                        if ((labels == w) & ~forged).sum() >= 2 and ((labels == w) & forged).any()])
    if len(writers) < 2:
        raise InvalidInputError("genuine-vs-forgery needs 2 writers with 2 genuine images and a forgery each")
    rng = np.random.default_rng(seed)
    calibrate = rng.choice(writers, len(writers) // 2, replace=False)
    report = np.setdiff1d(writers, calibrate)
    cal = _writer_pairs(labels, forged, calibrate, n_pairs, rng)
    rep = _writer_pairs(labels, forged, report, n_pairs, rng)
    threshold = calibrate_threshold(pair_scores(embeddings, cal[0], cal[1], metric), cal[2])
    out = verification_report(pair_scores(embeddings, rep[0], rep[1], metric), rep[2], threshold)
    return {**out, "threshold_calibrated_on": f"{len(calibrate)} writers disjoint from the {len(report)} reported on",
            "n_writers": int(len(writers)), "n_forgeries": int(forged.sum())}
