"""What kind of FAISS index to build: ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq`` or a factory string.

A kind becomes an :class:`IndexPlan`: the FAISS index-factory string of the index *inside* the
``IDMap2`` wrapper (PCA/OPQ first when asked), how many vectors to train it on, and which search
parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is tuned to the recall target.

``auto`` picks from the row count, the dimension and a memory budget:

* up to :data:`FLAT_UP_TO` rows: exact flat search (fast enough, nothing to tune);
* above: IVF with ``nlist`` = the power of two nearest ``4 * sqrt(N)`` (clamped to
  [256, 65536]), trained on ``TRAIN_PER_LIST * nlist`` sampled rows, storing full vectors
  (``Flat``) when they fit the budget, else 8-bit scalar-quantised vectors (``SQ8``, 4x smaller),
  else product-quantised codes (``IVFn,PQm``) sized to fit. Compressed codes cost recall: the
  tuning step says so (``met: false``) when the target cannot be reached within the budget.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import faiss

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric

KIND_NAMES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_UP_TO = 50_000
TRAIN_PER_LIST = 40
MIN_TRAIN_PER_LIST = 39
DEFAULT_MAX_MEMORY = 4 * 1024**3
HNSW_M = 32
# ``ivfpq``: one byte of PQ code per this many dimensions (16 bytes for 128-d vectors; at least
# 16 bytes, or one per dimension, for small dimensions). OPQ
# rotations are available through a factory string (e.g. ``OPQ16,IVF4096,PQ16``); they are not
# a default because their training costs minutes on a small CPU.
PQ_DIMS_PER_CODE = 8
# bytes per vector beside the codes: the IDMap2 id (8) and its reverse map (~16), IVF list id (8)
_ID_BYTES = 32


@dataclass(frozen=True)
class IndexPlan:
    """How to build one index.

    Attributes:
        kind: the kind asked for (``auto`` or a name, or ``"factory"`` for a factory string).
        factory: FAISS factory string of the index inside ``IDMap2`` (``PCA``/``OPQ`` included).
        train_size: rows to train on (0: nothing to train).
        reason: one line saying why ``auto`` chose it (empty for explicit kinds).
        estimated_bytes: the index's expected size in memory and on disk.
    """

    kind: str
    factory: str
    train_size: int
    reason: str = ""
    estimated_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def factory_string(metric: Metric, pca_dim: int | None = None) -> str:
    """The full factory string of an exact index with optional PCA: ``"IDMap2,Flat"`` etc.

    Kept for callers of the flat-only index; new code uses :func:`plan_index`.
    """
    return "IDMap2," + _with_pca("Flat", metric, pca_dim)


def _with_pca(inner: str, metric: Metric, pca_dim: int | None) -> str:
    if pca_dim is None:
        return inner
    return f"PCA{pca_dim}," + ("L2norm," if metric.normalizes else "") + inner


def nlist_for(count: int) -> int:
    """IVF list count: power of two nearest ``4 * sqrt(count)``, in [256, 65536] and <= count / 39."""
    target = 4.0 * math.sqrt(max(count, 1))
    nlist = 2 ** int(round(math.log2(max(target, 1.0))))
    nlist = min(max(nlist, 256), 65536)
    while nlist > 1 and nlist * MIN_TRAIN_PER_LIST > count:
        nlist //= 2
    return max(nlist, 1)


def _pq_m(dim: int, bytes_per_vector: int) -> int:
    """Largest PQ sub-quantizer count <= bytes_per_vector that divides ``dim`` (>= 1)."""
    for m in range(min(dim, max(1, bytes_per_vector)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def estimate_bytes(factory: str, count: int, dim: int) -> int:
    """Rough size of an index of ``count`` vectors (codes + ids + coarse centroids)."""
    parts = factory.split(",")
    nlist = 0
    code = dim * 4
    stored_dim = dim
    for part in parts:
        if part.startswith("PCA") and part[3:].isdigit():
            stored_dim = int(part[3:])
        if part.startswith("IVF"):
            nlist = int("".join(ch for ch in part[3:] if ch.isdigit()) or 0)
        if part == "Flat":
            code = stored_dim * 4
        elif part == "SQ8":
            code = stored_dim
        elif part.startswith("PQ"):
            code = int("".join(ch for ch in part[2:].split("x")[0] if ch.isdigit()) or stored_dim)
        elif part.startswith("HNSW"):
            code = stored_dim * 4 + 2 * HNSW_M * 4 * 1.1
    return int(count * (code + _ID_BYTES) + nlist * stored_dim * 4)


def parse_memory(text: str | int | None) -> int | None:
    """``"600M"``, ``"4G"``, ``"1.5GB"`` or a byte count -> bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    raw = str(text).strip().upper().removesuffix("B")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(raw[-1:] if raw else "", 1)
    number = raw[:-1] if scale != 1 else raw
    try:
        value = float(number)
    except ValueError as exc:
        raise InvalidInputError(f"max memory: expected e.g. 600M or 4G, got {text!r}") from exc
    if value <= 0:
        raise InvalidInputError(f"max memory must be > 0, got {text!r}")
    return int(value * scale)


def plan_index(kind: str, count: int, dim: int, metric: Metric, pca_dim: int | None = None,
               max_memory: int | None = None) -> IndexPlan:
    """Turn a kind (or a FAISS factory string) into an :class:`IndexPlan`.

    Args:
        kind: ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq`` or a factory string such as
            ``"OPQ16,IVF1024,PQ16"`` (without ``IDMap``; ids are handled here).
        count: gallery rows the index is built for.
        dim: input dimension.
        metric: the gallery's metric (PCA on cosine re-normalises after the projection).
        pca_dim: PCA output dimension inside the index, or None.
        max_memory: byte budget for the index (``auto`` only); default 4 GiB.

    Raises:
        InvalidInputError: a factory string FAISS does not accept, or ``IDMap`` inside it.
    """
    stored = pca_dim or dim
    budget = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
    if kind == "flat":
        return IndexPlan("flat", _with_pca("Flat", metric, pca_dim), 0)
    if kind == "hnsw":
        return IndexPlan("hnsw", _with_pca(f"HNSW{HNSW_M}", metric, pca_dim), 0)
    if kind in ("ivf", "ivfpq"):
        nlist = nlist_for(count)
        if kind == "ivf":
            inner = f"IVF{nlist},Flat"
        else:
            m = _pq_m(stored, max(stored // PQ_DIMS_PER_CODE, min(stored, 16)))
            inner = f"IVF{nlist},PQ{m}"
        return IndexPlan(kind, _with_pca(inner, metric, pca_dim), _train_size(count, nlist))
    if kind == "auto":
        return _plan_auto(count, dim, metric, pca_dim, budget)
    return _plan_factory(kind, dim, metric, pca_dim)


def _train_size(count: int, nlist: int) -> int:
    return int(min(count, TRAIN_PER_LIST * nlist))


def _plan_auto(count: int, dim: int, metric: Metric, pca_dim: int | None, budget: int) -> IndexPlan:
    stored = pca_dim or dim
    flat = _with_pca("Flat", metric, pca_dim)
    if count <= FLAT_UP_TO and estimate_bytes(flat, count, stored) <= budget:
        return IndexPlan("auto", flat, 0, f"{count} rows <= {FLAT_UP_TO}: exact search",
                         estimate_bytes(flat, count, stored))
    nlist = nlist_for(count)
    candidates = [f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
    for inner in candidates:
        factory = _with_pca(inner, metric, pca_dim)
        size = estimate_bytes(factory, count, stored)
        if size <= budget:
            return IndexPlan("auto", factory, _train_size(count, nlist),
                             f"{count} rows x {stored} dims: {inner} needs ~{size / 1e6:.0f} MB "
                             f"<= budget {budget / 1e6:.0f} MB", size)
    per_vector = max(1, int(budget / max(count, 1)) - _ID_BYTES)
    m = _pq_m(stored, min(per_vector, max(1, stored // 2)))
    inner = f"IVF{nlist},PQ{m}"
    factory = _with_pca(inner, metric, pca_dim)
    size = estimate_bytes(factory, count, stored)
    return IndexPlan("auto", factory, _train_size(count, nlist),
                     f"{count} rows x {stored} dims: full vectors exceed the budget "
                     f"{budget / 1e6:.0f} MB; {inner} needs ~{size / 1e6:.0f} MB", size)


def _plan_factory(factory: str, dim: int, metric: Metric, pca_dim: int | None) -> IndexPlan:
    text = factory.strip()
    if not text or "IDMap" in text:
        raise InvalidInputError(
            f"kind {factory!r}: expected one of {', '.join(KIND_NAMES)} or a FAISS factory string "
            "without IDMap (ids are added by oneshot)")
    text = _with_pca(text, metric, pca_dim)
    try:
        probe = faiss.index_factory(dim, text, metric.faiss_metric)
    except RuntimeError as exc:
        raise InvalidInputError(f"kind {factory!r}: not a FAISS factory string FAISS accepts ({exc})") from exc
    ivf = faiss.try_extract_index_ivf(probe)
    train = 0 if probe.is_trained else (256 * 256 if ivf is None else TRAIN_PER_LIST * ivf.nlist)
    return IndexPlan("factory", text, train)
