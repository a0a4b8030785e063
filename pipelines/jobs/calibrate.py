"""Calibrate a model file's thresholds on a labelled source and store them in its info (weights untouched).

Used for the shipped model (Omniglot background validation alphabets) and for any model a user
wants to calibrate on their own held-out data (never on what they report on).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from oneshot.data.forgeries import has_forgeries
from oneshot.data.source import describe_source, open_source, rows_of_groups
from oneshot.embedder.artifact import load_model, rewrite_info
from oneshot.pipelines.engines.local import encode_source
from oneshot.pipelines.evaluation.thresholds import calibrate_thresholds
from oneshot.pipelines.reading import Rejects


def calibrate_model_file(model_path: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None,
                         groups: list[str] | None = None, split: str | None = None, seed: int = 0,
                         command: str | None = None) -> dict:
    """Calibrate ``model_path``'s verification, "unknown" and clustering thresholds on ``data`` (only ``groups``
    of it, if given) and write the model with them to ``out`` (default: in place).

    Returns:
        The thresholds stored (``info["thresholds"]``).
    """
    model = load_model(model_path)
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
    for found in thresholds.values():
        found["command"] = command
    info = {**model.info, "thresholds": thresholds}
    rewrite_info(model, Path(out) if out is not None else Path(model_path), info)
    return thresholds
