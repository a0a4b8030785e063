"""Does local matching re-score the global vector's answers better? (Issue 19's first direction,
measured on the background validation alphabets only.)

For 20-way within-alphabet 1-shot episodes of the four held-out background alphabets, each
query's 20 candidates are scored by the shipped model's cosine and by that plus ``weight`` times a
local match of the spatial feature maps after conv block 2 (7x7) or 3 (3x3): every location of
one image takes its best cosine among the other image's locations within ``radius`` cells, the
mean over locations, both ways. The maps are the network's own (not trained for matching).
A weight that gains on validation would then be carried, unchanged, to Lake's runs; none gains
beyond the noise here, so nothing is.

Run from the repository root::

    python -m benchmarks.local_matching --data ../shared/data/omniglot --out benchmarks/results/local_matching.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import command_line, validation_alphabets, write_result
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.pipelines.evaluation.episodes import sample_episodes

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
RADII = (0, 1, 2)


def block_maps(model, pixels: np.ndarray, blocks=(1, 2), unit: bool = True) -> dict[int, np.ndarray]:
    """Feature maps after the named conv blocks (0-based), unit length at every location (``unit``)
    or as the network leaves them: block -> (N, C, H, W)."""
    maps, h = {}, torch.from_numpy(pixels)
    with torch.no_grad():
        for number, block in enumerate(model.backbone.features):
            h = block(h)
            if number in blocks:
                maps[number] = (F.normalize(h, dim=1) if unit else h).numpy()
    return maps


def local_scores(query: np.ndarray, support: np.ndarray, radius: int) -> np.ndarray:
    """Local match of one map (C, H, W) against K maps (K, C, H, W) -> (K,), in [-1, 1]."""
    channels, height, width = query.shape
    similarity = np.einsum("ci,kcj->kij", query.reshape(channels, -1), support.reshape(len(support), channels, -1))
    rows, cols = np.divmod(np.arange(height * width), width)
    near = (np.abs(rows[:, None] - rows[None, :]) <= radius) & (np.abs(cols[:, None] - cols[None, :]) <= radius)
    similarity = np.where(near[None], similarity, -1.0)
    return 0.5 * (similarity.max(axis=2).mean(axis=1) + similarity.max(axis=1).mean(axis=1))


def run(data, episodes: int, seed: int, model_name: str | None = None) -> dict:
    split, table = validation_alphabets(data)
    model = load_model(model_name).eval()
    pixels = model.recipe.batch(split.read(list(table["path"])))
    vectors = encode(model, pixels, show_progress=False)
    maps = block_maps(model, pixels)
    trials = sample_episodes(table["label"].to_numpy(), table["group"].to_numpy(), n_way=20, k_shot=1, n_query=1,
                             n_episodes=episodes, within_group=True, seed=seed)
    hits = {(block, radius, weight): [] for block in maps for radius in RADII for weight in WEIGHTS}
    started = time.perf_counter()
    for episode in trials:
        support = np.asarray(episode.support).reshape(-1)
        queries = np.asarray(episode.query).reshape(-1)
        target = np.asarray(episode.query_target).reshape(-1)
        cosine = vectors[queries] @ vectors[support].T
        for block, found in maps.items():
            for radius in RADII:
                local = np.stack([local_scores(found[q], found[support], radius) for q in queries])
                for weight in WEIGHTS:
                    hits[(block, radius, weight)].extend((cosine + weight * local).argmax(axis=1) == target)
    results = []
    for (block, radius, weight), found in hits.items():
        found = np.asarray(found, dtype=float)
        results.append({"after_block": block + 1, "radius": radius, "weight": weight, "accuracy": float(found.mean()),
                        "ci95": float(1.96 * found.std() / np.sqrt(found.size))})
        print(results[-1], flush=True)
    return {"validation": sorted(table["group"].unique()), "episodes": episodes, "trials": len(hits[next(iter(hits))]),
            "seconds": round(time.perf_counter() - started, 1), "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot root (default: $OMNIGLOT_DIR)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="model file or shipped name (default: the shipped default; "
                                                      "the figures in the README: handwriting-v1)")
    parser.add_argument("--out", default="benchmarks/results/local_matching.json")
    args = parser.parse_args(argv)
    result = run(args.data, args.episodes, args.seed, args.model)
    write_result({"command": command_line("local_matching", argv), **result}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
