"""CPU against CUDA: the same vectors and answers, and the speed of the GPU paths.

Run where CUDA is present (torch with CUDA; FAISS's GPU build for the search sections:
``pip install 'oneshot[gpu]'``). A section whose device or build is missing is reported as
skipped with the reason, never as passed.

1. ``encode``: the shipped model's vectors of the 13,180 Omniglot evaluation images and the
   60,000 MNIST training images, embedded by ``embed_to_store`` with ``device="cpu"`` and with
   ``device="cuda"``: the smallest cosine between a row's two vectors (target >= 0.9999, the
   issue's bar for optimised against eager), whole-job images/s of each, and forward-only
   images/s on CUDA at the batch size the product chooses there.
2. ``search``: the 1M-vector spec of ``benchmarks/index_scale.py`` (seed 0). Flat index searched
   on the CPU and on a GPU clone: top-1 agreement, largest score difference, queries/s of each.
   ``auto`` built with its IVF k-means on the GPU and on the CPU: build seconds, recall@1 against
   exact search, and queries/s on the GPU with the tuned ``nprobe``.
3. ``identify``: the Omniglot evaluation images against their own index, the index searched on
   the CPU and on the GPU: the same answers.

Usage (repository root)::

    python -m benchmarks.gpu --data ../shared/data --out benchmarks/results/gpu.json
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import command_line, write_result


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def section_encode(data: Path, work: Path) -> dict:
    import torch

    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.inference import InferenceModel
    from oneshot.index.store import read_embeddings
    from oneshot.pipelines.jobs.embed import embed_to_store

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    model = load_model(None)
    result: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    for name, source in (("omniglot_evaluation", data / "omniglot" / "images_evaluation.zip"),
                         ("mnist_train", data / "mnist" / "train-images-idx3-ubyte.gz")):
        timings, vectors = {}, {}
        for device in ("cpu", "cuda"):
            out = work / f"{name}_{device}"
            started = time.perf_counter()
            embed_to_store(source, out, model, device=device, show_progress=False)
            seconds = time.perf_counter() - started
            stored = read_embeddings(out)
            vectors[device] = stored.embeddings
            timings[device] = {"seconds": round(seconds, 2), "images_per_s": _rate(len(stored.table), seconds)}
        a, b = vectors["cpu"], vectors["cuda"]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        result[name] = {"rows": int(len(a)), **{f"{d}_{k}": v for d, t in timings.items() for k, v in t.items()},
                        "min_cosine_cpu_vs_cuda": float(cosine.min()), "met": bool(cosine.min() >= 0.9999)}
        print("encode", name, result[name], flush=True)
    engine = InferenceModel(model, device="cuda")
    batch = np.random.default_rng(0).random((engine.batch_size, 1, model.recipe.size, model.recipe.size),
                                            dtype=np.float32)
    engine(batch)
    torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3.0:
        engine(batch)
        done += len(batch)
    torch.cuda.synchronize()
    result["forward_only"] = {"mode": engine.mode, "batch_size": engine.batch_size,
                              "images_per_s": _rate(done, time.perf_counter() - started)}
    print("forward", result["forward_only"], flush=True)
    return result


def _timed_search(index, queries: np.ndarray, use_gpu: bool) -> tuple[object, float]:
    index.search(queries[:100], 1, use_gpu=use_gpu)  # warm-up: the GPU clone is made here
    started = time.perf_counter()
    found = index.search(queries, 1, batch_size=len(queries), use_gpu=use_gpu)
    return found, time.perf_counter() - started


def section_search(work: Path, n: int) -> dict:
    import pandas as pd

    from benchmarks.index_scale import SPEC, make_data
    from oneshot.index.gpu import gpu_count
    from oneshot.index.vector_index import VectorIndex

    if gpu_count() == 0:
        return {"skipped": "FAISS cannot use a GPU here: a CPU-only build, no device, or a GPU build "
                           "without kernels for this GPU (the log says which)"}
    spec = {**SPEC, "n": n}
    gallery_path, queries_path = make_data(work / "vectors", spec)
    gallery, queries = np.load(gallery_path), np.load(queries_path)
    table = pd.DataFrame({"id": np.arange(len(gallery), dtype=np.int64), "label": ""})
    result: dict = {"spec": spec, "gpus": gpu_count()}
    flat = VectorIndex.build(gallery, table, "cosine", kind="flat")
    cpu, cpu_s = _timed_search(flat, queries, use_gpu=False)
    gpu, gpu_s = _timed_search(flat, queries, use_gpu=True)
    truth = cpu.ids[:, 0]
    result["flat"] = {"cpu_queries_per_s": _rate(len(queries), cpu_s), "gpu_queries_per_s": _rate(len(queries), gpu_s),
                      "same_top1": float((gpu.ids[:, 0] == truth).mean()),
                      "max_score_difference": float(np.abs(gpu.scores[:, 0] - cpu.scores[:, 0]).max())}
    print("flat", result["flat"], flush=True)
    del flat
    for trainer, use_gpu in (("gpu_kmeans", True), ("cpu_kmeans", False)):
        started = time.perf_counter()
        index = VectorIndex.build(gallery, table, "cosine", kind="auto", use_gpu=use_gpu)
        build_s = time.perf_counter() - started
        found, search_s = _timed_search(index, queries, use_gpu=True)
        result[f"auto_{trainer}"] = {"factory": index.plan.get("factory"),
                                     "search_params": index.search_params, "build_s": round(build_s, 1),
                                     "recall_at_1": float((found.ids[:, 0] == truth).mean()),
                                     "gpu_queries_per_s": _rate(len(queries), search_s)}
        print("auto", trainer, result[f"auto_{trainer}"], flush=True)
    return result


def section_identify(data: Path, work: Path) -> dict:
    import pandas as pd

    from oneshot.index.gpu import gpu_count
    from oneshot.index.store import read_embeddings
    from oneshot.index.vector_index import VectorIndex
    from oneshot.pipelines.jobs.embed import embed_to_store
    from oneshot.pipelines.jobs.identify import identify_job

    if gpu_count() == 0:
        return {"skipped": "FAISS cannot use a GPU here (see the search section)"}
    gallery = work / "mnist_train_cuda"
    if not gallery.exists():
        return {"skipped": "needs the encode section's MNIST store"}
    index_path = work / "mnist_train.faiss"
    VectorIndex.from_store(gallery).save(index_path)
    queries = data / "mnist" / "t10k-images-idx3-ubyte.gz"
    # FAISS on the GPU against the CPU, on the same query vectors (embedded once, on the CPU)
    vectors_store = embed_to_store(queries, work / "mnist_test_cpu", None, device="cpu", show_progress=False).store
    identify_job(vectors_store.folder, index_path, work / "answers_store", show_progress=False)
    on_gpu = pd.read_parquet(work / "answers_store")
    stored = read_embeddings(vectors_store.folder)
    on_cpu = VectorIndex.load(index_path).search(stored.embeddings, 1, use_gpu=False)
    order = pd.Series(np.arange(len(stored.table)), index=stored.table["id"].to_numpy())
    rows = order.loc[on_gpu["query_id"].to_numpy()].to_numpy()
    same_label = on_gpu["candidate"].to_numpy() == on_cpu.labels[rows, 0]
    score_difference = np.abs(on_gpu["score"].to_numpy() - on_cpu.scores[rows, 0])
    result = {"gallery": "MNIST train (60,000)", "queries": int(len(on_gpu)),
              "gpu_vs_cpu_search_same_label": float(same_label.mean()),
              "gpu_vs_cpu_max_score_difference": float(score_difference.max())}
    # end to end on the GPU: images in, answers out
    started = time.perf_counter()
    summary = identify_job(queries, index_path, work / "answers_images", device="cuda", show_progress=False)
    result.update({"end_to_end_seconds": round(time.perf_counter() - started, 2),
                   "end_to_end_accuracy": summary.accuracy})
    print("identify", result, flush=True)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding omniglot/ and mnist/")
    parser.add_argument("--sections", default="encode,search,identify")
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery vectors of the search section")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="oneshot_gpu_"))
    result: dict = {"command": command_line("gpu", argv),
                    "machine": f"{platform.node()}, {os.cpu_count()} cores"}
    sections = {"encode": lambda: section_encode(Path(args.data), work),
                "search": lambda: section_search(work, args.n),
                "identify": lambda: section_identify(Path(args.data), work)}
    for name in args.sections.split(","):
        try:
            result[name] = sections[name]()
        except Exception as error:  # one failing section must not hide the others' figures
            result[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
            print(name, "failed:", result[name]["traceback"], flush=True)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
