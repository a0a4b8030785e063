"""Gallery scale benchmark (issue 7): encode, identify, pairwise-vs-index and embed memory.

Sections (``--sections``, comma-separated; each is one function ``section_<name>(args) -> dict``,
so more sections, e.g. the index comparisons, plug in the same way):

- ``encode``: whole-process ``oneshot embed`` img/s (start-up included) on Omniglot's 13,180
  evaluation images and on the 60,000 MNIST training images; start-up time on its own; each as a
  share of two ceilings measured in the same run, so the figures hold on a noisy machine: bare
  decode of the same files in one thread of one process, and the bare forward pass of the same
  model on a batch of the same images (and the compute ceiling: SGEMM GFLOP/s / FLOPs per image).
- ``identify``: ``oneshot identify`` of the 13,180 evaluation images against their own index,
  end to end (one process: start-up, encoding, search, writing the answers), beside the same-run
  ceiling (start-up + bare decode on every core + bare forward + bare search).
- ``pairwise``: the reference write-ups' approach (one twin-network pass per query-gallery pair,
  scored on the pair's two embeddings with the twin head) against embedding once and searching the
  index, on 1,000 queries x 1,000 gallery images: the ratio of wall times.
- ``memory``: peak resident memory of ``oneshot embed`` on 60,000 vs 600,000 images (MNIST
  written out as PNG folders, ten times with small shifts for the larger one, under /tmp).

Run from the repository root (timings depend on the machine and on what else runs on it)::

    nice python -m benchmarks.gallery_scale --sections encode,identify,pairwise,memory
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import write_result

DATA = Path(os.environ.get("ONESHOT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OMNIGLOT_EVAL = DATA / "omniglot" / "images_evaluation.zip"
MNIST_TRAIN = DATA / "mnist" / "train-images-idx3-ubyte.gz"
RESULTS = Path(__file__).parent / "results" / "gallery_scale.json"
SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1), (2, 0)]
CLI = [sys.executable, "-m", "oneshot.pipelines.cli"]


# --------------------------------------------------------------------------- helpers


def timed_process(command: list[str]) -> dict:
    """Run a command; wall seconds and the child's peak resident memory (MB, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{err[-2000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": out.strip()}


def embed_process(source: Path, out: Path, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    return timed_process(CLI + ["embed", str(source), "--out", str(out), *extra])


def sgemm_gflops(size: int = 1024, repeats: int = 10) -> float:
    """float32 matrix-multiply GFLOP/s with torch's default threads (best of ``repeats``)."""
    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def flops_per_image(model) -> int:
    """Multiply-adds x 2 of every conv and linear layer for one input image."""
    import torch
    from torch import nn

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * output.numel()
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    size = model.recipe.size
    with torch.inference_mode():
        model(torch.zeros(1, 1, size, size))
    for handle in handles:
        handle.remove()
    return total


def forward_rate(function, batch: np.ndarray, seconds: float = 3.0) -> float:
    """Images per second of ``function(batch)`` over at least ``seconds`` (after one warm-up call)."""
    function(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


# --------------------------------------------------------------------------- sections


def decode_rate(source, count: int | None = None) -> float:
    """Bare decode ceiling: images per second of reading and preprocessing ``source`` in one thread."""
    from oneshot.embedder.artifact import load_model

    recipe = load_model().recipe
    paths = list(source.table["path"][:count])
    started = time.perf_counter()
    for start in range(0, len(paths), 1024):
        recipe.batch(source.read(paths[start : start + 1024]))
    return len(paths) / (time.perf_counter() - started)


def bare_forward(source, model: str | None = None, precision: str = "float32") -> dict:
    """The bare forward pass of ``model`` (None: the shipped default) on the first images of
    ``source`` at the job's batch size: ``{"forward_img_per_s", "batch", "mode"}``."""
    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.inference import InferenceModel

    loaded = load_model(model)
    engine = InferenceModel(loaded, precision=precision)
    batch = loaded.recipe.batch(source.read(list(source.table["path"][: engine.batch_size])))
    return {"forward_img_per_s": round(forward_rate(engine, batch), 1), "batch": len(batch), "mode": engine.mode}


def ceilings(source_path: Path, precision: str = "float32") -> dict:
    """The same-run ceilings of an embed of ``source_path``: bare decode (one thread, this process)
    and the bare forward pass of the same model on a batch of the same images at the job's batch size."""
    from oneshot.data.source import open_source

    source = open_source(source_path)
    return {"decode_img_per_s": round(decode_rate(source), 1), **bare_forward(source, precision=precision)}


def precision_flags(args) -> list[str]:
    """The jobs' ``--precision`` flag: none for float32 (the commands as they always ran)."""
    return [] if args.precision == "float32" else ["--precision", "bf16"]


def startup_seconds() -> float:
    """What a job costs before its first image: imports, the model, the source listing, graph freezing."""
    return timed_process([sys.executable, "-c", (
        "import oneshot.pipelines.jobs.embed; from oneshot.embedder.artifact import load_model; "
        "from oneshot.embedder.inference import InferenceModel; from oneshot.data.source import open_source; "
        f"m = load_model(); open_source({str(OMNIGLOT_EVAL)!r}); InferenceModel(m)")])["seconds"]


def shares(img_per_s: float, startup: float, count: int, ceiling: dict) -> dict:
    """A job's speed as shares of the same-run ceilings, whole process and with start-up taken out."""
    seconds = count / img_per_s
    steady = count / max(seconds - startup, 1e-9)
    return {"steady_img_per_s": round(steady, 1),
            "share_of_forward": round(img_per_s / ceiling["forward_img_per_s"], 3),
            "steady_share_of_forward": round(steady / ceiling["forward_img_per_s"], 3),
            "share_of_decode": round(img_per_s / ceiling["decode_img_per_s"], 3)}


def section_encode(args) -> dict:
    import torch

    from oneshot.embedder.artifact import load_model

    work = Path(args.work)
    result = {"startup_seconds": startup_seconds(), "threads": torch.get_num_threads()}
    for name, source, count in (("omniglot_evaluation", OMNIGLOT_EVAL, 13180), ("mnist_train", MNIST_TRAIN, 60000)):
        run = embed_process(source, work / f"{name}.parquet", *precision_flags(args))
        ceiling = ceilings(source, args.precision)
        img_per_s = count / run["seconds"]
        result[name] = {"images": count, "seconds": run["seconds"], "img_per_s": round(img_per_s, 1),
                        "peak_rss_mb": run["peak_rss_mb"],
                        "command": " ".join([f"oneshot embed {source} --out OUT", *precision_flags(args)]),
                        "ceiling": ceiling, **shares(img_per_s, result["startup_seconds"], count, ceiling)}
        print(f"  embed {name}: {img_per_s:.0f} img/s whole process ({run['seconds']:.1f} s); ceilings: decode "
              f"{ceiling['decode_img_per_s']:.0f}, forward {ceiling['forward_img_per_s']:.0f} img/s; share of "
              f"forward {result[name]['share_of_forward']:.2f} ({result[name]['steady_share_of_forward']:.2f} "
              "without start-up)", flush=True)
    model = load_model()
    gflops, flops = sgemm_gflops(), flops_per_image(model)
    result["compute"] = {"mflops_per_image": round(flops / 1e6, 2), "sgemm_gflops": round(gflops, 1),
                         "ceiling_img_per_s": round(gflops * 1e9 / flops, 1)}
    return result


def section_identify(args) -> dict:
    """``oneshot identify`` of the evaluation zip against its own index, beside the same-run ceiling:
    start-up, bare decode and forward of the queries, and a bare search of their vectors."""
    import pandas as pd

    from oneshot.index.store import read_embeddings
    from oneshot.index.vector_index import VectorIndex

    work = Path(args.work)
    store = work / "omniglot_evaluation.parquet"
    if not store.is_dir():
        embed_process(OMNIGLOT_EVAL, store, *precision_flags(args))
    index = work / "omniglot_evaluation.faiss"
    timed_process(CLI + ["index", "build", str(store), "--out", str(index)])
    answers = work / "identify_answers"
    shutil.rmtree(answers, ignore_errors=True)
    run = timed_process(CLI + ["identify", str(OMNIGLOT_EVAL), "--index", str(index), "--out", str(answers),
                               *precision_flags(args)])
    frame = pd.read_parquet(answers)
    vectors = read_embeddings(store).embeddings
    loaded = VectorIndex.load(index)
    started = time.perf_counter()
    loaded.search(vectors, 1)
    search_seconds = time.perf_counter() - started
    ceiling = ceilings(OMNIGLOT_EVAL, args.precision)
    startup = startup_seconds()
    n = len(frame)
    # decode and forward share the cores, so the ceiling adds their bare times (decode on every core)
    ceiling_seconds = (startup + n / (ceiling["decode_img_per_s"] * (os.cpu_count() or 1))
                       + n / ceiling["forward_img_per_s"] + search_seconds)
    return {"queries": n, "gallery": n, "seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"],
            "accuracy_vs_folder_labels": round(float((frame["label"] == frame["true_label"]).mean()), 4),
            "ceiling": {**ceiling, "startup_seconds": startup, "search_seconds": round(search_seconds, 3),
                        "seconds": round(ceiling_seconds, 3)},
            "share_of_ceiling": round(ceiling_seconds / run["seconds"], 3),
            "command": " ".join([f"oneshot identify {OMNIGLOT_EVAL} --index INDEX --out OUT", *precision_flags(args)])}


def section_pairwise(args) -> dict:
    """One twin-network pass per (query, gallery) pair vs one pass per image plus an index search."""
    import torch

    from oneshot.data.source import open_source
    from oneshot.embedder.artifact import load_model
    from oneshot.embedder.encode import encode
    from oneshot.index.vector_index import VectorIndex

    model = load_model()
    source = open_source(OMNIGLOT_EVAL)
    rng = np.random.default_rng(0)
    rows = source.table.iloc[np.sort(rng.choice(len(source.table), 2000, replace=False))].reset_index(drop=True)
    gallery, queries = rows.iloc[:1000].reset_index(drop=True), rows.iloc[1000:].reset_index(drop=True)
    g_pixels = model.recipe.batch(source.read(list(gallery["path"])))
    q_pixels = model.recipe.batch(source.read(list(queries["path"])))
    n = len(gallery)
    # Reference approach: for every query, run the twin network on (query, each gallery image) pairs:
    # 2 forward passes per pair, then the pair score; time a sample of queries and scale up.
    sample = 20
    started = time.perf_counter()
    with torch.inference_mode():
        g_tensor = torch.from_numpy(g_pixels)
        for q in range(sample):
            left = torch.from_numpy(q_pixels[q : q + 1]).expand(n, -1, -1, -1).contiguous()
            a, b = model(left), model(g_tensor)
            (a * b).sum(1).argmax()
    pairwise_seconds = (time.perf_counter() - started) / sample * len(queries)
    started = time.perf_counter()
    index = VectorIndex.build(encode(model, g_pixels), gallery, model.metric)
    index.search(encode(model, q_pixels), 1)
    index_seconds = time.perf_counter() - started
    return {"queries": len(queries), "gallery": n, "pairwise_seconds_estimated": round(pairwise_seconds, 2),
            "pairwise_queries_timed": sample, "index_seconds": round(index_seconds, 3),
            "ratio": round(pairwise_seconds / index_seconds, 1),
            "note": "pairwise time measured on 20 queries x 1,000 pairs and scaled to 1,000 queries; both eager"}


def make_mnist_galleries(root: Path) -> tuple[Path, Path]:
    """60k and 600k PNG class folders from MNIST (the larger: ten one- or two-pixel shifts)."""
    import cv2

    from oneshot.data.mnist import read_mnist
    from oneshot.data.source import mnist_labels_for

    small, large = root / "mnist60k", root / "mnist600k"
    if (small / "done").is_file() and (large / "done").is_file():
        return small, large
    images, labels = read_mnist(MNIST_TRAIN, mnist_labels_for(MNIST_TRAIN))
    for folder in (small, large):
        shutil.rmtree(folder, ignore_errors=True)
        for digit in range(10):
            (folder / str(digit)).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        cv2.imwrite(str(small / str(label) / f"{i:05d}.png"), image)
        for s, (dx, dy) in enumerate(SHIFTS):
            cv2.imwrite(str(large / str(label) / f"s{s}_{i:05d}.png"), np.roll(image, (dy, dx), axis=(0, 1)))
    for folder in (small, large):
        (folder / "done").write_text("ok\n")
    return small, large


def section_memory(args) -> dict:
    work = Path(args.work)
    small, large = make_mnist_galleries(Path(args.galleries))
    result = {}
    for name, folder, count in (("60k", small, 60000), ("600k", large, 600000)):
        run = embed_process(folder, work / f"mnist{name}.parquet")
        result[name] = {"images": count, "peak_rss_mb": run["peak_rss_mb"], "seconds": run["seconds"],
                        "img_per_s": round(count / run["seconds"], 1)}
        print(f"  embed {name}: peak {run['peak_rss_mb']:.0f} MB, {run['seconds']:.0f} s", flush=True)
        shutil.rmtree(work / f"mnist{name}.parquet", ignore_errors=True)
    result["growth"] = round(result["600k"]["peak_rss_mb"] / result["60k"]["peak_rss_mb"] - 1, 3)
    return result


SECTIONS = {"encode": section_encode, "identify": section_identify, "pairwise": section_pairwise,
            "memory": section_memory}
TARGETS = {
    ("encode", "mnist_train", "img_per_s"): (">=", 4000),
    ("encode", "omniglot_evaluation", "img_per_s"): (">=", 2500),
    ("encode", "mnist_train", "steady_share_of_forward"): (">=", 0.6),
    ("encode", "omniglot_evaluation", "steady_share_of_forward"): (">=", 0.6),
    ("identify", "seconds"): ("<=", 6),
    ("memory", "growth"): ("<=", 0.10),
}


def _lookup(results: dict, key: tuple):
    value = results
    for part in key:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def print_table(results: dict) -> None:
    print(f"{'measure':48s} {'value':>12s}  target")
    for section, values in results.items():
        if not isinstance(values, dict):
            continue
        for key, value in _flatten(values):
            target = TARGETS.get((section, *key))
            verdict = ""
            if target and isinstance(value, (int, float)):
                op, bound = target
                met = value >= bound if op == ">=" else value <= bound
                verdict = f"{op} {bound} {'met' if met else 'NOT met'}"
            print(f"{section + '.' + '.'.join(key):48s} {value!s:>12s}  {verdict}")


def _flatten(values: dict, prefix: tuple = ()):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        elif not isinstance(value, str):
            yield prefix + (key,), value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="encode,identify,pairwise,memory",
                        help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--work", default=None, help="scratch folder for stores (default: a temporary folder)")
    parser.add_argument("--galleries", default="/tmp/oneshot_gallery_scale", help="where the MNIST PNG galleries go")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="the forward pass of the encode and identify jobs and their ceilings")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    scratch = None
    if args.work is None:
        scratch = tempfile.mkdtemp(prefix="gallery_scale_")
        args.work = scratch
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    load_before = os.getloadavg()
    try:
        for name in chosen:
            print(f"[{name}]", flush=True)
            started = time.perf_counter()
            results[name] = SECTIONS[name](args)
            results[name]["section_seconds"] = round(time.perf_counter() - started, 1)
            results[name]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_result(results, out)  # after each section: a killed run keeps what it measured
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    results["precision"] = args.precision
    results["machine"] = {"cpus": os.cpu_count(), "load_average": load_before,
                          "note": "load_average is read before the run: compare figures only across runs on the same, equally loaded machine"}
    write_result(results, out)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
