"""Raw-pixel baseline on the synthetic alphabets: the demo's three pipelines on raw pixels.

Within-alphabet N-way one-shot accuracy, KNN accuracy (30% of each class indexed, k=3) and
KMeans per alphabet (ARI, NMI), with cosine similarity on flattened preprocessed pixels
(ink bright, ``Recipe(size=28)``). It shows how hard the generator's drawer jitter makes the task.

Run from the repository root::

    python -m benchmarks.synthetic_baseline --out runs/synthetic_baseline.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import write_result
from oneshot.data.synthetic import make_alphabets
from oneshot.embedder.preprocess import Recipe
from oneshot.pipelines.jobs.demo import demo_scores, raw_pixel_vectors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic set and the episodes")
    parser.add_argument("--alphabets", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--ways", type=int, default=20)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    synthetic = make_alphabets(args.alphabets, 20, seed=args.seed)
    generated = time.perf_counter() - started
    vectors = raw_pixel_vectors(list(synthetic.images), Recipe(size=28))
    scores = demo_scores(vectors, synthetic.table, "cosine", args.episodes, args.seed, n_way=args.ways)
    result = {
        "benchmark": "synthetic_raw_pixel_baseline",
        "make_alphabets": {"n_alphabets": args.alphabets, "characters_per_alphabet": 20, "seed": args.seed},
        "ways": args.ways,
        "episodes": args.episodes,
        "features": "raw pixels, Recipe(size=28), cosine",
        "scores": {k: round(v, 4) for k, v in scores.items()},
        "generation_seconds": round(generated, 3),
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
