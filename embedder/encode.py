"""Batch encoding: images -> float32 (N, D) vectors, under ``torch.inference_mode``."""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from oneshot.embedder.model import Embedder


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress_bar(show: bool | None, total: int, desc: str):
    """A tqdm bar; ``show=None`` shows it only for long work on a terminal."""
    if show is None:
        show = total > 2000 and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not show, leave=False)


def tta_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """Test-time views of (B, C, H, W): the image and four one-pixel shifts."""
    shifted = [torch.roll(batch, shifts=s, dims=d) for s in (-1, 1) for d in (2, 3)]
    return [batch] + shifted


@torch.inference_mode()
def embed_tensor(model: Embedder, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """One preprocessed batch (B, C, H, W) on the model's device -> (B, D)."""
    if not tta:
        return model(batch)
    mean = torch.stack([model(view) for view in tta_views(batch)]).mean(0)
    return F.normalize(mean, dim=1) if model.metric == "cosine" else mean


def encode(
    model: Embedder,
    images: Sequence[np.ndarray] | np.ndarray,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    show_progress: bool | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Encode images in batches.

    Args:
        model: the embedder (put in eval mode here).
        images: raw images (a list of uint8 (H, W) or (H, W, 3) arrays, preprocessed with the
            model's recipe), or an already preprocessed float32 array (N, 1, S, S). A single 2-D
            image gives a single vector.
        tta: average the embeddings of shifted views (see ``tta_views``).
    Returns:
        float32 (N, D), C-contiguous; (D,) for a single image.
    """
    single = isinstance(images, np.ndarray) and images.dtype == np.uint8 and (
        images.ndim == 2 or (images.ndim == 3 and images.shape[-1] == 3)
    )
    if single:
        return encode(model, [images], batch_size, device, show_progress, tta)[0]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    chunks = []
    with progress_bar(show_progress, len(images), "encode") as bar:
        for start in range(0, len(images), batch_size):
            part = images[start : start + batch_size]
            if not (isinstance(part, np.ndarray) and part.dtype == np.float32 and part.ndim == 4):
                part = model.recipe.batch(part)
            batch = torch.from_numpy(np.ascontiguousarray(part)).to(device)
            chunks.append(embed_tensor(model, batch, tta).float().cpu().numpy())
            bar.update(len(part))
    if not chunks:
        return np.zeros((0, model.dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


@torch.inference_mode()
def encode_with_local(model: Embedder, images: Sequence[np.ndarray], batch_size: int = 256,
                      device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw images -> (vectors float32 (N, D), the map matcher's local features float32 (N, L, d)),
    in batches; for models trained with a map matcher (``match_dim``)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    vectors, local = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(model.recipe.batch(images[start:start + batch_size]))).to(device)
        found = model.forward_with_local(batch)
        vectors.append(found[0].float().cpu().numpy())
        local.append(found[1].cpu().numpy())
    return np.ascontiguousarray(np.concatenate(vectors)), np.ascontiguousarray(np.concatenate(local))
