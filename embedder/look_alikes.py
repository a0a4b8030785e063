"""Look-alike classes for training batches: each class's nearest classes under the weights being trained.

With the training option ``look_alike_classes = h``, one block of ``h`` classes in each batch is a
class drawn at random and its ``h - 1`` nearest classes (hard-class mining), by the cosine between
one image of each class under the current weights. The table is rebuilt every
``look_alike_every`` steps, kept in the checkpoint, and so a resumed run draws the same batches.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch

from oneshot.embedder.dataset import LabelledImages
from oneshot.errors import InvalidInputError


def representative_rows(class_rows: list[np.ndarray]) -> np.ndarray:
    """The first row of each class -> int64 (C,): the image that stands for it."""
    return np.array([rows[0] for rows in class_rows], dtype=np.int64)


def nearest_classes(embed, train_set: LabelledImages, representatives: np.ndarray, k: int,
                    batch_size: int = 1024) -> np.ndarray:
    """Each class's ``k`` nearest other classes -> int64 (C, k), nearest first.

    Args:
        embed: images (B, C, H, W) -> vectors (B, D), called without gradients.
        representatives: (C,) one virtual row of ``train_set`` per class.
    """
    if not 1 <= k < len(representatives):
        raise InvalidInputError(f"need 1 <= k < {len(representatives)} classes, got k={k}")
    with torch.no_grad():
        vectors = np.concatenate([embed(train_set.fetch(representatives[start:start + batch_size])).float().cpu().numpy()
                                  for start in range(0, len(representatives), batch_size)])
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    _, found = faiss.knn(vectors, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    # drop the class itself (not always first when two images coincide), else the (k+1)-th
    keep = found != np.arange(len(found))[:, None]
    keep &= np.cumsum(keep, axis=1) <= k
    return found[keep].reshape(len(found), k).astype(np.int64)
