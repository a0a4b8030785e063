"""Optional FAISS GPU use: k-means training of IVF indexes and search on a GPU clone.

The CPU index is always the one built, saved and loaded; a GPU only (a) runs the coarse
quantizer's k-means during training and (b) answers searches from a clone. Everything here is a
no-op with a CPU-only FAISS build or without a visible device, so the same code runs everywhere.

The ``gpu`` extra installs Meta's ``faiss-gpu`` (1.15.1 and later carry sm_90 code, for Hopper).
A FAISS GPU build that has no kernels for the GPU at hand (the older ``faiss-gpu-cu12`` wheels
hold sm_70 and sm_80 code only, so an H100 fails: faiss-wheels issue 151) aborts the whole
process at its first GPU call, which no ``try`` catches. So the first use runs one tiny GPU search in a
subprocess, once per process, and falls back to the CPU with a warning when it fails.
"""
from __future__ import annotations

import functools
import logging
import subprocess
import sys

import faiss
import numpy as np

logger = logging.getLogger(__name__)

#: the PyPI distributions that install the one ``faiss`` module
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")
SWAP = ("pip uninstall -y faiss-cpu && pip install --force-reinstall --no-deps 'faiss-gpu>=1.15.1'")

_PROBE = ("import faiss, numpy as np\n"
          "index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(8))\n"
          "index.add(np.ones((2, 8), 'float32'))\n"
          "index.search(np.ones((1, 8), 'float32'), 1)\n")


def installed_faiss() -> list[str]:
    """The FAISS distributions installed here, e.g. ``["faiss-cpu"]``; they all write one ``faiss`` module."""
    from importlib import metadata

    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


@functools.lru_cache(maxsize=1)
def check_faiss_install() -> str | None:
    """A warning (logged once) when several FAISS builds share the ``faiss`` module, else None.

    ``pip install 'oneshot[gpu]'`` adds ``faiss-gpu`` beside the required ``faiss-cpu``; whichever
    was installed last owns the module's files, so the README's swap (:data:`SWAP`) removes
    ``faiss-cpu`` and reinstalls ``faiss-gpu`` over the files that removal took.
    """
    found = installed_faiss()
    if len(found) < 2:
        return None
    message = (f"{' and '.join(found)} are both installed and share one faiss module; to use the GPU build: {SWAP}")
    logger.warning(message)
    return message


def gpu_count() -> int:
    """Number of GPUs FAISS can use: 0 with a CPU-only FAISS build, no visible device, or a GPU
    build that cannot run on the device (see the module docstring)."""
    check_faiss_install()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    visible = int(faiss.get_num_gpus())
    return visible if visible and _gpu_build_runs() else 0


@functools.lru_cache(maxsize=1)
def _gpu_build_runs() -> bool:
    """One small GPU search in a subprocess: does this FAISS build run on this GPU?"""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("could not check FAISS's GPU build (%s); indexes are searched on the CPU", error)
        return False
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        logger.warning("FAISS's GPU build cannot run on this GPU (%s); indexes are searched on the CPU", reason)
        return False
    return True


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
