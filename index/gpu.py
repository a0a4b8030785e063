"""Optional GPU search: the CPU index is built and saved; a GPU clone only runs searches."""
from __future__ import annotations

import logging

import faiss

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    """Number of GPUs FAISS can use: 0 with a CPU-only FAISS build or no visible device."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Clone a CPU index onto all GPUs when there are any; otherwise return it unchanged.

    Args:
        index: a CPU FAISS index (it is not modified).

    Returns:
        A GPU (possibly sharded/replicated) clone, or ``index`` itself when no GPU is available.
    """
    n = gpu_count()
    if n == 0:
        return index
    logger.info("cloning %s to %d GPU(s)", type(index).__name__, n)
    return faiss.index_cpu_to_all_gpus(index)
