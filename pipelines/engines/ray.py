"""The Ray engine: the same embed and identify jobs, with the batch work spread over a Ray cluster.

``RayEngine`` is an *executor* for :func:`oneshot.pipelines.jobs.embed.embed_to_store` and
:func:`oneshot.pipelines.jobs.identify.identify_job`: those jobs keep planning, resuming and writing
(shards and manifests in exactly the local format, by the same code), and ask the executor for
their two streams:

- ``encode_stream``: each planned batch is decoded in a Ray task with the product's own readers
  and preprocessing recipe (:func:`decode_batch`), and its pixels go straight from that task to
  one of a pool of encode actors, each holding the model (on CPU, or one GPU per actor). The pool
  is started once per engine and model (:meth:`RayEngine.prepare` starts it while the job is
  still planning) and kept for the engine's next jobs; a fresh actor pool per job, as Ray Data's
  ``map_batches(compute=ActorPoolStrategy(...))`` makes, cost ~5 s per job here. Batches come
  back in plan order, as local :func:`~oneshot.pipelines.engines.local.encode_stream` yields them.
- ``answer_stream``: query batches go to actors that each hold the index (one per node by
  default; loaded from the index file, memory-mapped where FAISS can), at most two batches in
  flight per actor; answers come back in order.

Ray is optional (``pip install 'oneshot[ray]'``): this module imports it inside functions only.
A bad image does not fail its task: :func:`decode_batch` returns it as a reject ``(path,
reason)`` and the executor's ``on_error`` decides (``"fail"``: raise :class:`ImageReadError`
naming the file, like the local engine; ``"skip"``: drop the row, keep it in
``PreparedBatch.rejected``). A lost worker is retried by Ray: decode tasks are re-run (
``max_retries`` of :data:`TASK_RETRIES` for system failures), and encode and index actors are
created with ``max_restarts``/``max_task_retries`` of :data:`ACTOR_RESTARTS`. A re-run after a crash skips
committed shards because the job plans only the shards still missing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd

from oneshot.data.source import ImageSource
from oneshot.embedder.encode import progress_bar
from oneshot.embedder.inference import InferenceModel
from oneshot.errors import ImageReadError, InvalidInputError
from oneshot.index.dataset_store import HASH_COLUMN
from oneshot.pipelines.engines.local import PreparedBatch, answer_batch
from oneshot.pipelines.engines.ray_decode import SharedObject, decode_batch
from oneshot.pipelines.reading import Rejects

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
ON_ERROR = ("fail", "skip")
REJECT_COLUMNS = ["id", "path", "reason"]
TASK_RETRIES = 3  # a decode or index-build task on a lost worker is run again this many times
ACTOR_RESTARTS = 3  # an actor on a lost worker is restarted, and its calls retried, this many times


def import_ray():
    """The ``ray`` module, or a clear error saying how to install the extra."""
    try:
        import ray
    except ImportError as error:
        raise InvalidInputError("--engine ray needs Ray: pip install 'oneshot[ray]'") from error
    return ray


class _Encoder:
    """An actor of the encode pool: builds the model once, then encodes the decoded batches it is given."""

    def __init__(self, model, threads: int | None, mode: str = "auto", precision: str = "float32"):
        import torch

        torch.set_num_threads(threads or 1)  # one process per core beats threads on a busy machine
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.engine = InferenceModel(model, mode=mode, device=device, precision=precision)

    def ready(self) -> str:
        """The inference mode the actor chose (a call that returns once the model is built)."""
        return self.engine.mode

    def encode(self, decoded: dict[str, np.ndarray], tta: bool) -> dict[str, np.ndarray]:
        """:func:`decode_batch`'s output with ``pixels`` replaced by ``embedding`` float32 (n, D)."""
        pixels = decoded.pop("pixels")
        encode = np.asarray(decoded["encode"], dtype=bool)
        vectors = np.zeros((len(encode), self.engine.dim), dtype=np.float32)
        if encode.any():
            vectors[encode] = self.engine(np.ascontiguousarray(pixels[encode]), tta=tta)
        decoded["embedding"] = vectors
        return decoded


class _PoolKey(NamedTuple):
    """What an encode pool's actors run: jobs and ``prepare`` that build the same key share the pool."""

    fingerprint: str  # the model's
    requested_mode: str  # the inference mode asked for ("auto", not what it resolves to on one machine)
    precision: str


@dataclass
class _EncodePool:
    """Encode actors that each hold one model, kept by the engine from one job to the next."""

    key: _PoolKey
    actors: list
    model_ref: Any  # the model in the object store: kept alive so that a restarted actor can rebuild it
    cpus: float  # the cluster's CPUs when the pool started (sizes the decode tasks in flight)


# ------------------------------------------------------------------------------ answering


class _IndexHolder:
    """An actor holding the index (memory-mapped from its file where FAISS can): answers batches."""

    def __init__(self, index_path: str | None, serialized, options: dict[str, Any], threads: int | None):
        import faiss

        from oneshot.index.vector_index import VectorIndex

        faiss.omp_set_num_threads(threads or _node_cores())  # one actor per node searches with its cores
        if index_path is not None:  # read-only memory map: the actors of one node share the pages
            self.index = VectorIndex.load(index_path, mmap=True)
        else:
            self.index = _deserialize_index(serialized)
        self.options = options

    def answer(self, batch):
        return answer_batch(self.index, batch, **self.options)


def _node_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _serialize_index(index) -> dict[str, Any]:
    import faiss

    return {"faiss": faiss.serialize_index(index.faiss_index), "table": index.table, "metric": index.metric.name,
            "pca": index.pca, "metadata": index.metadata}


def _deserialize_index(parts: dict[str, Any]):
    import faiss

    from oneshot.index.metric import get_metric
    from oneshot.index.vector_index import VectorIndex

    return VectorIndex(faiss.deserialize_index(parts["faiss"]), parts["table"], get_metric(parts["metric"]),
                       parts["pca"], parts["metadata"])


# -------------------------------------------------------------------------------- engine


class RayEngine:
    """Run the batch work of embed, index build and identify on Ray (see the module docstring).

    Args:
        address: a running cluster (``"auto"``, ``"ray://head:10001"``, ``"head:6379"``); None
            starts Ray on this machine (with ``num_cpus``), or uses the session already started in
            this process.
        num_cpus: CPUs of a Ray started here (default: all).
        actors: encode actors (default: one per GPU, else one per CPU of the cluster).
        actor_cpus: CPUs reserved per encode actor without GPUs (each runs ``threads`` torch
            threads, default 1); decode tasks reserve ``decode_cpus``. The defaults (0.75 and
            0.25) leave room for decoding beside one actor per CPU: encoding costs ~7x decoding.
        index_actors: identify actors, each holding the index (default: one per node; they reserve
            no CPU and search with the node's cores, or ``threads``).
        on_error: ``"fail"`` (a bad image stops the job, naming the file) or ``"skip"``.
        threads: torch / FAISS threads per actor (default: Ray's, one per CPU the actor holds).

    Use as a context manager (or call :meth:`close`): Ray started here is shut down at the end.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, actors: int | None = None,
                 index_actors: int | None = None, on_error: str = "fail", threads: int | None = None,
                 actor_cpus: float = 0.75, decode_cpus: float = 0.25):
        if on_error not in ON_ERROR:
            raise InvalidInputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        for name, value in (("num_cpus", num_cpus), ("actors", actors), ("index_actors", index_actors)):
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}")
        self.address = address
        self.num_cpus = num_cpus
        self.actors = actors
        self.index_actors = index_actors
        self.on_error = on_error
        self.threads = threads
        self.actor_cpus = actor_cpus
        self.decode_cpus = decode_cpus
        self.startup_seconds = 0.0
        self._started_here = False
        self._pool: _EncodePool | None = None

    # ---------------------------------------------------------------- the Ray session

    def start(self):
        """Connect to (or start) Ray once; returns the ``ray`` module."""
        ray = import_ray()
        if not ray.is_initialized():
            started = time.perf_counter()
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None and self.num_cpus is not None:
                options["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **options)
            self.startup_seconds = time.perf_counter() - started
            self._started_here = True
            log.info("Ray started in %.1f s: %s", self.startup_seconds, ray.cluster_resources())
        return ray

    def close(self) -> None:
        self._release_pool()
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False

    def __enter__(self) -> "RayEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resources(self) -> tuple[float, float, int]:
        ray = self.start()
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        return float(resources.get("CPU", 1)), float(resources.get("GPU", 0)), max(1, nodes)

    # ---------------------------------------------------------------- embedding

    def encode_stream(self, engine: InferenceModel, source: ImageSource, *args, rejects: Rejects | None = None,
                      **kwargs) -> Iterator[tuple[PreparedBatch, np.ndarray]]:
        """(batch, float32 (n, D) vectors) per planned batch, in plan order, encoded on Ray.

        Called as :func:`oneshot.pipelines.engines.local.encode_stream` is, in either of its forms:
        ``(engine, source, plan, workers, tta, known, show_progress, desc)`` with ``plan`` a list
        of row slices, or ``(engine, source, table, plan, workers, ...)`` with ``plan`` a list of
        ``(start, stop)`` row ranges of ``table``. ``workers`` is unused (Ray sizes the decode
        tasks). One progress bar for the whole job.
        """
        if args and isinstance(args[0], pd.DataFrame):  # (table, row ranges, workers, ...)
            table, ranges, *rest = args
            args = ([table.iloc[start:stop] for start, stop in ranges], *rest)
        for batch, vectors in self._encode_slices(engine, source, *args, **kwargs):
            if rejects is not None:  # the job's own collector: listed beside its output
                rejects.extend(list(zip(batch.rejected["path"], batch.rejected["reason"])))
                rejects.kept += len(batch.rows)
            yield batch, vectors

    def prepare(self, model=None, wait: bool = False, mode: str = "auto", precision: str = "float32") -> None:
        """Start Ray and the encode actors for ``model`` (a model, a model file, or None for the
        shipped one) now: each actor builds the model while the job plans, and later jobs with the
        same model, inference ``mode`` and ``precision`` reuse them (jobs start the pool themselves when it is not
        there). ``wait``: return once every actor has built its model."""
        from oneshot.embedder.artifact import as_model

        embedder = as_model(model)
        pool = self._encode_pool(_PoolKey(embedder.fingerprint, mode, precision), lambda: embedder)
        if wait:
            import ray

            ray.get([actor.ready.remote() for actor in pool.actors])

    def _encode_pool(self, key: _PoolKey, model) -> _EncodePool:
        """The encode actors for ``key`` (``model()`` gives the model to ship when they must be started):
        one per GPU, else one per CPU of the cluster."""
        if self._pool is not None and self._pool.key == key:
            return self._pool
        self._release_pool()
        ray = self.start()
        cpus, gpus, _ = self._resources()
        count = self.actors or (int(gpus) if gpus >= 1 else max(1, int(cpus)))
        resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": self.actor_cpus}
        actor = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS, **resources)(_Encoder)
        model_ref = ray.put(model())
        actors = [actor.options(scheduling_strategy="SPREAD").remote(model_ref, self.threads, key.requested_mode, key.precision)
                  for _ in range(count)]
        self._pool = _EncodePool(key, actors, model_ref, cpus)
        return self._pool

    def _release_pool(self) -> None:
        """Stop the encode actors (their CPUs go back to the cluster, e.g. for index-build tasks)."""
        if self._pool is not None:
            import ray

            for actor in self._pool.actors:
                ray.kill(actor)
            self._pool = None

    def _encode_slices(self, engine: InferenceModel, source: ImageSource, plan: list[pd.DataFrame], workers: int,
                       tta: bool = False, known: pd.Series | None = None, show_progress: bool | None = None,
                       desc: str = "embed") -> Iterator[tuple[PreparedBatch, np.ndarray]]:
        """Decode tasks feed the encode actors; at most two batches per actor plus one per CPU are in
        flight (memory stays bounded), and batches come back in plan order."""
        ray = self.start()
        total = int(sum(len(rows) for rows in plan))
        if not total:
            return
        pool = self._encode_pool(_PoolKey(engine.fingerprint or f"unsaved-{id(engine)}", engine.requested_mode,
                                          engine.precision), lambda: _portable_copy(engine))
        decode = ray.remote(num_cpus=self.decode_cpus, max_retries=TASK_RETRIES)(decode_batch)
        source_box = SharedObject(ray.put(source))
        known_box = SharedObject(ray.put(known)) if known is not None else None
        limit = 2 * len(pool.actors) + max(1, int(pool.cpus))
        in_flight: deque = deque()
        with progress_bar(show_progress, total, desc) as bar:
            for number, rows in enumerate(plan):
                columns = {"id": rows["id"].to_numpy(dtype=np.int64), "path": rows["path"].astype(str).to_numpy()}
                decoded = decode.remote(columns, source_box, engine.recipe, known_box)
                in_flight.append((rows, pool.actors[number % len(pool.actors)].encode.remote(decoded, tta)))
                while len(in_flight) >= limit or (in_flight and number == len(plan) - 1):
                    done_rows, reference = in_flight.popleft()
                    yield self._assemble(done_rows, _as_frame(ray.get(reference)), engine.dim)
                    bar.update(len(done_rows))

    def _assemble(self, rows: pd.DataFrame, done: pd.DataFrame, dim: int) -> tuple[PreparedBatch, np.ndarray]:
        """The planned batch's rows (as the local engine has them) with hashes, rejects and vectors."""
        done = done.set_index("id").loc[rows["id"].to_numpy()]
        out = rows.reset_index(drop=True).copy()
        out[HASH_COLUMN] = done[HASH_COLUMN].to_numpy(dtype=object)
        reasons = done["reason"].to_numpy(dtype=object)
        bad = reasons != ""
        rejected = pd.DataFrame({"id": out["id"][bad].to_numpy(), "path": out["path"][bad].to_numpy(),
                                 "reason": reasons[bad]}, columns=REJECT_COLUMNS)
        if bad.any():
            if self.on_error == "fail":
                raise ImageReadError(str(rejected["reason"].iloc[0]))
            log.warning("skipped %d unreadable images, e.g. %s", int(bad.sum()), rejected["reason"].iloc[0])
        encode = done["encode"].to_numpy(dtype=bool)
        vectors = np.stack(done["_vector"].to_numpy()[encode]) if encode.any() else np.zeros((0, dim), np.float32)
        kept = out[encode].reset_index(drop=True)
        return PreparedBatch(kept, np.zeros((0, 1, 1, 1), np.float32), rejected, len(rows)), \
            np.ascontiguousarray(vectors, dtype=np.float32)

    # ---------------------------------------------------------------- identification

    def answer_stream(self, batches, index, index_path: str | None, threshold: float | None, k: int, top: int,
                      per_identity: int) -> Iterator[pd.DataFrame]:
        """Answers per query batch, in order, from actors that each hold the index.

        Same signature and output as :func:`oneshot.pipelines.engines.local.answer_stream`.
        """
        ray = self.start()
        _, _, nodes = self._resources()
        count = self.index_actors or nodes
        options = {"threshold": threshold, "k": k, "top": top, "per_identity": per_identity}
        serialized = None if index_path is not None else ray.put(_serialize_index(index))
        # no CPU reserved: the actors must never keep the encode pool of image queries from starting
        holder = ray.remote(num_cpus=0, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(_IndexHolder)
        actors = [holder.options(scheduling_strategy="SPREAD").remote(index_path, serialized, options, self.threads)
                  for _ in range(count)]
        in_flight: deque = deque()
        try:
            for number, batch in enumerate(batches):
                in_flight.append(actors[number % count].answer.remote(batch))
                if len(in_flight) >= 2 * count:
                    yield ray.get(in_flight.popleft())
            while in_flight:
                yield ray.get(in_flight.popleft())
        finally:
            for actor in actors:
                ray.kill(actor)

    # ---------------------------------------------------------------- index build

    def build_index(self, store, out, pca_dim: int | None = None, pca_variance: float | None = None, seed: int = 0,
                    index=None):
        """``oneshot index build`` on Ray (see :mod:`oneshot.pipelines.engines.ray_index`); ``index``: an IVF
        factory string or trained empty index whose shard parts are added on Ray."""
        from oneshot.pipelines.engines.ray_index import build_index_on_ray

        self._release_pool()  # the build's tasks need the CPUs the encode actors hold
        return build_index_on_ray(self, store, out, index=index, pca_dim=pca_dim, pca_variance=pca_variance, seed=seed)


def _as_frame(encoded: dict[str, np.ndarray]) -> pd.DataFrame:
    """An encode actor's output as the frame :meth:`RayEngine._assemble` takes."""
    return pd.DataFrame({"id": encoded["id"], HASH_COLUMN: encoded[HASH_COLUMN], "reason": encoded["reason"],
                         "encode": encoded["encode"], "_vector": list(encoded["embedding"])})


def _portable_copy(engine: InferenceModel):
    """The engine's (BatchNorm-folded) eager model on the CPU, to ship to actors that rebuild it."""
    import copy

    import torch

    return copy.deepcopy(engine.folded).to("cpu").to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def executor_for(engine: str, ray_address: str | None = None, **options) -> Iterator[RayEngine | None]:
    """The executor of ``--engine``: None for ``"local"``; for ``"ray"`` a :class:`RayEngine` on the
    cluster at ``ray_address`` (default ``$RAY_ADDRESS``, else Ray started here), closed at the end."""
    if engine not in ENGINES:
        raise InvalidInputError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "local":
        if ray_address:
            raise InvalidInputError("--ray-address needs --engine ray")
        yield None
        return
    with RayEngine(address=ray_address or os.environ.get("RAY_ADDRESS") or None, **options) as executor:
        yield executor
