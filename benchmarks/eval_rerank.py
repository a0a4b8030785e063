"""``oneshot eval --rerank`` benchmark (issue 19): 20-way within-alphabet one-shot episodes, the store's
vectors (the base model, the shipped default) ranking each episode's classes and a second model
answering again the queries they hesitate on.

Through the real job (:func:`oneshot.pipelines.jobs.evaluate_store` with a
:class:`~oneshot.pipelines.engines.rerank.Reranker`), on the episodes ``oneshot eval`` draws (seed
``--seed``, ``--episodes`` of them):

- ``validation``: the 4 background validation alphabets;
- ``evaluation``: the 20 evaluation alphabets, reported only (no setting here is chosen on them).

Each re-ranking model of ``--rerank`` runs at the margin the base model carries (``"model"``: chosen
on the validation alphabets' enrolment job, ``benchmarks/rerank.py``) and with every query re-scored
(``"all"``); ``depth`` classes re-scored per query.

    python -m benchmarks.eval_rerank --data ../shared/data/omniglot \\
        --rerank handwriting-ensemble --out benchmarks/results/eval_rerank.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks import command_line, validation_alphabets, write_result
from benchmarks.rerank import write_images


def score_split(images, work: Path, base, rerankers: list[str], margins: list, depth: int, episodes: int,
                seed: int) -> dict:
    """Embed ``images`` with ``base`` into a store, then one eval job per (re-ranking model, margin)."""
    from oneshot.pipelines.engines.rerank import Reranker
    from oneshot.pipelines.jobs.embed import embed_to_store
    from oneshot.pipelines.jobs.evaluate import evaluate_store

    store = embed_to_store(images, work / "store.parquet", base, show_progress=False).store.folder
    out = {"images": str(images), "runs": []}
    for name in rerankers:
        for margin in margins:
            started = time.perf_counter()
            rerank = Reranker(name, images, depth=depth, margin=margin)
            scores = evaluate_store(store, 20, 1, episodes, True, seed=seed, baseline=False, rerank=rerank, model=base)
            reranked = scores["oneshot_reranked"]
            run = {"rerank": name, **{k: reranked[k] for k in ("margin", "margin_source", "depth", "accuracy", "ci95",
                                                               "first_accuracy", "queries", "reranked", "changed",
                                                               "images_encoded", "seconds")},
                   "model_fingerprint": reranked["model_fingerprint"],
                   "job_seconds": round(time.perf_counter() - started, 1)}
            out["runs"].append(run)
            print(f"  {name} margin {run['margin']!s:6s} first {run['first_accuracy']:.4f} -> {run['accuracy']:.4f}"
                  f" (+-{run['ci95']:.4f}); re-scored {run['reranked']} of {run['queries']}; "
                  f"fixed {run['changed']['fixed']}, broken {run['changed']['broken']}; {run['job_seconds']} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Omniglot folder")
    parser.add_argument("--base", default=None, help="the store's model (default: the shipped default)")
    parser.add_argument("--rerank", nargs="+", default=["handwriting-ensemble"], help="re-ranking models")
    parser.add_argument("--margins", default="model,all")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--sections", default="validation,evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from oneshot.embedder.artifact import load_model, model_path
    from oneshot.pipelines.engines.rerank import parse_margin

    base = model_path(args.base)
    margins = [parse_margin(m) for m in args.margins.split(",")]
    result = {"command": command_line("eval_rerank", argv), "base": args.base or "default",
              "base_fingerprint": load_model(base).fingerprint, "episodes": args.episodes, "n_way": 20, "k_shot": 1,
              "within_group": True, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="oneshot_eval_rerank_", ignore_cleanup_errors=True) as folder:
        work = Path(folder)
        if "validation" in args.sections:
            split, table = validation_alphabets(args.data)
            print("validation (4 background validation alphabets):")
            images = work / "validation" / "images"
            write_images(split, table, [images] * len(table))
            result["validation"] = score_split(images, work / "validation", base, args.rerank, margins, args.depth,
                                               args.episodes, args.seed)
        if "evaluation" in args.sections:
            print("evaluation (20 evaluation alphabets, reported only):")
            result["evaluation"] = score_split(Path(args.data) / "images_evaluation.zip", work / "evaluation", base,
                                               args.rerank, margins, args.depth, args.episodes, args.seed)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
