"""Tune an approximate index's search parameter to a recall target, measured against exact search.

The sample: ``size`` gallery rows drawn with a seed serve as queries; each query's ground truth is
its exact nearest *other* gallery row (its own row left out). Recall@1 counts a query as found
when the index's best non-self answer is that row, or another row with the same exact score
(duplicates). :func:`tune` tries the parameter's values in increasing order and keeps the first
whose sample recall reaches ``target + one standard error`` (``sqrt(t (1 - t) / size)``), so the
tuned index meets the target on unseen queries too, not only on the sample. Recall grows with
``nprobe``/``efSearch``: the candidate values are tried at positions 0, 1, 3, 7, ... until one
reaches the target, then a binary search over the gap finds the smallest that does. Tuning gives
up (``met`` False, the largest value tried kept) at the last value or when three values in a row
gained less than 0.002 recall while 0.02 or more below the target (compressed codes that
cannot reach it).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from oneshot.index.metric import Metric
from oneshot.index.vector_blocks import DEFAULT_BLOCK_SIZE, VectorBlocks, gather, sample_positions

logger = logging.getLogger(__name__)

DEFAULT_RECALL = 0.99
DEFAULT_SAMPLE = 1000
TRUTH_DEPTH = 4
TIE_TOLERANCE = 1e-5
NPROBE_VALUES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                 1024, 1536, 2048, 4096, 8192, 16384, 32768, 65536)
# stop when recall has gained less than PLATEAU_GAIN over the last PLATEAU_TRIALS values tried
PLATEAU_TRIALS = 3
PLATEAU_GAIN = 0.002
PLATEAU_DISTANCE = 0.02  # ... while still this far below the target
EF_SEARCH_VALUES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)

# search(queries, k) -> (scores (Q, k) higher = better, ids (Q, k))
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class TuningSample:
    """Held-out queries with their exact neighbours (own row excluded), best first."""

    queries: np.ndarray
    query_ids: np.ndarray
    truth_ids: np.ndarray
    truth_scores: np.ndarray

    def __len__(self) -> int:
        return len(self.query_ids)


def search_parameter(index: faiss.Index) -> str | None:
    """``"nprobe"`` for an IVF index, ``"efSearch"`` for HNSW, None when there is nothing to tune."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    inner = index
    while True:
        inner = faiss.downcast_index(inner)
        if isinstance(inner, faiss.IndexHNSW):
            return "efSearch"
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform, faiss.IndexRefine)):
            inner = inner.base_index if isinstance(inner, faiss.IndexRefine) else inner.index
            continue
        return None


def parameter_values(index: faiss.Index, name: str) -> list[int]:
    """The values :func:`tune` tries for ``name``, smallest first."""
    if name == "nprobe":
        nlist = faiss.try_extract_index_ivf(index).nlist
        return [v for v in NPROBE_VALUES if v < nlist] + [nlist]
    ntotal = max(int(index.ntotal), EF_SEARCH_VALUES[0])
    return [v for v in EF_SEARCH_VALUES if v < ntotal] + [v for v in EF_SEARCH_VALUES if v >= ntotal][:1]


def set_parameter(index: faiss.Index, name: str, value: int) -> None:
    """Set a search parameter through any wrappers (IDMap2, pre-transforms) of a CPU index."""
    faiss.ParameterSpace().set_index_parameter(index, name, float(value))


def make_sample(source: VectorBlocks, metric: Metric, size: int = DEFAULT_SAMPLE, seed: int = 0,
                block_size: int = DEFAULT_BLOCK_SIZE) -> TuningSample:
    """Draw ``size`` rows of ``source`` as queries and find their exact neighbours in two passes."""
    positions = sample_positions(source.count, size, seed)
    query_ids, raw = gather(source, positions, block_size)
    queries = metric.prepare(raw)
    depth = TRUTH_DEPTH
    best_scores = np.full((len(queries), depth), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), depth), -1, dtype=np.int64)
    for block_ids, block in source.blocks(block_size):
        # FAISS brute force keeps memory at a few MB per block; one more than needed, for the own row
        take = min(depth + 1, len(block_ids))
        raw, rows = faiss.knn(queries, metric.prepare(block), take, metric=metric.faiss_metric)
        scores = metric.from_faiss(raw)
        found = np.where(rows >= 0, block_ids[np.maximum(rows, 0)], -1)
        scores[(found == query_ids[:, None]) | (found == -1)] = -np.inf
        cand_scores = np.concatenate([best_scores, scores], axis=1)
        cand_ids = np.concatenate([best_ids, found], axis=1)
        top = np.argsort(-cand_scores, axis=1, kind="stable")[:, :depth]
        best_scores = np.take_along_axis(cand_scores, top, 1)
        best_ids = np.take_along_axis(cand_ids, top, 1)
    return TuningSample(queries, query_ids, best_ids, best_scores)


def recall_at_1(search: SearchFn, sample: TuningSample) -> float:
    """Share of sample queries whose best non-self answer is an exact nearest neighbour."""
    if len(sample) == 0:
        return 1.0
    _, ids = search(sample.queries, 2)
    first = np.where(ids[:, 0] == sample.query_ids, ids[:, 1], ids[:, 0])
    tied = sample.truth_scores >= sample.truth_scores[:, :1] - TIE_TOLERANCE
    found = ((sample.truth_ids == first[:, None]) & tied).any(axis=1)
    return float(found.mean())


def required_recall(target: float, size: int) -> float:
    """The sample recall :func:`tune` asks for: the target plus one standard error."""
    return min(1.0, target + math.sqrt(max(target * (1.0 - target), 0.0) / max(size, 1)))


@dataclass
class TuningResult:
    """What :func:`tune` chose and measured."""

    name: str | None
    value: int | None
    recall: float
    target: float
    met: bool
    sample: int
    seconds: float
    trials: list

    def to_dict(self) -> dict:
        return {"parameter": self.name, "value": self.value, "recall": self.recall, "target": self.target,
                "met": self.met, "sample": self.sample, "seconds": round(self.seconds, 3),
                "trials": self.trials}


def tune(search: SearchFn, index: faiss.Index, sample: TuningSample, target: float = DEFAULT_RECALL,
         start: int | None = None) -> TuningResult:
    """Smallest value of the index's search parameter whose sample recall@1 reaches the target.

    Args:
        search: searches the index as it will be used (after ``set_parameter``).
        index: the CPU FAISS index whose parameter is set.
        sample: from :func:`make_sample` over the indexed vectors.
        target: recall@1 to reach (in (0, 1]).
        start: skip values below this (re-checks after additions never lower the parameter).

    Returns:
        :class:`TuningResult`; when no value reaches the target, the largest value tried is kept
        and ``met`` is False.
    """
    began = time.perf_counter()
    name = search_parameter(index)
    need = required_recall(target, len(sample))
    if name is None:
        recall = recall_at_1(search, sample)
        return TuningResult(None, None, recall, target, recall >= need, len(sample),
                            time.perf_counter() - began, [])
    values = [v for v in parameter_values(index, name) if start is None or v >= start] or \
        [parameter_values(index, name)[-1]]
    trials: list = []

    def measure(position: int) -> float:
        set_parameter(index, name, values[position])
        value_recall = recall_at_1(search, sample)
        trials.append([values[position], value_recall])
        logger.info("%s=%d: recall@1 %.4f on %d sample queries (need %.4f)", name, values[position],
                    value_recall, len(sample), need)
        return value_recall

    # recall grows with nprobe / efSearch: gallop up the candidate list (positions 0, 1, 3, 7, ...)
    # until the target is reached, then binary-search the gap for the smallest value reaching it.
    # Small values are cheap and usually enough, so the costly large ones are rarely tried.
    below, high, best = -1, None, 0.0
    position, step = 0, 1
    history: list[float] = []
    while True:
        value_recall = measure(position)
        history.append(value_recall)
        if value_recall >= need:
            high, best = position, value_recall
            break
        below = position
        plateau = (len(history) >= PLATEAU_TRIALS and history[-1] - history[-PLATEAU_TRIALS] < PLATEAU_GAIN
                   and value_recall < need - PLATEAU_DISTANCE)
        if position == len(values) - 1 or plateau:
            logger.warning("recall target %.3f not reached: %s=%d gives %.4f%s", target, name, values[position],
                           value_recall, " (no longer improving)" if plateau else "")
            return TuningResult(name, values[position], value_recall, target, False, len(sample),
                                time.perf_counter() - began, sorted(trials))
        position = min(position + step, len(values) - 1)
        step *= 2
    low = below + 1
    while low < high:
        middle = (low + high) // 2
        middle_recall = measure(middle)
        if middle_recall >= need:
            high, best = middle, middle_recall
        else:
            low = middle + 1
    set_parameter(index, name, values[high])
    return TuningResult(name, values[high], best, target, True, len(sample), time.perf_counter() - began,
                        sorted(trials))
