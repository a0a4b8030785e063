"""Index kinds at a million vectors, against exact search and autofaiss, plus recall on real vectors.

Data (seed 0, written once under ``--workdir``, never in the repository): 20,000 centres drawn from
N(0, I) in 128 dimensions; each point = a random centre + 0.35 * N(0, I); L2-normalised; 1,000,000
gallery points and 10,000 queries drawn the same way; ground truth = exact inner-product top-1.

For ``flat`` and every kind (``auto`` included, all with no hand-set parameter): build seconds,
peak memory of the build process, index bytes, recall@1 and queries/s (one batch of 10,000
queries, ``--threads`` FAISS threads). Each kind runs in a fresh subprocess so its peak memory is
its own; the gallery is loaded into memory first (512 MB, counted in the peak). autofaiss runs from
its own environment (``--autofaiss-python``; its pins clash with this project's numpy/pyarrow) on the
same saved vectors and memory budget.

``--real STORE...``: the recall target on real vectors. For each store, ``auto``, ``ivf`` and
``hnsw`` are built and tuned, then recall@1 is measured on 2,000 gallery rows disjoint from the
tuning sample, each query's own row left out of its ground truth.

Targets (issue 7): ``auto`` >= 0.99 recall@1 at >= 50x the flat index's queries/s, built in <= 60 s,
index <= 600 MB; ahead of autofaiss on both recall and queries/s; the recall target met on real
vectors. Prints a table; writes ``benchmarks/results/index_scale.json``.

Usage:
    nice python benchmarks/index_scale.py
    nice python benchmarks/index_scale.py --kinds flat,auto --no-autofaiss
    nice python benchmarks/index_scale.py --real-only --real /tmp/idxbench/mnist.parquet ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "index_scale.json"
SPEC = {"n": 1_000_000, "queries": 10_000, "dim": 128, "centres": 20_000, "noise": 0.35, "seed": 0}


def make_data(workdir: Path, spec: dict) -> tuple[Path, Path]:
    """Write ``gallery.npy`` and ``queries.npy`` for ``spec`` (reused when already there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    gallery, queries, stamp = workdir / "gallery.npy", workdir / "queries.npy", workdir / "spec.json"
    if gallery.is_file() and queries.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return gallery, queries
    rng = np.random.default_rng(spec["seed"])
    centres = rng.standard_normal((spec["centres"], spec["dim"])).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, spec["dim"]), dtype=np.float32)
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            x = centres[rng.integers(0, spec["centres"], n)] + np.float32(spec["noise"]) * rng.standard_normal(
                (n, spec["dim"]), dtype=np.float32)
            out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    np.save(gallery, draw(spec["n"]))
    np.save(queries, draw(spec["queries"]))
    stamp.write_text(json.dumps(spec))
    return gallery, queries


def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _recall(ids: np.ndarray, truth_ids: np.ndarray, truth_scores: np.ndarray, gallery: np.ndarray,
            queries: np.ndarray) -> float:
    """Share of queries whose answer is the exact top-1 (or ties with it within 1e-5)."""
    hit = ids == truth_ids
    miss = np.flatnonzero(~hit & (ids >= 0))
    if len(miss):
        exact = np.einsum("ij,ij->i", gallery[ids[miss]], queries[miss])
        hit[miss] = exact >= truth_scores[miss] - 1e-5
    return float(hit.mean())


def run_kind(kind: str, workdir: Path, max_memory: str, threads: int, recall_target: float) -> dict:
    """Build one kind over the saved gallery and measure it (runs inside its own subprocess)."""
    import faiss
    import pandas as pd

    from oneshot.index.kinds import parse_memory
    from oneshot.index.vector_index import VectorIndex

    faiss.omp_set_num_threads(threads)
    gallery = np.load(workdir / "gallery.npy")
    queries = np.load(workdir / "queries.npy")
    table = pd.DataFrame({"id": np.arange(len(gallery), dtype=np.int64), "label": ""})
    loaded_mb = _rss_peak_mb()
    began = time.perf_counter()
    index = VectorIndex.build(gallery, table, "cosine", kind=kind, max_memory=parse_memory(max_memory),
                              recall=recall_target)
    build_seconds = time.perf_counter() - began
    peak_mb = _rss_peak_mb()
    path = workdir / f"{kind.replace(',', '_')}.faiss"
    index.save(path)
    index_bytes = path.stat().st_size
    index.search(queries[:200], 1)  # warm-up
    began = time.perf_counter()
    result = index.search(queries, 1, batch_size=10_000)
    search_seconds = time.perf_counter() - began
    ids = result.ids[:, 0]
    truth_file = workdir / "truth.npz"
    if kind == "flat" and not truth_file.is_file():
        np.savez(truth_file, ids=ids, scores=result.scores[:, 0])
    truth = np.load(truth_file)
    path.unlink()
    Path(str(path) + ".meta.parquet").unlink()
    return {"kind": kind, "factory": index.plan["factory"], "reason": index.plan.get("reason", ""),
            "search_params": index.search_params, "tuning": index.tuning,
            "build_seconds": round(build_seconds, 2), "peak_memory_mb": round(peak_mb, 1),
            "memory_after_loading_vectors_mb": round(loaded_mb, 1), "index_bytes": index_bytes,
            "recall_at_1": _recall(ids, truth["ids"], truth["scores"], gallery, queries),
            "queries_per_second": round(len(queries) / search_seconds, 1)}


AUTOFAISS_SCRIPT = textwrap.dedent('''
    import json, sys, time, resource
    import numpy as np, faiss
    from autofaiss import build_index
    workdir, max_memory, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    faiss.omp_set_num_threads(threads)
    import os
    os.makedirs(workdir + "/autofaiss_emb", exist_ok=True)
    if not os.path.exists(workdir + "/autofaiss_emb/gallery.npy"):
        os.link(workdir + "/gallery.npy", workdir + "/autofaiss_emb/gallery.npy")
    began = time.perf_counter()
    build_index(embeddings=workdir + "/autofaiss_emb", index_path=workdir + "/autofaiss.index",
                index_infos_path=workdir + "/autofaiss_infos.json", metric_type="ip",
                max_index_memory_usage=max_memory, current_memory_available="8G", save_on_disk=True,
                verbose=30)
    build_seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    index = faiss.read_index(workdir + "/autofaiss.index")
    queries = np.load(workdir + "/queries.npy")
    index.search(queries[:200], 1)
    began = time.perf_counter()
    _, ids = index.search(queries, 1)
    seconds = time.perf_counter() - began
    infos = json.load(open(workdir + "/autofaiss_infos.json"))
    np.save(workdir + "/autofaiss_ids.npy", ids[:, 0])
    print(json.dumps({"build_seconds": build_seconds, "peak_memory_mb": peak, "infos": infos,
                      "index_bytes": os.path.getsize(workdir + "/autofaiss.index"),
                      "queries_per_second": len(queries) / seconds}))
''')


def run_autofaiss(python: str, workdir: Path, max_memory: str, threads: int) -> dict:
    """autofaiss from its own environment on the same vectors; recall computed here."""
    script = workdir / "autofaiss_run.py"
    script.write_text(AUTOFAISS_SCRIPT)
    done = subprocess.run([python, str(script), str(workdir), max_memory, str(threads)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return {"kind": "autofaiss", "error": done.stderr[-2000:]}
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    gallery = np.load(workdir / "gallery.npy", mmap_mode="r")
    queries = np.load(workdir / "queries.npy")
    truth = np.load(workdir / "truth.npz")
    ids = np.load(workdir / "autofaiss_ids.npy")
    infos = measured.pop("infos")
    (workdir / "autofaiss.index").unlink(missing_ok=True)
    return {"kind": "autofaiss", "factory": infos.get("index_key"), "search_params": infos.get("index_param"),
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in measured.items()},
            "recall_at_1": _recall(ids, truth["ids"], truth["scores"], np.asarray(gallery), queries),
            "autofaiss_infos": infos}


def real_recall(store: str, kinds: list[str], seed: int = 0, size: int = 2000) -> list[dict]:
    """Recall@1 of tuned indexes on held-out gallery rows of a real store (own row left out)."""
    import pandas as pd

    from oneshot.index.search import ExactSearch
    from oneshot.index.store import read_embeddings
    from oneshot.index.tuning import DEFAULT_SAMPLE
    from oneshot.index.vector_blocks import sample_positions
    from oneshot.index.vector_index import VectorIndex

    stored = read_embeddings(store)
    x, table = stored.embeddings, stored.table
    gallery_ids = table["id"].to_numpy(dtype=np.int64)
    tuning_rows = sample_positions(len(x), DEFAULT_SAMPLE, seed + 1)
    rest = np.setdiff1d(np.arange(len(x)), tuning_rows)
    rows = np.sort(np.random.default_rng(12345).choice(rest, size=min(size, len(rest)), replace=False))
    exact = ExactSearch(x, table, stored.metadata["metric"]).search(x[rows], 2)
    own = table["id"].to_numpy()[rows]
    first = np.where(exact.ids[:, 0] == own, 1, 0)
    truth_ids = exact.ids[np.arange(len(rows)), first]
    truth_scores = exact.scores[np.arange(len(rows)), first]
    out = []
    for kind in kinds:
        began = time.perf_counter()
        index = VectorIndex.build(x, table, stored.metadata["metric"], kind=kind, seed=seed)
        build = time.perf_counter() - began
        result = index.search(x[rows], 2)
        pick = np.where(result.ids[:, 0] == own, 1, 0)
        ids = result.ids[np.arange(len(rows)), pick]
        position = pd.Index(gallery_ids).get_indexer(ids)
        scores = index.metric.pairwise(x[rows], x[position])
        hit = (ids == truth_ids) | (scores >= truth_scores - 1e-5)
        out.append({"store": store, "rows": len(x), "dim": x.shape[1], "kind": kind,
                    "factory": index.plan["factory"], "search_params": index.search_params,
                    "tuning_recall": None if index.tuning is None else index.tuning["recall"],
                    "held_out_queries": len(rows), "recall_at_1": float(hit.mean()),
                    "build_seconds": round(build, 2)})
        print(f"  {Path(store).name:<16} {kind:<6} {index.plan['factory']:<16} {str(index.search_params):<18} "
              f"recall@1 {out[-1]['recall_at_1']:.4f} on {len(rows)} held-out rows", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/oneshot_index_scale"))
    parser.add_argument("--kinds", default="flat,auto,ivf,ivfpq,autofaiss,hnsw",
                        help="comma-separated kinds; 'autofaiss' places the autofaiss run in the order")
    parser.add_argument("--max-memory", default="4G")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recall", type=float, default=0.99)
    parser.add_argument("--autofaiss-python", default="/tmp/autofaiss-venv/bin/python")
    parser.add_argument("--no-autofaiss", action="store_true")
    parser.add_argument("--real", nargs="*", default=[], help="embedding stores for the real-vector recall check")
    parser.add_argument("--real-only", action="store_true")
    parser.add_argument("--real-kinds", default="auto,ivf,hnsw")
    parser.add_argument("--n", type=int, default=SPEC["n"], help="gallery size (smaller for a smoke run)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_kind(args.one, args.workdir, args.max_memory, args.threads, args.recall)))
        return 0
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other engineers)",
                    "command": "python benchmarks/index_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    if not args.real_only:
        began = time.perf_counter()
        spec = {**SPEC, "n": args.n}
        make_data(args.workdir, spec)
        print(f"data ready in {time.perf_counter() - began:.1f} s under {args.workdir}", flush=True)
        rows = []
        kinds = args.kinds.split(",")
        if "flat" not in kinds and not (args.workdir / "truth.npz").is_file():
            kinds = ["flat", *kinds]
        for kind in kinds:
            if kind == "autofaiss":
                rows.append(_autofaiss_row(args))
                print(_row(rows[-1]), flush=True)
                _save(args.out, {**results, "kinds": rows})
                continue
            done = subprocess.run([sys.executable, __file__, "--one", kind, "--workdir", str(args.workdir),
                                   "--max-memory", args.max_memory, "--threads", str(args.threads),
                                   "--recall", str(args.recall)], capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"kind": kind, "error": done.stderr[-2000:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(_row(rows[-1]), flush=True)
            _save(args.out, {**results, "kinds": rows})
        if not args.no_autofaiss and "autofaiss" not in kinds:
            rows.append(_autofaiss_row(args))
            print(_row(rows[-1]), flush=True)
        results.update({"spec": spec, "max_memory": args.max_memory, "threads": args.threads,
                        "recall_target": args.recall, "kinds": rows, "targets": _targets(rows)})
        print(json.dumps(results["targets"], indent=1))
    if args.real:
        print("real vectors:")
        real = [r for store in args.real for r in real_recall(store, args.real_kinds.split(","))]
        results["real"] = real
    _save(args.out, results)
    print(f"wrote {args.out}")
    return 0


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))


def _autofaiss_row(args) -> dict:
    if not Path(args.autofaiss_python).is_file():
        return {"kind": "autofaiss", "error": f"{args.autofaiss_python} not found: comparison missing"}
    return run_autofaiss(args.autofaiss_python, args.workdir, args.max_memory, args.threads)


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['kind']:<10} ERROR {r['error'][-300:]}"
    return (f"{r['kind']:<10} {str(r.get('factory')):<22} {str(r.get('search_params')):<20} "
            f"build {r['build_seconds']:>7.1f} s  peak {r['peak_memory_mb']:>7.0f} MB  "
            f"index {r['index_bytes'] / 1e6:>6.0f} MB  recall@1 {r['recall_at_1']:.4f}  "
            f"{r['queries_per_second']:>9.0f} q/s")


def _targets(rows: list[dict]) -> dict:
    by = {r["kind"]: r for r in rows if "error" not in r}
    if "auto" not in by or "flat" not in by:
        return {}
    auto, flat = by["auto"], by["flat"]
    out = {"auto_recall_ge_0.99": auto["recall_at_1"] >= 0.99,
           "auto_speedup_over_flat": round(auto["queries_per_second"] / flat["queries_per_second"], 1),
           "auto_speedup_ge_50x": auto["queries_per_second"] >= 50 * flat["queries_per_second"],
           "auto_build_le_60s": auto["build_seconds"] <= 60, "auto_index_le_600MB": auto["index_bytes"] <= 600e6}
    if "autofaiss" in by:
        a = by["autofaiss"]
        out["ahead_of_autofaiss_recall"] = auto["recall_at_1"] >= a["recall_at_1"]
        out["ahead_of_autofaiss_qps"] = auto["queries_per_second"] > a["queries_per_second"]
    else:
        out["autofaiss"] = "missing"
    return out


if __name__ == "__main__":
    sys.exit(main())
