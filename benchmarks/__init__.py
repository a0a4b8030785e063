"""Benchmark scripts: each prints its figures and writes them as JSON (see :func:`write_result`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from oneshot.atomic import atomic_path

#: The wide validation split (``--validation wide``): the four background validation alphabets plus
#: four more, drawn from the other 26 background alphabets (sorted by name) with
#: ``numpy.random.default_rng(0).choice(26, 4, replace=False)``; the count and the seed were fixed
#: before the draw. 310 characters; a model compared on it is trained on the other 22 alphabets
#: (``oneshot train --val-groups`` with these names). Four alphabets at about 95% had stopped telling
#: recipes apart (EXPERIMENTS.md).
WIDE_VALIDATION_ALPHABETS = ("Bengali", "Futurama", "Greek", "Japanese_(katakana)",
                             "Braille", "Gujarati", "Japanese_(hiragana)", "Mkhedruli_(Georgian)")


def validation_groups(which: str = "background") -> tuple[str, ...]:
    """The background alphabets of validation split ``which``: ``background`` (the four that
    ``oneshot train`` holds out by default) or ``wide`` (:data:`WIDE_VALIDATION_ALPHABETS`)."""
    from oneshot.pipelines.jobs.train import VALIDATION_ALPHABETS

    splits = {"background": VALIDATION_ALPHABETS["background"], "wide": WIDE_VALIDATION_ALPHABETS}
    if which not in splits:
        raise ValueError(f"unknown validation split {which!r}; choose from {sorted(splits)}")
    return splits[which]


def validation_alphabets(data: str | os.PathLike | None, which: str = "background"):
    """The background validation alphabets of Omniglot (the only images a threshold or setting is
    chosen on) of split ``which`` (see :func:`validation_groups`): ``(the background split, its table
    restricted to them, index reset)``."""
    from oneshot.data.omniglot import OmniglotSplit, omniglot_root

    split = OmniglotSplit(omniglot_root(data), "background")
    table = split.table[split.table["group"].isin(validation_groups(which))].reset_index(drop=True)
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
