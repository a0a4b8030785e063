"""Fast inference copies of an embedder: BatchNorm folded into convolutions, channels_last, and a
frozen TorchScript graph (or ``torch.compile``) where that pays off, with eager fallback.

``InferenceModel(model)`` keeps the original model untouched and encodes preprocessed batches
(B, 1, S, S) -> (B, D) with the same vectors as the eager model (cosine >= 0.9999; tested).
The code is device-neutral: it runs on the model's device (CUDA when the caller moved it there).

``precision="bfloat16"`` runs the eager model under ``torch.autocast`` in bfloat16 and returns
float32 vectors (unit length again for cosine models), at cosine >= 0.9999 of the float32 ones.
On a 2-core CPU with native bfloat16 (AVX512-BF16) the shipped default's forward pass ran 1.2-1.4x
the images a second of the frozen float32 graph (9,400-10,700 against 7,600-8,000 img/s, mean
over 3 s or 40 calls; single calls vary from 34 to 60 ms a batch of 512). On CPUs without native
bfloat16 it is emulated and slower; a warning says so.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.embedder.encode import tta_views
from oneshot.embedder.hardware import native_bfloat16
from oneshot.embedder.model import Embedder
from oneshot.embedder.precision import check_precision

logger = logging.getLogger(__name__)

MODES = ("auto", "eager", "script", "compile")


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    Returns:
        A new ``nn.Conv2d`` with bias, on the same device and dtype as ``conv``.
    """
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``Conv2d`` directly followed by ``BatchNorm2d`` inside ``nn.Sequential``s, in place.

    The folded BatchNorm becomes ``nn.Identity``. Returns ``module``.
    """
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module[i] = fold_conv_bn(conv, bn)
                module[i + 1] = nn.Identity()
    return module


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_batch_size(model: Embedder, device: torch.device) -> int:
    """A batch size for the machine: large enough to amortise per-call cost, small enough for caches.

    CUDA: 2048 images up to 64x64 input (512 beyond); CPU: 256 per core up to 512 for small
    inputs (<= 32x32; larger batches only add activation memory, ~200 MB per 1024 28x28 images
    for conv4), 64 per core up to 256 for larger ones, and 16 per core up to 64 for inputs of
    96x96 and more (the face ResNet at 150x150: 32 images ran 1.5x faster than 128 on 2 cores,
    their activations staying in cache). A rectangular input counts as the square of the same area.
    """
    height, width = model.recipe.shape
    area = height * width
    if device.type == "cuda":
        return 2048 if area <= 64 * 64 else 512
    cores = _cpu_count()
    if area >= 96 * 96:
        return max(16, min(64, 16 * cores))
    return min(512, 256 * cores) if area <= 32 * 32 else max(32, min(256, 64 * cores))


class InferenceModel:
    """An optimised, read-only copy of an embedder for encoding preprocessed batches.

    Args:
        model: the trained embedder (not modified).
        mode: ``"auto"`` (TorchScript frozen graph, else eager), ``"script"``, ``"compile"``
            (``torch.compile``; falls back to eager when it cannot compile), or ``"eager"`` (only
            BatchNorm folding and channels_last).
        device: where to run; default the model's device.

    Attributes:
        mode: the mode actually in use after fallbacks.
        requested_mode: the mode asked for (``"auto"`` resolves to ``"script"`` or ``"eager"``).
        precision: ``"float32"`` or ``"bfloat16"`` (autocast; vectors come back float32).
        batch_size: the batch size chosen for this machine (:func:`choose_batch_size`).
        folded: the eager copy (BatchNorm folded, channels_last on the CPU) behind the graph, for
            callers that need more than ``forward`` (a map matcher's maps): feed it :meth:`layout`'s
            batches inside :meth:`flushing_denormals`.
    """

    def __init__(self, model: Embedder, mode: str = "auto", device: str | torch.device | None = None,
                 precision: str = "float32"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        precision = check_precision(precision)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.recipe = model.recipe
        self.metric = model.metric
        self.dim = model.dim
        self.fingerprint = getattr(model, "fingerprint", None)
        self.batch_size = choose_batch_size(model, self.device)
        net = fold_batchnorm(copy.deepcopy(model).eval()).to(self.device)
        self._channels_last = self.device.type == "cpu"
        if self._channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.folded = net
        self.requested_mode = mode
        self.precision = precision
        if precision == "bfloat16":  # eager under autocast: a traced autocast graph ran slower (best call 10,300 vs 14,400 img/s)
            if native_bfloat16(self.device) is False:
                logger.warning("bfloat16 on %s without native bfloat16 support is emulated and slower than float32",
                               self.device)
            self._net, self.mode = net, "eager"
        else:
            self._net, self.mode = self._optimise(net, mode)

    def _example(self) -> torch.Tensor:
        return self.layout(torch.rand(8, self.recipe.channels, *self.recipe.shape, device=self.device))

    def layout(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch (B, C, H, W) on this model's device, in the memory layout its nets run fastest in."""
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if self._channels_last else batch

    @contextlib.contextmanager
    def flushing_denormals(self):
        """On the CPU, denormal floats flushed to zero inside the block (activations of mostly blank
        images underflow; denormal arithmetic made the forward pass ~2.5x slower on MNIST)."""
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            yield
        finally:
            if flush:
                torch.set_flush_denormal(False)

    def _optimise(self, net: nn.Module, mode: str):
        started = time.perf_counter()
        if mode in ("auto", "script"):
            try:
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input-shape check
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript still works in 2.13
                    traced = torch.jit.trace(net, self._example(), check_trace=False)
                    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                    frozen(self._example())  # warm the profiling executor
                logger.info("TorchScript frozen graph in %.2f s", time.perf_counter() - started)
                return frozen, "script"
            except Exception as error:  # TorchScript cannot handle every module; eager still works
                logger.warning("TorchScript freezing failed (%s); using eager inference", error)
                return net, "eager"
        if mode == "compile":
            try:
                compiled = torch.compile(net, dynamic=True)
                with torch.inference_mode():
                    compiled(self._example())
                logger.info("torch.compile in %.2f s", time.perf_counter() - started)
                return compiled, "compile"
            except Exception as error:  # no compiler toolchain, unsupported platform, ...
                logger.warning("torch.compile failed (%s); using eager inference", error)
        return net, "eager"

    @torch.inference_mode()
    def embed_tensor(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Preprocessed (B, 1, S, S) on any device -> (B, D) float32 on this model's device
        (denormals flushed on the CPU: :meth:`flushing_denormals`)."""
        with self.flushing_denormals():
            batch = self.layout(batch)
            views = tta_views(batch) if tta else [batch]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
                vectors = [self._net(self.layout(view)).float() for view in views]
            out = vectors[0] if len(vectors) == 1 else torch.stack(vectors).mean(0)
            renormalise = tta or self.precision == "bfloat16"
            return F.normalize(out, dim=1) if renormalise and self.metric == "cosine" else out

    def __call__(self, batch, tta: bool = False):
        """float32 numpy (B, 1, S, S) -> float32 numpy (B, D)."""
        import numpy as np

        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return self.embed_tensor(tensor, tta).cpu().numpy()
