"""Fine-tuning a model's last linear layer on cached features: seconds instead of minutes.

For a model whose vector is ``normalize(W @ f)``, with ``f`` (N, F) the features the last linear
layer ``W`` (D, F) takes in (the face ResNet's pooled 256 features, or the input of a
``NormalizedHead``'s projection), the network below ``W`` runs once per image and training only
moves ``W``. That is what makes several validation folds affordable on two CPU cores, and what a
small gallery (10-50 photos of 10-100 people) can move without forgetting the rest.

The loss is the soft nearest-neighbour loss over the whole training set at each step (every
image against every other, cosine times ``scale``): each image's probability mass on images of
its own class, as one-shot search uses the vectors.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oneshot.embedder.model import Embedder, NormalizedHead
from oneshot.errors import InvalidInputError

#: Cosine similarities are multiplied by this before the softmax of the loss.
SCALE = 16.0
#: Rows a step compares at most (every row against every other: memory and time grow with its
#: square); a larger training set is sampled afresh, seeded, at each step.
BATCH_ROWS = 2048


def last_linear(model: Embedder) -> nn.Linear:
    """The layer :func:`fit_last_linear` tunes: the head's projection, else the backbone's ``fc``."""
    if not isinstance(model.head, NormalizedHead):
        raise InvalidInputError(f"last-layer tuning needs a cosine (normalized-head) model, not {model.head_name!r}")
    if isinstance(model.head.project, nn.Linear):
        return model.head.project
    fc = getattr(model.backbone, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    raise InvalidInputError(f"model {model.backbone_name!r} has no last linear layer to tune")


def last_layer_features(model: Embedder, images: np.ndarray, flip: bool = False, batch_size: int = 64) -> np.ndarray:
    """What the last linear layer takes in: float32 (N, C, H, W) preprocessed images -> (N, F).

    ``flip``: of the left-right mirrored images instead (a training view for photos and faces).
    """
    layer = last_linear(model)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0].detach().cpu()))
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
                model(batch.flip(3) if flip else batch)
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, layer.in_features), np.float32)
    return np.ascontiguousarray(torch.cat(captured).numpy(), dtype=np.float32)


def layer_bias(model: Embedder) -> np.ndarray | None:
    """The last linear layer's bias (D,), or None; tuning keeps it as it is."""
    bias = last_linear(model).bias
    return None if bias is None else bias.detach().cpu().numpy().copy()


def vectors_from_features(features: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The model's vectors from last-layer features: (N, F), (D, F), bias (D,) -> float32 (N, D), unit length."""
    projected = np.asarray(features, np.float32) @ np.asarray(weight, np.float32).T
    if bias is not None:
        projected = projected + np.asarray(bias, np.float32)
    norms = np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(projected / norms, dtype=np.float32)


def fit_last_linear(weight: np.ndarray, features: np.ndarray, labels: np.ndarray, steps: Sequence[int],
                    lr: float = 1e-4, scale: float = SCALE, seed: int = 0, bias: np.ndarray | None = None,
                    batch_rows: int = BATCH_ROWS) -> dict[int, tuple[np.ndarray, float]]:
    """Adam on ``weight`` (D, F) from its value, soft nearest-neighbour loss over all rows (at most
    ``batch_rows`` a step, drawn with ``seed``); ``bias`` (D,), if the layer has one, stays fixed.

    Args:
        features: float32 (N, F) training features (views of one image may appear several times).
        labels: (N,) class of each row; rows of a class with a single row only act as negatives.
        steps: the steps to return the weight at (ascending; the run lasts ``max(steps)``).
    Returns:
        step -> (weight (D, F) at that step, the loss of that step).
    """
    steps = sorted(int(s) for s in steps)
    if not steps or steps[0] < 1:
        raise InvalidInputError(f"steps must be positive, got {steps}")
    x_all = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    codes_all = torch.from_numpy(np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64))
    if np.bincount(codes_all.numpy()).max() < 2:
        raise InvalidInputError("last-layer tuning needs a class with 2 or more images")
    rng = np.random.default_rng(seed)
    w = nn.Parameter(torch.from_numpy(np.array(weight, dtype=np.float32)))
    b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))
    optimizer = torch.optim.Adam([w], lr=lr)
    out: dict[int, tuple[np.ndarray, float]] = {}
    for step in range(1, steps[-1] + 1):
        rows = (torch.from_numpy(np.sort(rng.choice(len(x_all), batch_rows, replace=False)))
                if len(x_all) > batch_rows else None)
        x, codes = (x_all, codes_all) if rows is None else (x_all[rows], codes_all[rows])
        same = (codes[:, None] == codes[None, :]).float()
        same.fill_diagonal_(0.0)
        has_positive = same.sum(1) > 0
        vectors = F.normalize(x @ w.T if b is None else x @ w.T + b, dim=1)
        logits = (vectors @ vectors.T * scale).masked_fill(torch.eye(len(x), dtype=torch.bool), -1e9)
        per_row = -(logits.log_softmax(dim=1) * same).sum(1) / same.sum(1).clamp(min=1.0)
        loss = per_row[has_positive].mean() if bool(has_positive.any()) else (w * 0).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in steps:
            out[step] = (w.detach().numpy().copy(), float(loss.item()))
    return out


def with_last_linear(model: Embedder, weight: np.ndarray) -> Embedder:
    """A copy of ``model`` whose last linear layer is ``weight`` (D, F)."""
    tuned = copy.deepcopy(model)
    layer = last_linear(tuned)
    if tuple(weight.shape) != tuple(layer.weight.shape):
        raise InvalidInputError(f"weight {tuple(weight.shape)} does not fit the layer {tuple(layer.weight.shape)}")
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
    return tuned
