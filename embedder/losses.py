"""Metric-learning objectives over a batch of embeddings (B, D) with integer labels (B,).

The base class owns ``forward``: it checks shapes, moves labels to the embeddings' device and
calls ``compute_loss``; subclasses write only that. Pair objectives read the batch as pairs: row
``i`` and row ``B/2 + i`` form pair ``i`` (the layout :class:`embedder.samplers.PairSampler` yields).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.errors import InvalidInputError


class EmbeddingLoss(nn.Module):
    """Base class: ``loss(embeddings (B, D), labels (B,)) -> scalar``."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise InvalidInputError(f"expected embeddings (B, D), got shape {tuple(embeddings.shape)}")
        labels = torch.as_tensor(labels, device=embeddings.device)
        if labels.shape != embeddings.shape[:1]:
            raise InvalidInputError(f"expected labels ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        return self.compute_loss(embeddings, labels)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _split_pairs(embeddings: torch.Tensor, labels: torch.Tensor):
    if embeddings.shape[0] % 2:
        raise InvalidInputError(f"pair objectives need an even batch (pairs i, B/2+i), got {embeddings.shape[0]}")
    half = embeddings.shape[0] // 2
    return embeddings[:half], embeddings[half:], (labels[:half] == labels[half:]).float()


class SiameseBCELoss(EmbeddingLoss):
    """Koch et al.: binary cross-entropy on the twin score of each pair.

    Args:
        pair_logit: ``(a (P, D), b (P, D)) -> (P,)`` logits of "same"; the model's
            ``SiameseHead.pair_logit``.
    """

    def __init__(self, pair_logit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.pair_logit = pair_logit

    def compute_loss(self, embeddings, labels):
        a, b, same = _split_pairs(embeddings, labels)
        return F.binary_cross_entropy_with_logits(self.pair_logit(a, b), same)


class ContrastiveLoss(EmbeddingLoss):
    """Hadsell et al.: ``y d^2 + (1 - y) max(margin - d, 0)^2`` with euclidean ``d``, on pairs."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def compute_loss(self, embeddings, labels):
        a, b, same = _split_pairs(embeddings, labels)
        distance = (a - b).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
        loss = same * distance.pow(2) + (1 - same) * F.relu(self.margin - distance).pow(2)
        return loss.mean()


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix (B, B), with a safe gradient at zero."""
    squared = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1)
    return squared.clamp_min(1e-12).sqrt()


class TripletLoss(EmbeddingLoss):
    """``max(d(a, p) - d(a, n) + margin, 0)`` with triplets mined inside the batch.

    Args:
        margin: the margin.
        mining: ``"all"`` (mean over triplets that still violate the margin), ``"hard"`` (per
            anchor, farthest positive and nearest negative) or ``"semihard"`` (per anchor-positive
            pair, the nearest negative farther than the positive; else the farthest negative).
    """

    MINING = ("all", "hard", "semihard")

    def __init__(self, margin: float = 0.2, mining: str = "hard"):
        super().__init__()
        if mining not in self.MINING:
            raise InvalidInputError(f"unknown mining {mining!r}; known: {', '.join(self.MINING)}")
        self.margin = margin
        self.mining = mining

    def compute_loss(self, embeddings, labels):
        distance = pairwise_distances(embeddings)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive, negative = same & ~eye, ~same
        if self.mining == "hard":
            hardest_positive = distance.masked_fill(~positive, 0).amax(dim=1)
            hardest_negative = distance.masked_fill(~negative, math.inf).amin(dim=1)
            valid = positive.any(1) & negative.any(1)
            return F.relu(hardest_positive - hardest_negative + self.margin)[valid].mean()
        # (anchor, positive, negative) cube of margins
        d_ap = distance.unsqueeze(2)
        d_an = distance.unsqueeze(1)
        mask = positive.unsqueeze(2) & negative.unsqueeze(1)
        if self.mining == "all":
            losses = F.relu(d_ap - d_an + self.margin)[mask]
            active = losses > 1e-8
            return losses[active].mean() if active.any() else losses.sum() * 0
        outside = mask & (d_an > d_ap)
        nearest_outside = d_an.expand_as(mask).masked_fill(~outside, math.inf).amin(dim=2)
        farthest = d_an.expand_as(mask).masked_fill(~mask, -math.inf).amax(dim=2)
        chosen = torch.where(torch.isfinite(nearest_outside), nearest_outside, farthest)
        losses = F.relu(distance - chosen + self.margin)[positive & negative.any(1, keepdim=True)]
        return losses.mean() if losses.numel() else distance.sum() * 0


def class_ranks(labels: torch.Tensor, k_shot: int):
    """An episode batch's layout: each row's class index (B,), its rank within its class in batch
    order (B,), rows per class (C,). Every class needs more than ``k_shot`` rows."""
    inverse = torch.unique(labels, sorted=True, return_inverse=True)[1]
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse)
    if counts.min() <= k_shot:
        raise InvalidInputError(f"every class needs more than k_shot={k_shot} rows, got {counts.min().item()}")
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - starts[inverse[order]]
    return inverse, rank, counts


class PrototypicalLoss(EmbeddingLoss):
    """Snell et al.: classes' first ``k_shot`` rows are the support, the rest the queries; softmax
    over ``-scale * squared distance`` to each class prototype. ``scale`` is learned.

    With ``every_support`` each of a class's rows takes the support's place in turn (support =
    ``k_shot`` consecutive rows from row ``s``, cyclically, for every ``s``) and the loss is the mean
    over those episodes: every image is a prototype and a query in each batch, for the same
    forward pass (the net's cost; the distances are cheap).
    """

    def __init__(self, k_shot: int = 1, scale: float = 10.0, every_support: bool = False):
        super().__init__()
        if k_shot < 1:
            raise InvalidInputError(f"k_shot must be >= 1, got {k_shot}")
        self.k_shot, self.every_support = k_shot, bool(every_support)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def compute_loss(self, embeddings, labels):
        scale = self.log_scale.exp()
        layout = self._class_ranks(labels)
        shifts = range(int(layout[2].max())) if self.every_support else range(1)
        return torch.stack([F.cross_entropy(*self._logits(embeddings, layout, scale, shift)) for shift in shifts]).mean()

    def episode_logits(self, embeddings: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, shift: int = 0):
        """Queries' logits over the class prototypes (Q, classes) and their class index (Q,).

        ``shift``: the support is each class's rows ``shift .. shift + k_shot - 1`` (cyclically, in
        batch order) instead of its first ``k_shot``.
        """
        return self._logits(embeddings, self._class_ranks(labels), scale, shift)

    def _class_ranks(self, labels: torch.Tensor):
        return class_ranks(labels, self.k_shot)

    def _logits(self, embeddings: torch.Tensor, layout, scale: torch.Tensor, shift: int):
        inverse, rank, counts = layout
        support = (rank - shift) % counts[inverse] < self.k_shot
        prototypes = torch.zeros(len(counts), embeddings.shape[1], device=embeddings.device, dtype=embeddings.dtype)
        prototypes.index_add_(0, inverse[support], embeddings[support])
        prototypes = prototypes / self.k_shot
        queries, targets = embeddings[~support], inverse[~support]
        return -scale * torch.cdist(queries, prototypes).pow(2), targets


class NormalizedSoftmaxLoss(EmbeddingLoss):
    """Cosine softmax over learned class proxies (Zhai and Wu's NormSoftmax) with an additive margin.

    Needs the number of training classes; every class gets gradient from every batch.
    """

    def __init__(self, num_classes: int, dim: int, scale: float = 16.0, margin: float = 0.1):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def compute_loss(self, embeddings, labels):
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T
        cosine = cosine - self.margin * F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return F.cross_entropy(self.scale * cosine, labels)


class WithProxies(EmbeddingLoss):
    """An episodic loss plus ``weight`` x a cosine softmax over one learned proxy per training class.

    The episodes compare a batch's images with each other; the proxies push every image away from
    every training class, not only the batch's own. ``episodic`` stays reachable (distillation reads
    its episodes).
    """

    def __init__(self, episodic: PrototypicalLoss, proxies: NormalizedSoftmaxLoss, weight: float):
        super().__init__()
        self.episodic, self.proxies, self.weight = episodic, proxies, float(weight)

    def compute_loss(self, embeddings, labels):
        return self.episodic(embeddings, labels) + self.weight * self.proxies(embeddings, labels)
