"""Re-ranking benchmark (issue 19): a second model re-scoring the index's top rows in ``identify``.

The job: enrol one drawing of every character (a random drawer per character, seeded), identify
the character's other 19 drawings (closed set: no "unknown" answers), through the real
``identify_job`` with a :class:`oneshot.pipelines.engines.rerank.Reranker`. The index is built with the
base model (the shipped default); the re-ranking model (``handwriting-ensemble``) re-scores the
``depth`` best rows of each query whose two best identities are closer than ``margin``.

- ``validation``: the 4 background validation alphabets (2,717 queries, 143 identities): every
  margin of ``--margins``, the base alone and the re-ranking model alone (its own index). The
  default margin is chosen here by a rule fixed in advance: the largest margin (fewest queries
  re-scored) that keeps at least ``--keep`` (90%) of the gain of re-scoring every query.
- ``evaluation``: the 20 evaluation alphabets (12,521 queries, 659 identities), reported only:
  the base, every query re-scored, the chosen margin, the re-ranking model alone.
- ``scale``: whole-process ``oneshot identify`` with and without ``--rerank`` (rounds alternate):
  the README's scale job (the 13,180 evaluation images against their own index, so most queries
  find themselves far ahead and few are re-scored), and the evaluation enrolment job above.

    python -m benchmarks.rerank --data ../shared/data/omniglot --out benchmarks/results/rerank.json

``--precision bf16`` runs every job's queries and the re-ranking model in bfloat16 (identify's
``--precision``), plain and re-ranked alike; the index is built in float32 either way.

``--store-margin`` writes the chosen margin into the base model's file (``info["rerank_margin"]``),
where ``identify --rerank`` finds it for that model's indexes.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from benchmarks import command_line, validation_alphabets, write_result

CLI = [sys.executable, "-m", "oneshot.pipelines.cli"]


def write_images(split, table: pd.DataFrame, roots: list[Path]) -> None:
    """Each of ``table``'s images of ``split`` into ``roots[i]/alphabet/character/file.png`` (its row's root)."""
    for start in range(0, len(table), 1024):
        chunk = table.iloc[start : start + 1024]
        for (_, row), image, root in zip(chunk.iterrows(), split.read(list(chunk["path"])), roots[start : start + 1024]):
            target = root / row["alphabet"] / row["character"]
            target.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target / Path(row["path"]).name), image)


def write_enrolment(split, table: pd.DataFrame, folder: Path, seed: int) -> tuple[Path, Path]:
    """One random drawing per character into ``folder/gallery``, the others into ``folder/queries``
    (``alphabet/character/file.png``, so both carry the same labels)."""
    rng = np.random.default_rng(seed)
    enrolled = table.groupby("label", sort=True).sample(n=1, random_state=rng).index
    write_images(split, table, [folder / ("gallery" if g else "queries") for g in table.index.isin(enrolled)])
    return folder / "gallery", folder / "queries"


def identify_setting(queries: Path, index, model, rerank_model, depth: int, margin: float | None,
                     precision: str = "float32") -> dict:
    """One identify job in this process (queries and the re-ranking model's forward pass in
    ``precision``), timed from the re-ranking model's loading to the last answer."""
    from oneshot.pipelines.engines.rerank import Reranker
    from oneshot.pipelines.jobs.identify import identify_job

    started = time.perf_counter()
    reranker = None if rerank_model is None else Reranker(rerank_model, index.metadata["gallery_images"],
                                                          depth=depth, margin=margin, precision=precision)
    summary = identify_job(queries, index, None, model, threshold=None, show_progress=False, rerank=reranker,
                           precision=precision)
    result = {"accuracy": summary.accuracy, "queries": summary.queries, "seconds": round(time.perf_counter() - started, 2)}
    if reranker is not None:
        stats = reranker.stats
        result.update(margin=margin, depth=depth, reranked=stats.reranked, reranked_share=stats.reranked / stats.queries,
                      gallery_encoded=stats.gallery_encoded, rerank_seconds=round(stats.seconds, 2))
    return result


def build_index(gallery: Path, model, store: Path):
    from oneshot.index.vector_index import VectorIndex
    from oneshot.pipelines.jobs.embed import embed_to_store

    store = embed_to_store(gallery, store, model, show_progress=False).store.folder
    index = VectorIndex.from_store(store)
    index.metadata["gallery_images"] = str(gallery)
    return index


def run_job(split, table, folder: Path, base, rerank_model, depth: int, margins: list, seed: int,
            precision: str = "float32") -> dict:
    gallery, queries = write_enrolment(split, table, folder, seed)
    base_index = build_index(gallery, base, folder / "base.parquet")
    rerank_index = build_index(gallery, rerank_model, folder / "rerank.parquet")
    out = {"identities": int(table["label"].nunique()),
           "base": identify_setting(queries, base_index, base, None, depth, None, precision),
           "rerank_model_alone": identify_setting(queries, rerank_index, rerank_model, None, depth, None, precision),
           "reranked": [identify_setting(queries, base_index, base, rerank_model, depth, m, precision)
                        for m in margins]}
    for name in ("base", "rerank_model_alone"):
        print(f"  {name:24s} accuracy {out[name]['accuracy']:.4f}  {out[name]['seconds']:.1f} s")
    for r in out["reranked"]:
        print(f"  margin {r['margin']!s:8s}          accuracy {r['accuracy']:.4f}  re-scored {r['reranked_share']:.3f}"
              f"  {r['seconds']:.1f} s (re-ranking {r['rerank_seconds']:.1f} s)")
    return out


def choose_margin(validation: dict, keep: float) -> dict:
    """The largest margin whose gain over the base is at least ``keep`` of every query's gain."""
    from oneshot.pipelines.evaluation.reranked import margin_by_rule

    chosen = margin_by_rule(validation["base"]["accuracy"], validation["reranked"], keep)
    return {"rule": f"the margin re-scoring the fewest queries whose gain over the base is >= {keep:.0%} of "
                    "re-scoring every query's (background validation alphabets)",
            "margin": None if chosen is None else chosen["margin"],
            "reranked_share": None if chosen is None else chosen["reranked_share"]}


def timed(command: list[str]) -> float:
    """Wall seconds of a whole process (which must succeed)."""
    return timed_with_output(command)[0]


def timed_with_output(command: list[str]) -> tuple[float, str]:
    import subprocess

    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return round(time.perf_counter() - started, 3), done.stderr


def time_job(queries: Path, gallery: Path, folder: Path, rerank_model: str, margin: float | None, depth: int,
             rounds: int, base: str | None = None, precision: str = "float32") -> dict:
    """Whole-process ``oneshot identify`` of ``queries`` against an index of ``gallery`` (``base``,
    default the shipped default), plain, re-ranked at ``margin`` and for every query, each with
    ``--precision precision``; rounds alternate."""
    store, index = folder / "gallery.parquet", folder / "gallery.faiss"
    model = ["--model", base] if base else []
    timed([*CLI, "embed", str(gallery), "--out", str(store), *model])
    timed([*CLI, "index", "build", str(store), "--out", str(index)])
    plain = [*CLI, "identify", str(queries), "--index", str(index), "--threshold", "none", *model,
             "--precision", precision]
    extra = ["--rerank", rerank_model, "--rerank-depth", str(depth),
             "--rerank-margin", "all" if margin is None else str(margin)]
    times = {"plain": [], "rerank": [], "rerank_all": []}
    reranked = {}
    for r in range(rounds):
        for name, command in (("plain", plain), ("rerank", plain + extra),
                              ("rerank_all", plain + extra[:-1] + ["all"])):
            seconds, stderr = timed_with_output(command + ["--out", str(folder / f"answers_{name}_{r}")])
            times[name].append(seconds)
            found = re.search(r"re-ranked (\d+) of (\d+) queries", stderr)
            if found:
                reranked[name] = int(found.group(1)) / int(found.group(2))
    best = {name: min(values) for name, values in times.items()}
    print(f"  plain {best['plain']:.2f} s, re-ranked (margin {margin}, {reranked['rerank']:.3f} of the queries) "
          f"{best['rerank']:.2f} s (x{best['rerank'] / best['plain']:.2f}), every query {best['rerank_all']:.2f} s "
          f"(x{best['rerank_all'] / best['plain']:.2f})")
    return {"command": f"oneshot identify {queries} --index INDEX --threshold none --precision {precision} --out OUT "
                       f"[{' '.join(extra)}]",
            "seconds": times, "best": best, "reranked_share": reranked["rerank"],
            "ratio": best["rerank"] / best["plain"], "ratio_every_query": best["rerank_all"] / best["plain"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Omniglot folder")
    parser.add_argument("--base", default=None, help="the index's model (default: the shipped default)")
    parser.add_argument("--rerank", default="handwriting-ensemble", help="the re-ranking model")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--margins", default="all,0.2,0.1,0.05,0.03,0.02,0.01")
    parser.add_argument("--keep", type=float, default=0.9)
    parser.add_argument("--sections", default="validation,evaluation,scale")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="float32",
                        help="identify's --precision (the queries' and the re-ranking model's forward pass)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--store-margin", action="store_true",
                        help="write the chosen margin into the base model's file")
    args = parser.parse_args(argv)
    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.precision import check_precision
    from oneshot.pipelines.engines.rerank import parse_margin

    sections = args.sections.split(",")
    margins = [parse_margin(m) for m in args.margins.split(",")]
    base = load_model(args.base)
    result = {"command": command_line("rerank", argv), "base": args.base or "default",
              "base_fingerprint": base.fingerprint, "rerank": args.rerank,
              "depth": args.depth, "seed": args.seed, "precision": check_precision(args.precision)}
    precision = result["precision"]
    work = Path(tempfile.mkdtemp(prefix="oneshot_rerank_"))
    try:
        split, table = validation_alphabets(args.data)
        print("validation (4 background validation alphabets):")
        result["validation"] = run_job(split, table, work / "validation", base, args.rerank, args.depth, margins,
                                       args.seed, precision)
        result["chosen"] = choose_margin(result["validation"], args.keep)
        print(f"  chosen margin: {result['chosen']['margin']} ({result['chosen']['rule']})")
        chosen = result["chosen"]["margin"]
        if args.store_margin and chosen is None:
            print("  no margin met the rule; nothing stored")
        elif args.store_margin:
            from oneshot.embedder.artifact import model_path
            from oneshot.pipelines.engines.rerank import store_margin

            target = model_path(args.base)
            store_margin(target, chosen, "the 4 background validation alphabets of Omniglot (one drawing of each "
                         "character enrolled, the other 19 identified)", result["chosen"]["rule"],
                         f"{args.rerank} (fingerprint {load_model(args.rerank).fingerprint})",
                         result["command"])
            result["chosen"]["stored_in"] = {"path": str(target), "model_fingerprint": base.fingerprint}
            print(f"  stored in {target}")
        if "evaluation" in sections:
            from oneshot.data.omniglot import OmniglotSplit, omniglot_root

            evaluation = OmniglotSplit(omniglot_root(args.data), "evaluation")
            print("evaluation (20 evaluation alphabets, reported only):")
            result["evaluation"] = run_job(evaluation, evaluation.table.reset_index(drop=True), work / "evaluation",
                                           base, args.rerank, args.depth, sorted({None, chosen}, key=str),
                                           args.seed, precision)
        if "scale" in sections:
            zipped = Path(args.data) / "images_evaluation.zip"
            print("scale: the 13,180 evaluation images against their own index (whole processes):")
            result["scale"] = time_job(zipped, zipped, work / "scale", args.rerank, chosen, args.depth, args.rounds,
                                       args.base, precision)
            if "evaluation" in sections:
                print("scale: the evaluation enrolment job above (12,521 queries, 659 enrolled; whole processes):")
                result["scale_enrolled"] = time_job(work / "evaluation" / "queries", work / "evaluation" / "gallery",
                                                    work / "scale_enrolled", args.rerank, chosen, args.depth,
                                                    args.rounds, args.base, precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
