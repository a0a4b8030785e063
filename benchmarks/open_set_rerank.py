"""Open-set identification with a re-ranker (issue 19): each score decided by its own calibrated "unknown" threshold.

The job, on the 20 evaluation alphabets (reported only: every threshold and margin here was
chosen on the background validation alphabets): half of each alphabet's characters (seeded) are
enrolled with one random drawing each; the queries are their other 19 drawings (known: right when
named right and accepted) and every drawing of the other half (unknown: right when rejected).
Through the real ``identify_job`` with ``--threshold model``, the shipped default's index:

- ``base``: the default alone, its own "unknown" threshold (by database size);
- one setting per ``--rerank`` model, at the margin the default carries: the re-scored queries are
  decided on the re-ranking model's threshold: its "unknown" one for a cosine model, its
  ``unknown_reranked`` one (``oneshot calibrate``) for a model that re-scores by a trained score
  (map matchers), or none at all (every re-scored query accepted) when it carries none.

    python -m benchmarks.open_set_rerank --data ../shared/data/omniglot \\
        --rerank handwriting-ensemble MATCHED.safetensors --out benchmarks/results/open_set_rerank.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import command_line, write_result
from benchmarks.rerank import build_index, write_images


def write_open_set(split, table: pd.DataFrame, folder: Path, seed: int) -> tuple[Path, Path]:
    """Half of each alphabet's characters enrolled (one random drawing each, into ``folder/gallery``);
    their other drawings and every drawing of the other half into ``folder/queries``."""
    rng = np.random.default_rng(seed)
    characters = table.drop_duplicates("label")
    enrolled = set(characters.groupby("group", sort=True)["label"]
                   .apply(lambda labels: list(rng.choice(labels.to_numpy(), len(labels) // 2, replace=False)))
                   .explode())
    known = table[table["label"].isin(enrolled)]
    first = known.groupby("label", sort=True).sample(n=1, random_state=rng).index
    write_images(split, table, [folder / ("gallery" if g else "queries") for g in table.index.isin(first)])
    return folder / "gallery", folder / "queries"


def open_set_figures(answers: pd.DataFrame, enrolled: set[str]) -> dict:
    """Open-set accuracy (known queries named right and accepted, unknown ones rejected), each part."""
    is_known = answers["true_label"].isin(enrolled).to_numpy()
    right_known = (answers["known"] & (answers["label"] == answers["true_label"])).to_numpy()
    rejected = ~answers["known"].to_numpy()
    return {"open_set_accuracy": float(np.where(is_known, right_known, rejected).mean()),
            "known_accuracy": float(right_known[is_known].mean()), "unknown_rejected": float(rejected[~is_known].mean()),
            "known_queries": int(is_known.sum()), "unknown_queries": int((~is_known).sum())}


def run_setting(queries: Path, index, rerank_model: str | None, depth: int, enrolled: set[str]) -> dict:
    from oneshot.pipelines.engines.rerank import Reranker
    from oneshot.pipelines.jobs.identify import identify_job

    started = time.perf_counter()
    rerank = None if rerank_model is None else Reranker(rerank_model, index.metadata["gallery_images"], depth=depth)
    rows = []
    summary = identify_job(queries, index, None, None, threshold="model", emit=rows.append, show_progress=False,
                           rerank=rerank)
    answers = pd.concat(rows, ignore_index=True)
    result = {"rerank": rerank_model, **open_set_figures(answers, enrolled), "threshold": summary.threshold_text,
              "seconds": round(time.perf_counter() - started, 1)}
    if rerank is not None:
        result.update(margin=rerank.margin, reranked_share=rerank.stats.reranked / rerank.stats.queries)
    print(f"  {rerank_model or 'base'}: open-set {result['open_set_accuracy']:.4f} (known {result['known_accuracy']:.4f}, "
          f"unknown rejected {result['unknown_rejected']:.4f}); {result['seconds']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Omniglot folder")
    parser.add_argument("--rerank", nargs="+", default=["handwriting-ensemble"], help="re-ranking models")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from oneshot.data.omniglot import OmniglotSplit, omniglot_root
    from oneshot.embedder.artifact import load_model

    split = OmniglotSplit(omniglot_root(args.data), "evaluation")
    table = split.table.reset_index(drop=True)
    base = load_model(None)
    result = {"command": command_line("open_set_rerank", argv), "base": "default", "base_fingerprint": base.fingerprint,
              "depth": args.depth, "seed": args.seed, "runs": []}
    with tempfile.TemporaryDirectory(prefix="oneshot_open_set_") as work:
        gallery, queries = write_open_set(split, table, Path(work), args.seed)
        index = build_index(gallery, base, Path(work) / "base.parquet")
        enrolled = set(index.table["label"].astype(str))
        result["enrolled"], result["characters"] = len(enrolled), int(table["label"].nunique())
        print(f"evaluation (20 evaluation alphabets, reported only): {len(enrolled)} of {result['characters']} "
              "characters enrolled")
        for model in [None, *args.rerank]:
            result["runs"].append(run_setting(queries, index, model, args.depth, enrolled))
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
