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


def model_benchmark_parser(doc: str, models_help: str, out: str):
    """An ``argparse`` parser with the options every benchmark over trained Omniglot models takes:
    ``--data``, ``--models``, ``--episodes``, ``--seed`` and ``--out`` (default ``out``); ``doc``'s
    first line describes it. Callers add their own options."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot root (default: $OMNIGLOT_DIR)")
    parser.add_argument("--models", nargs="+", required=True, help=models_help)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=out)
    return parser


def command_line(module: str, argv: list[str] | None) -> str:
    """How a benchmark was run, for its JSON: ``python -m benchmarks.<module> <arguments>``
    (``argv`` as given to its ``main``, else the process's own)."""
    import sys

    return f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])


def link_photos(photos, target: Path) -> int:
    """Hard-link ``photos`` (paths) into the folder ``target`` (made), keeping names; those already
    there are left. Scratch galleries for benchmarks: no copy, and readers need no link-following."""
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for photo in photos:
        if not (target / photo.name).exists():
            os.link(photo, target / photo.name)
        count += 1
    return count


def write_result(result: dict, out: str | os.PathLike | None) -> None:
    """Write a benchmark's result as indented JSON at ``out`` (atomically, its folder made); None: nothing."""
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
