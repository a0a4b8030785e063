"""Optional FAISS GPU use: k-means training of IVF indexes and search on a GPU clone.

The CPU index is always the one built, saved and loaded; a GPU only (a) runs the coarse
quantizer's k-means during training and (b) answers searches from a clone. Everything here is a
no-op with a CPU-only FAISS build or without a visible device, so the same code runs everywhere.
"""
from __future__ import annotations

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    """Number of GPUs FAISS can use: 0 with a CPU-only FAISS build or no visible device."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Clone a CPU index onto all GPUs when there are any; otherwise return it unchanged.

    Index types FAISS cannot put on a GPU (HNSW in most builds) stay on the CPU, with a log line.

    Args:
        index: a CPU FAISS index (it is not modified).

    Returns:
        A GPU (possibly sharded/replicated) clone, or ``index`` itself.
    """
    n = gpu_count()
    if n == 0:
        return index
    logger.info("cloning %s to %d GPU(s)", type(index).__name__, n)
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:
        logger.warning("this index cannot run on the GPU (%s); searching on the CPU", exc)
        return index


def set_gpu_parameter(index: faiss.Index, name: str, value: int) -> None:
    """Set ``nprobe``/``efSearch`` on a GPU clone (CPU indexes go through ``ParameterSpace``)."""
    space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
    space.set_index_parameter(index, name, float(value))


def train(index: faiss.Index, sample: np.ndarray, use_gpu: bool | None = None) -> None:
    """Train ``index`` on ``sample``; IVF k-means runs on the GPUs when there are any.

    Args:
        index: an untrained CPU index (trained in place).
        sample: (n, D) float32 training vectors.
        use_gpu: None = when available, False = never.
    """
    ivf = faiss.try_extract_index_ivf(index)
    on_gpu = ivf is not None and use_gpu is not False and gpu_count() > 0
    if on_gpu:
        logger.info("training the IVF quantizer on %d GPU(s)", gpu_count())
        flat = faiss.IndexFlatIP(ivf.d) if ivf.metric_type == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(ivf.d)
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)
    try:
        index.train(sample)
    finally:
        if on_gpu:
            ivf.clustering_index = None
