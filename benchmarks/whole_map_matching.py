"""Matching across the whole image, as a re-scorer of the global vector's answers (issue 19).

``benchmarks.local_matching`` matched each location only within a cell or two of the same place.
Two matchers that look across the whole image instead, neither trained:

- **optimal transport** between the feature maps after conv block 2 (7x7) or 3 (3x3), as in
  DeepEMD (Zhang et al. 2020): each location weighs as much as its features agree with the mean
  of the other image's (ReLU, so background carries almost nothing); entropic transport
  (Sinkhorn, ``epsilon`` 0.05, 50 iterations) of one image's weights onto the other's; the score is
  the transported cosine;
- **stroke matching**: the modified Hausdorff distance (Dubuisson and Jain 1994; the pixel baseline
  of Lake et al. 2015) between the ink pixels of the two images, cropped to the ink and resized to
  40 px (96 points each, drawn with the seed).

On 20-way within-alphabet 1-shot episodes of the four background validation alphabets (the
queries of ``benchmarks.local_matching``: same episodes, same seed), each query's 20 candidates
are scored by ``z(cosine) + weight * z(match)``, both standardised over the query's candidates (the
stroke distance is in pixels, the cosines are not). The best matcher and weight on validation are
carried, unchanged, to Lake's 20 official runs (reported only).

Run from the repository root::

    python -m benchmarks.whole_map_matching --data ../shared/data/omniglot \\
        --out benchmarks/results/whole_map_matching.json
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import command_line, validation_alphabets, write_result
from benchmarks.local_matching import block_maps
from benchmarks.local_matching_trained import paired
from oneshot.data.lake_runs import read_lake_runs
from oneshot.data.omniglot import omniglot_root
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.pipelines.evaluation.episodes import sample_episodes

WEIGHTS = (0.1, 0.2, 0.3, 0.5, 1.0)
MATCHERS = ("transport_block2", "transport_block3", "strokes")
INK_SIZE, INK_POINTS = 40, 96


def transport_scores(queries: torch.Tensor, supports: torch.Tensor, epsilon: float = 0.05,
                     iterations: int = 50) -> np.ndarray:
    """Entropic optimal-transport similarity of maps (Q, C, H, W) against (S, C, H, W) -> (Q, S)."""
    q = queries.flatten(2).transpose(1, 2)   # (Q, L, C)
    s = supports.flatten(2).transpose(1, 2)  # (S, M, C)
    weight_q = F.relu(torch.einsum("qlc,sc->qsl", q, s.mean(1))) + 1e-3  # (Q, S, L)
    weight_s = F.relu(torch.einsum("smc,qc->qsm", s, q.mean(1))) + 1e-3  # (Q, S, M)
    weight_q = weight_q / weight_q.sum(-1, keepdim=True)
    weight_s = weight_s / weight_s.sum(-1, keepdim=True)
    cosine = torch.einsum("qlc,smc->qslm", F.normalize(q, dim=2), F.normalize(s, dim=2))
    kernel = torch.exp((cosine - 1) / epsilon)
    u, v = torch.ones_like(weight_q), torch.ones_like(weight_s)
    for _ in range(iterations):
        u = weight_q / (torch.einsum("qslm,qsm->qsl", kernel, v) + 1e-30)
        v = weight_s / (torch.einsum("qslm,qsl->qsm", kernel, u) + 1e-30)
    plan = u[..., :, None] * kernel * v[..., None, :]
    return (plan * cosine).sum((2, 3)).numpy()


def ink_points(model, images, seed: int) -> torch.Tensor:
    """(N, INK_POINTS, 2) float32: ink pixel coordinates at INK_SIZE px, drawn with the seed (with
    replacement where an image has fewer ink pixels)."""
    ink = replace(model.recipe, size=INK_SIZE).batch(images)[:, 0]
    rng = np.random.default_rng(seed)
    points = np.zeros((len(ink), INK_POINTS, 2), dtype=np.float32)
    for i, image in enumerate(ink):
        found = np.argwhere(image > 0.5).astype(np.float32)
        if len(found) == 0:
            found = np.full((1, 2), INK_SIZE / 2, dtype=np.float32)
        points[i] = found[rng.choice(len(found), INK_POINTS, replace=len(found) < INK_POINTS)]
    return torch.from_numpy(points)


def stroke_scores(queries: torch.Tensor, supports: torch.Tensor) -> np.ndarray:
    """Minus the modified Hausdorff distance of point sets (Q, P, 2) against (S, P, 2) -> (Q, S)."""
    distance = torch.cdist(queries[:, None], supports[None])  # (Q, S, P, P)
    return -torch.maximum(distance.amin(3).mean(2), distance.amin(2).mean(2)).numpy()


def standardised(scores: np.ndarray) -> np.ndarray:
    """Each row (a query's candidates) to zero mean and unit spread."""
    return (scores - scores.mean(axis=1, keepdims=True)) / (scores.std(axis=1, keepdims=True) + 1e-9)


def match_scores(matcher: str, maps: dict, points: torch.Tensor, query, support) -> np.ndarray:
    if matcher == "strokes":
        return stroke_scores(points[query], points[support])
    block = int(matcher[-1]) - 1
    return transport_scores(maps[block][query], maps[block][support])


def combined_hits(cosine: np.ndarray, match: np.ndarray, weight: float, target: np.ndarray) -> np.ndarray:
    return (standardised(cosine) + weight * standardised(match)).argmax(axis=1) == target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot root (default: $OMNIGLOT_DIR)")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/whole_map_matching.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = omniglot_root(args.data)
    model = load_model(args.model).eval()
    split, table = validation_alphabets(data)
    images = split.read(list(table["path"]))
    pixels = model.recipe.batch(images)
    vectors = encode(model, pixels, show_progress=False)
    maps = {block: torch.from_numpy(found) for block, found in block_maps(model, pixels, unit=False).items()}
    points = ink_points(model, images, args.seed)
    trials = sample_episodes(table["label"].to_numpy(), table["group"].to_numpy(), n_way=20, k_shot=1, n_query=1,
                             n_episodes=args.episodes, within_group=True, seed=args.seed)
    base, hits, alone = [], {}, {matcher: [] for matcher in MATCHERS}
    for episode in trials:
        support = np.asarray(episode.support).reshape(-1)
        query = np.asarray(episode.query).reshape(-1)
        target = np.asarray(episode.query_target).reshape(-1)
        cosine = vectors[query] @ vectors[support].T
        base.extend(cosine.argmax(axis=1) == target)
        for matcher in MATCHERS:
            match = match_scores(matcher, maps, points, query, support)
            alone[matcher].extend(match.argmax(axis=1) == target)
            for weight in WEIGHTS:
                hits.setdefault((matcher, weight), []).extend(combined_hits(cosine, match, weight, target))
    base = np.asarray(base)
    results = [{"matcher": matcher, "weight": weight, **paired(np.asarray(found), base)}
               for (matcher, weight), found in hits.items()]
    for row in results:
        print(row, flush=True)
    best = max(results, key=lambda row: (row["accuracy"], -row["weight"]))
    lake = {"chosen_on_validation": {"matcher": best["matcher"], "weight": best["weight"]}, "cosine_alone": 0,
            "with_match": 0, "trials": 0}
    for run in read_lake_runs(data):
        test, train = run.test_images(), run.training_images()
        images = list(test) + list(train)
        both = model.recipe.batch(images)
        test_rows, train_rows = np.arange(len(test)), len(test) + np.arange(len(train))
        run_vectors = encode(model, both, show_progress=False)
        cosine = run_vectors[test_rows] @ run_vectors[train_rows].T
        run_maps = {block: torch.from_numpy(found) for block, found in block_maps(model, both, unit=False).items()}
        run_points = ink_points(model, images, args.seed)
        match = match_scores(best["matcher"], run_maps, run_points, test_rows, train_rows)
        lake["cosine_alone"] += int((cosine.argmax(axis=1) != run.answers).sum())
        lake["with_match"] += int((~combined_hits(cosine, match, best["weight"], run.answers)).sum())
        lake["trials"] += len(run.answers)
    print("Lake's runs (errors)", lake, flush=True)
    write_result({"command": command_line("whole_map_matching", argv), "model": args.model or "shipped default",
                  "validation": sorted(table["group"].unique()), "episodes": args.episodes, "seed": args.seed,
                  "trials": int(base.size), "cosine_alone": paired(base, base),
                  "matcher_alone": {matcher: float(np.mean(found)) for matcher, found in alone.items()},
                  "results": results, "lake_runs": lake, "seconds": round(time.perf_counter() - started, 1)},
                 args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
