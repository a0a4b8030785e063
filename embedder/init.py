"""Start training from another model's weights (fine-tuning), adapting what can be adapted.

The architecture (backbone, head, dimension) must match; the recipe may differ in size (the conv
backbones end in global average pooling, so any input side works) and in channels: a grey model's
first conv is replicated over three colour channels (divided by 3, so a grey image gives the same
features), a colour model's is summed over channels for grey input. Anything else is refused with
the reason.

:func:`recalibrate_batchnorm` then re-estimates the BatchNorm statistics on the new gallery's own
training images (AdaBN, Li et al. 2016): no label is read and no weight changes, but the layers
normalise the new images' pixel statistics instead of the old ones'.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from oneshot.embedder.model import Embedder
from oneshot.errors import ModelMismatchError

log = logging.getLogger(__name__)


def _adapt(name: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if source.shape == target.shape:
        return source
    if source.ndim == 4 and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]:
        if source.shape[1] == 1 and target.shape[1] == 3:
            log.info("init: %s replicated from 1 to 3 input channels", name)
            return source.repeat(1, 3, 1, 1) / 3
        if source.shape[1] == 3 and target.shape[1] == 1:
            log.info("init: %s summed from 3 to 1 input channel", name)
            return source.sum(dim=1, keepdim=True)
    raise ModelMismatchError(f"cannot start from this model: {name} has shape {tuple(source.shape)} there but "
                             f"{tuple(target.shape)} here (a different backbone, dimension or input size); "
                             "train from scratch or match --backbone/--dim/--size to the model")


def initialise_from(model: Embedder, source: Embedder) -> list[str]:
    """Copy ``source``'s weights into ``model`` in place; returns the names that were adapted."""
    if (source.backbone_name, source.head_name, source.dim) != (model.backbone_name, model.head_name, model.dim):
        raise ModelMismatchError(
            f"cannot start from a {source.backbone_name}/{source.head_name}/{source.dim}-d model when training a "
            f"{model.backbone_name}/{model.head_name}/{model.dim}-d one; pass matching --backbone/--dim or train from scratch")
    target = model.state_dict()
    adapted, state = [], {}
    for name, value in source.state_dict().items():
        if name not in target:
            raise ModelMismatchError(f"cannot start from this model: it has {name}, which this architecture lacks")
        state[name] = _adapt(name, value, target[name])
        if state[name] is not value:
            adapted.append(name)
    missing = sorted(set(target) - set(state))
    if missing:
        raise ModelMismatchError(f"cannot start from this model: it lacks {missing[:3]}")
    model.load_state_dict(state)
    return adapted


#: Images a BatchNorm recalibration reads (a seeded sample when the gallery holds more).
RECALIBRATION_IMAGES = 4096


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray, seed: int = 0, batch_size: int = 256) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance on ``images`` (in place).

    Args:
        model: the network; left in eval mode.
        images: float32 (N, C, H, W), preprocessed, not augmented; at most
            :data:`RECALIBRATION_IMAGES` of them, drawn with ``seed``, are read.
    Returns:
        The number of images the statistics were measured on (0 when the model has no BatchNorm).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(images) < 2:
        return 0
    rows = np.arange(len(images))
    if len(rows) > RECALIBRATION_IMAGES:
        rows = np.sort(np.random.default_rng(seed).choice(rows, RECALIBRATION_IMAGES, replace=False))
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over all batches
    device = next(model.parameters()).device
    model.train()
    try:
        for chunk in np.array_split(rows, -(-len(rows) // batch_size)):  # near-equal batches, none of one image
            model(torch.from_numpy(images[chunk]).to(device))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    return len(rows)
