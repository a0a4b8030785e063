"""Centring vectors at test time (issue 19): does moving the origin help 20-way within-alphabet episodes?

For each model, the validation alphabets' 20-way 1-shot accuracy (the benchmark's own 2,000
episodes) with the cosine of: the model's unit vectors as they are; after subtracting the mean of
each episode's 20 support vectors (from support and query, then re-normalising; the episode's
support is all it sees); the same at half strength; and after subtracting the mean unit vector of
4,000 images (seeded) of the background *training* alphabets. Chosen on validation only; nothing
here is reported on the evaluation alphabets.

Run from the repository root::

    python -m benchmarks.centring --data ../shared/data/omniglot --models embedder/weights/default.safetensors \\
        --out benchmarks/results/centring.json
"""
from __future__ import annotations

import numpy as np

from benchmarks import command_line, model_benchmark_parser, validation_alphabets, write_result
from benchmarks.ensemble import ensemble_encoder, load_weights
from oneshot.data.omniglot import omniglot_root
from oneshot.pipelines.evaluation.evaluate import oneshot_episodes
from oneshot.pipelines.jobs.train import VALIDATION_ALPHABETS


def unit(vectors: np.ndarray) -> np.ndarray:
    """(..., D) -> (..., D) of length 1 along the last axis (float64)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def centred_accuracy(support: np.ndarray, query: np.ndarray, target: np.ndarray, centre: np.ndarray) -> float:
    """Share of queries whose nearest support (cosine after subtracting ``centre``) is their class.

    Args:
        support: (E, N, D) unit vectors, one per class; query: (E, Q, D); target: (E, Q) class
        indices; centre: (E, 1, D) or (D,) subtracted from both.
    """
    scores = np.einsum("eqd,end->eqn", unit(query - centre), unit(support - centre))
    return float((scores.argmax(axis=2) == target).mean())


def main(argv: list[str] | None = None) -> int:
    parser = model_benchmark_parser(__doc__, "model files (cosine models)", "benchmarks/results/centring.json")
    parser.add_argument("--base-images", type=int, default=4000)
    args = parser.parse_args(argv)
    data = omniglot_root(args.data)
    split, table = validation_alphabets(data)
    training = split.table[~split.table["group"].isin(VALIDATION_ALPHABETS["background"])].reset_index(drop=True)
    base_rows = np.sort(np.random.default_rng(args.seed).choice(len(training), args.base_images, replace=False))
    episodes = oneshot_episodes(table, n_way=20, k_shot=1, n_episodes=args.episodes, within_group=True, seed=args.seed)
    support_rows = np.stack([np.asarray(episode.support)[:, 0] for episode in episodes])
    query_rows = np.stack([np.asarray(episode.query) for episode in episodes])
    target = np.stack([np.asarray(episode.query_target) for episode in episodes])
    images = split.read(list(table["path"]))
    base_images = split.read(list(training["path"].iloc[base_rows]))
    result = {"command": command_line("centring", argv), "models": {}}
    for path in args.models:
        encode_images = ensemble_encoder([load_weights(path)])
        vectors = unit(encode_images(images))
        support, query = vectors[support_rows], vectors[query_rows]
        support_mean = support.mean(axis=1, keepdims=True)
        found = {"none": centred_accuracy(support, query, target, np.zeros(vectors.shape[1])),
                 "support_mean": centred_accuracy(support, query, target, support_mean),
                 "half_support_mean": centred_accuracy(support, query, target, 0.5 * support_mean),
                 "training_mean": centred_accuracy(support, query, target,
                                                   unit(encode_images(base_images)).mean(axis=0))}
        result["models"][path] = found
        print(path, found, flush=True)
    write_result(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
