"""Benchmark scripts: each prints its figures and writes them as JSON (see :func:`write_result`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from oneshot.atomic import atomic_path


def validation_alphabets(data: str | os.PathLike | None):
    """The background validation alphabets of Omniglot (the only images a threshold or setting is
    chosen on): ``(the background split, its table restricted to them, index reset)``."""
    from oneshot.data.omniglot import OmniglotSplit, omniglot_root
    from oneshot.pipelines.jobs.train import VALIDATION_ALPHABETS

    split = OmniglotSplit(omniglot_root(data), "background")
    table = split.table[split.table["group"].isin(VALIDATION_ALPHABETS["background"])].reset_index(drop=True)
    return split, table


def write_result(result: dict, out: str | os.PathLike | None) -> None:
    """Write a benchmark's result as indented JSON at ``out`` (atomically, its folder made); None: nothing."""
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
