"""The Ray engine: the same embed and identify jobs, with the batch work spread over a Ray cluster.

``RayEngine`` is an *executor* for :func:`oneshot.pipelines.embedding.embed_to_store` and
:func:`oneshot.pipelines.identify_job.identify_job`: those jobs keep planning, resuming and writing
(shards and manifests in exactly the local format, by the same code), and ask the executor for
their two streams:

- ``encode_stream``: the planned batches of the source table become a Ray dataset
  (``ray.data.from_pandas``, one block per planned batch); decoding runs in Ray tasks with the
  product's own readers and preprocessing recipe (:func:`decode_batch`); encoding runs in an actor
  pool (``map_batches(_Encoder, compute=ActorPoolStrategy(size=n))``) where each actor builds the model once (on CPU,
  or one GPU per actor). Encoded batches come back in plan order, as local
  :func:`~oneshot.pipelines.embedding.encode_stream` yields them.
- ``answer_stream``: query batches go to actors that each hold the index (one per node by
  default; loaded from the index file, memory-mapped where FAISS can), at most two batches in
  flight per actor; answers come back in order.

Ray is optional (``pip install 'oneshot[ray]'``): this module imports it inside functions only.
A bad image does not fail its task: :func:`decode_batch` returns it as a reject ``(path,
reason)`` and the executor's ``on_error`` decides (``"fail"``: raise :class:`ImageReadError`
naming the file, like the local engine; ``"skip"``: drop the row, keep it in
``PreparedBatch.rejected``). A lost worker is retried by Ray: decode tasks are re-run (Ray's
default ``max_retries=3`` for system failures), Ray Data restarts encode actors and retries their
calls (its defaults ``max_restarts=-1``, ``max_task_retries=-1``), and index actors are created
with ``max_restarts``/``max_task_retries`` of :data:`ACTOR_RESTARTS`. A re-run after a crash skips
committed shards because the job plans only the shards still missing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from typing import Any, Iterator

import numpy as np
import pandas as pd

from oneshot.data.archive import escape_name
from oneshot.data.source import ImageSource
from oneshot.embedder.encode import progress_bar
from oneshot.embedder.inference import InferenceModel
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import ImageReadError, InvalidInputError
from oneshot.index.dataset_store import HASH_COLUMN
from oneshot.pipelines.embedding import PreparedBatch, content_hash
from oneshot.pipelines.rejects import Rejects
from oneshot.pipelines.rejects import read_batch as read_images_or_reject

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
ON_ERROR = ("fail", "skip")
REJECT_COLUMNS = ["id", "path", "reason"]
TASK_RETRIES = 3  # an index-build task on a lost worker is run again this many times
ACTOR_RESTARTS = 3  # an actor on a lost worker is restarted, and its calls retried, this many times


def import_ray():
    """The ``ray`` module, or a clear error saying how to install the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is part of the extra)
    except ImportError as error:
        raise InvalidInputError("--engine ray needs Ray: pip install 'oneshot[ray]'") from error
    return ray


class _Shared:
    """An object in Ray's object store, fetched once per worker process (not per batch).

    Wrapping the reference keeps Ray from resolving it when it is passed as an argument.
    """

    _cache: dict[str, Any] = {}

    def __init__(self, ref):
        self.ref = ref

    def get(self):
        key = self.ref.hex()
        if key not in _Shared._cache:
            import ray

            _Shared._cache.clear()  # one job's objects at a time per worker
            _Shared._cache[key] = ray.get(self.ref)
        return _Shared._cache[key]


# ------------------------------------------------------------------------------ decoding


def read_with_rejects(source: ImageSource, paths: list[str],
                      color: bool = False) -> tuple[list[np.ndarray | None], list[str]]:
    """Decode ``paths``: (image or None per path, reason per path: ``""`` when it decoded).

    The same reader as the local engine (:func:`oneshot.pipelines.rejects.read_batch`): one bad
    file rejects only itself; the executor's ``on_error`` decides what a reject does.
    """
    collector = Rejects()
    images, kept = read_images_or_reject(source, paths, collector, color=color)
    found = dict(zip(kept, images))
    reasons = dict(collector.items)
    return ([found.get(path) for path in paths],
            ["" if path in found else reasons.get(escape_name(str(path)), "cannot be read") for path in paths])


def decode_batch(batch: dict[str, np.ndarray], source: _Shared, recipe: Recipe,
                 known: _Shared | None) -> dict[str, np.ndarray]:
    """A Ray task's step: read, hash and preprocess one planned batch (numpy batch format).

    Args:
        batch: ``id`` (int64), ``path`` (str), ``_batch`` (plan position) for n rows.
        known: content hash by id (appending): rows whose image is unchanged are not encoded.
    Returns:
        The input columns plus ``content_hash`` (str), ``reason`` (str; ``""`` when the image
        decoded), ``encode`` (bool) and ``pixels`` float32 (n, 1, S, S) (zeros where not encoded).
    """
    images, reasons = read_with_rejects(source.get(), [str(p) for p in batch["path"]], color=recipe.channels == 3)
    hashes = np.array([content_hash(image) if image is not None else "" for image in images], dtype=object)
    encode = np.array([image is not None for image in images], dtype=bool)
    if known is not None and encode.any():
        previous = known.get().reindex(np.asarray(batch["id"], dtype=np.int64)).to_numpy()
        encode &= previous != hashes
    pixels = np.zeros((len(images), 1, recipe.size, recipe.size), dtype=np.float32)
    chosen = np.flatnonzero(encode)
    if len(chosen):
        pixels[chosen] = recipe.batch([images[i] for i in chosen])
    return {**batch, HASH_COLUMN: hashes, "reason": np.array(reasons, dtype=object), "encode": encode,
            "pixels": pixels}


class _Encoder:
    """An actor of the encode pool: builds the model once, then encodes the batches it is given."""

    def __init__(self, model, mode: str, tta: bool, threads: int | None):
        import torch

        torch.set_num_threads(threads or 1)  # one process per core beats threads on a busy machine
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.engine = InferenceModel(model, mode=mode, device=device)
        self.tta = tta

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        encode = np.asarray(batch["encode"], dtype=bool)
        vectors = np.zeros((len(encode), self.engine.dim), dtype=np.float32)
        if encode.any():
            vectors[encode] = self.engine(np.ascontiguousarray(pixels[encode]), tta=self.tta)
        batch["embedding"] = vectors
        return batch


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
        from oneshot.pipelines.identify_job import answer_batch

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

        Called as :func:`oneshot.pipelines.embedding.encode_stream` is, in either of its forms:
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

    def _encode_slices(self, engine: InferenceModel, source: ImageSource, plan: list[pd.DataFrame], workers: int,
                       tta: bool = False, known: pd.Series | None = None, show_progress: bool | None = None,
                       desc: str = "embed") -> Iterator[tuple[PreparedBatch, np.ndarray]]:
        ray = self.start()
        total = int(sum(len(rows) for rows in plan))
        if not total:
            return
        cpus, gpus, _ = self._resources()
        actors = self.actors or (int(gpus) if gpus >= 1 else max(1, int(cpus)))
        model = _portable_copy(engine)
        source_box = _Shared(ray.put(source))
        known_box = _Shared(ray.put(known)) if known is not None else None
        blocks = [pd.DataFrame({"id": rows["id"].to_numpy(dtype=np.int64), "path": rows["path"].astype(str).to_numpy(),
                                "_batch": np.full(len(rows), number, dtype=np.int64)})
                  for number, rows in enumerate(plan)]
        import ray.data

        context = ray.data.DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars,
                 context.print_on_execution_start)
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the job shows one bar of its own
        context.print_on_execution_start = False
        ray_data_log = logging.getLogger("ray.data")
        quiet = ray_data_log.level
        if not log.isEnabledFor(logging.INFO):  # Ray Data's notes only with --verbose
            ray_data_log.setLevel(logging.ERROR)
        try:
            dataset = ray.data.from_pandas(blocks)
            dataset = dataset.map_batches(decode_batch, batch_size=None, batch_format="numpy", num_cpus=self.decode_cpus,
                                          fn_kwargs={"source": source_box, "recipe": engine.recipe, "known": known_box})
            encoder = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": self.actor_cpus}
            dataset = dataset.map_batches(_Encoder, batch_size=None, batch_format="numpy",
                                          compute=ray.data.ActorPoolStrategy(size=actors),
                                          fn_constructor_kwargs={"model": model, "mode": engine.mode, "tta": tta,
                                                                 "threads": self.threads},
                                          **encoder)
            yield from self._in_plan_order(dataset, plan, engine.dim, show_progress, desc)
        finally:
            (context.execution_options.preserve_order, context.enable_progress_bars,
             context.print_on_execution_start) = saved
            ray_data_log.setLevel(quiet)

    def _in_plan_order(self, dataset, plan: list[pd.DataFrame], dim: int, show_progress: bool | None,
                       desc: str) -> Iterator[tuple[PreparedBatch, np.ndarray]]:
        """Regroup the dataset's output by planned batch and yield each once complete, in order."""
        pending: dict[int, list[pd.DataFrame]] = {}
        received: dict[int, int] = {}
        following = 0
        total = int(sum(len(rows) for rows in plan))
        with progress_bar(show_progress, total, desc) as bar:
            for output in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                vectors = np.asarray(output.pop("embedding"), dtype=np.float32).reshape(-1, dim)
                frame = pd.DataFrame({key: list(value) if np.ndim(value) > 1 else value for key, value in output.items()})
                frame["_vector"] = list(vectors)
                for number, part in frame.groupby("_batch", sort=False):
                    pending.setdefault(int(number), []).append(part)
                    received[int(number)] = received.get(int(number), 0) + len(part)
                while following < len(plan) and received.get(following, 0) == len(plan[following]):
                    yield self._assemble(plan[following], pd.concat(pending.pop(following), ignore_index=True), dim)
                    bar.update(len(plan[following]))
                    following += 1
        if following != len(plan):
            raise RuntimeError(f"Ray returned {following} of {len(plan)} planned batches")

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

        Same signature and output as :func:`oneshot.pipelines.identify_job.answer_stream`.
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
        """``oneshot index build`` on Ray (see :mod:`oneshot.pipelines.ray_index`); ``index``: an IVF
        factory string or trained empty index whose shard parts are added on Ray."""
        from oneshot.pipelines.ray_index import build_index_on_ray

        return build_index_on_ray(self, store, out, index=index, pca_dim=pca_dim, pca_variance=pca_variance, seed=seed)


def _portable_copy(engine: InferenceModel):
    """The engine's (BatchNorm-folded) eager model on the CPU, to ship to actors that rebuild it."""
    import copy

    import torch

    return copy.deepcopy(engine._eager).to("cpu").to(memory_format=torch.contiguous_format)


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
