"""The Ray engine against the local engine: the same embed jobs, wall time, start-up and outputs.

Jobs: the 13,180 Omniglot evaluation images (zip) and the 60,000 MNIST training images (IDX),
embedded with the shipped model into store folders by

1. the local engine (reader threads + the model in this process),
2. single-node Ray started here (``ray.init(num_cpus=2)``), and
3. a simulated two-node cluster on this machine (``ray.cluster_utils.Cluster``, 1 CPU per node).

Reported per job and engine: wall time of the embed (Ray's start-up excluded and reported on its
own: ``ray.init``, then the encode actor pool, started once per engine and model with
``RayEngine.prepare`` and used by both jobs), its time to the first encoded batch, the overhead against the local engine
(``ray / local - 1``), and whether the outputs are the same (ids, shards and manifest; the largest vector difference). The target is an overhead of at
most 25% on the 60,000-image job. The load average is recorded: on a shared machine the timings
are noisy.

Run from the repository root::

    nice python -m benchmarks.ray_engine --out benchmarks/results/ray_engine.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import command_line, write_result
from oneshot.embedder.artifact import load_model
from oneshot.index.dataset_store import MANIFEST_NAME
from oneshot.index.store import read_embeddings
from oneshot.pipelines.jobs.embed import embed_to_store

JOBS = {
    "omniglot_evaluation": "omniglot/images_evaluation.zip",
    "mnist_train": "mnist/train-images-idx3-ubyte.gz",
}
VOLATILE = {"created", "updated"}


def _manifest(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / MANIFEST_NAME).read_text()).items() if k not in VOLATILE}


def compare(local: Path, other: Path) -> dict:
    """Are two stores the same: ids and table, manifest (timestamps aside), vectors within float error."""
    a, b = read_embeddings(local), read_embeddings(other)
    same_table = a.table.equals(b.table)
    diff = float(np.abs(a.embeddings - b.embeddings).max()) if a.embeddings.shape == b.embeddings.shape else None
    return {"rows": int(len(b.table)), "same_ids": bool(np.array_equal(a.table["id"], b.table["id"])),
            "same_table": bool(same_table), "same_manifest": _manifest(local) == _manifest(other),
            "max_abs_vector_difference": diff}


class FirstBatchTimer:
    """An executor wrapping another (None: the local engine) that times its stream's first batch.

    The time to the first batch is each engine's start-up inside the job: the first batch read and
    encoded, plus, on Ray, the decode workers' first task (each imports the product).
    """

    def __init__(self, inner=None):
        self.inner = inner
        self.first_batch_s: float | None = None

    def encode_stream(self, *args, **kwargs):
        from oneshot.pipelines.engines.local import encode_stream

        started = time.perf_counter()
        for item in (encode_stream if self.inner is None else self.inner.encode_stream)(*args, **kwargs):
            if self.first_batch_s is None:
                self.first_batch_s = round(time.perf_counter() - started, 2)
            yield item


def embed(source: Path, out: Path, model, executor=None) -> dict:
    """Wall time of one embed job and its time to the first encoded batch."""
    timer = FirstBatchTimer(executor)
    started = time.perf_counter()
    embed_to_store(source, out, model, show_progress=False, executor=timer)
    return {"seconds": round(time.perf_counter() - started, 2), "first_batch_s": timer.first_batch_s}


def ray_runs(name: str, connect, jobs: dict[str, Path], work: Path, model, local: dict) -> dict:
    """Start Ray with ``connect()`` (timed), run every job on it, compare with the local stores."""
    import ray

    from oneshot.pipelines.engines.ray import RayEngine

    started = time.perf_counter()
    cluster = connect()
    startup = round(time.perf_counter() - started, 2)
    engine = RayEngine()
    started = time.perf_counter()
    engine.prepare(model, wait=True)
    result = {"startup_s": startup, "encode_pool_startup_s": round(time.perf_counter() - started, 2), "resources": {k: v for k, v in ray.cluster_resources().items()
                                                   if k in ("CPU", "GPU")},
              "nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "jobs": {}}
    try:
        for job, source in jobs.items():
            load = os.getloadavg()[0]
            timing = embed(source, work / f"{name}_{job}", model, engine)
            result["jobs"][job] = {**timing, "overhead_vs_local": round(timing["seconds"] / local[job]["seconds"] - 1, 3),
                                   "load_average_before": round(load, 2),
                                   **compare(work / f"local_{job}", work / f"{name}_{job}")}
            print(name, job, result["jobs"][job], flush=True)
    finally:
        engine.close()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return result


def torch_threads_check(model, source: Path, images: int = 2048) -> dict:
    """Seconds to encode ``images`` MNIST images in this process with 2 torch threads, then with 1.

    On a machine busier than its cores, OpenMP threads wait for each other; one-threaded
    processes (the Ray engine's actors) do not. This shows how much that weighs here and now.
    """
    import torch

    from oneshot.data.source import open_source
    from oneshot.embedder.inference import InferenceModel
    from oneshot.pipelines.engines.local import prepare_batch

    opened = open_source(source)
    pixels = prepare_batch(opened, opened.table.iloc[:images], model.recipe).pixels
    before = torch.get_num_threads()
    result = {"images": images, "load_average_before": round(os.getloadavg()[0], 2)}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            engine = InferenceModel(model)
            started = time.perf_counter()
            engine(pixels)
            result[f"seconds_{threads}_threads"] = round(time.perf_counter() - started, 2)
    finally:
        torch.set_num_threads(before)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="folder holding omniglot/ and mnist/ (default: ../shared/data or ../../shared/data)")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--skip-two-node", action="store_true", help="only single-node Ray")
    parser.add_argument("--work", default=None, help="folder for the stores (default: a temporary one, deleted)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    data = Path(args.data) if args.data else next((p for p in (Path("../shared/data"), Path("../../shared/data"))
                                                   if p.is_dir()), Path("../shared/data"))
    jobs = {job: data / JOBS[job] for job in args.jobs}
    from oneshot.pipelines.engines.ray import RayEngine

    defaults = RayEngine()
    model = load_model(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="ray_engine_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"command": command_line("ray_engine", argv),
                    "machine": f"{os.cpu_count()} cores; load_average_before is recorded with each job",
                    "ray_version": ray.__version__, "model": args.model or "shipped default",
                    "model_fingerprint": model.fingerprint,
                    "ray_engine": {"encode_actors": "one per CPU of the cluster", "actor_cpus": defaults.actor_cpus,
                                   "decode_task_cpus": defaults.decode_cpus,
                                   "torch_threads_per_actor": defaults.threads or 1},
                    "local_engine": "reader threads (default_workers) + the model in this process (torch threads = cores)",
                    "local": {}}
    try:
        for job, source in jobs.items():
            load = os.getloadavg()[0]
            timing = embed(source, work / f"local_{job}", model)
            result["local"][job] = {**timing, "load_average_before": round(load, 2),
                                    "rows": len(read_embeddings(work / f"local_{job}").table)}
            print("local", job, result["local"][job], flush=True)

        if "mnist_train" in jobs:
            result["torch_threads_check"] = torch_threads_check(model, jobs["mnist_train"])
            print("threads", result["torch_threads_check"], flush=True)

        def single_node():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

        result["ray_single_node"] = ray_runs("single", single_node, jobs, work, model, result["local"])

        if not args.skip_two_node:
            def two_nodes():
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
                cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
                return cluster

            result["ray_two_nodes"] = ray_runs("two_nodes", two_nodes, jobs, work, model, result["local"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    big = "mnist_train"
    if big in result["local"]:
        measured = result["ray_single_node"]["jobs"][big]
        overhead = measured["overhead_vs_local"]
        result["target"] = {"job": big, "max_overhead": 0.25, "overhead": overhead, "met": overhead <= 0.25}
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
