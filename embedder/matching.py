"""Matching two images' feature maps, trained with the embedder (issue 19's "local matching").

The pooled vector says *which* strokes an image has; two characters that differ by one small stroke
can share most of it. :class:`MapMatcher` compares the maps themselves: each image's map (the
backbone's second-to-last block, before its pool: 7 x 7 at 28 px) is projected to ``dim`` channels,
unit length at every location, and one image's locations are *reconstructed* from the other's
(ridge regression over the other map's locations, as in Wertheimer et al.'s feature-map
reconstruction networks). A location the other image has no stroke for reconstructs badly; the
distance is the mean squared residual per location, both ways, in [0, 1].

Everything goes through d x d matrices (each map's Gram matrix and its residual operator, one
small solve per map), so a batch of N maps gives all N x N distances in one product of (N, d*d)
matrices, never a loop over pairs.

The reconstruction alone ignores where a location is: a stroke at the top and the same stroke at
the bottom reconstruct each other. With ``position=True`` the projection also sees each location's
coordinates (two channels, x and y in [-1, 1], as in CoordConv), so it can learn how much a
location's place should count.

The score the matcher was trained with, :meth:`MapMatcher.combined_distance`, adds the global
vectors' squared distance and the match distance, each times a scale learned in training; no weight
is tuned afterwards.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.embedder.losses import class_ranks
from oneshot.errors import InvalidInputError


class MapMatcher(nn.Module):
    """``maps (N, C, H, W)`` -> local features ``(N, H*W, dim)`` and their pairwise distances.

    Args:
        channels: the tapped map's channels (C).
        dim: the projected channels (d); the Gram matrices have d*d entries.
        position: also project each location's coordinates (x, y in [-1, 1]), so matching can
            weigh where a location is.
    """

    def __init__(self, channels: int, dim: int = 64, position: bool = False):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(f"match dim must be a positive integer, got {dim!r}")
        if not isinstance(position, bool):
            raise InvalidInputError(f"match position must be true or false, got {position!r}")
        self.dim = dim
        self.position = position
        self.project = nn.Conv2d(channels + 2 * position, dim, 1, bias=False)
        self.log_ridge = nn.Parameter(torch.tensor(0.0))  # lambda = 1 at the start
        self.log_scale_global = nn.Parameter(torch.tensor(math.log(10.0)))
        self.log_scale_match = nn.Parameter(torch.tensor(math.log(10.0)))

    def local_features(self, maps: torch.Tensor) -> torch.Tensor:
        """maps (N, C, H, W) -> float32 (N, H*W, dim), unit length at every location."""
        maps = maps.float()
        if self.position:
            maps = torch.cat([maps, coordinates(maps)], dim=1)
        projected = self.project(maps)
        return F.normalize(projected.flatten(2).transpose(1, 2), dim=2)

    def residual_operators(self, local: torch.Tensor) -> torch.Tensor:
        """local (N, L, d) -> each map's residual operator P P - 2 P, flattened (N, d*d).

        P = S^T (S S^T + lambda I)^-1 S for a map's locations S (L, d) reconstructs a row q as q P, and
        ||Q - Q P||^2 = tr(G) + <G, P P - 2 P> for the query's Gram matrix G = Q^T Q. The same P is
        (S^T S + lambda I)^-1 S^T S, so the solve is L x L or d x d, whichever is smaller. Both
        systems are symmetric positive definite: Cholesky solves. (Also, torch 2.13's batched LU solve
        of 256 x 256 systems on CPU fails after an explicit ``torch.set_num_threads(n)``, n >= 2, in the
        process, as the encode jobs' thread guard does: "Pivots given to lu_solve must all be greater
        or equal to 1"; 49 x 49 ones did not.)
        """
        n, locations, dim = local.shape
        ridge = self.log_ridge.exp()
        if locations <= dim:
            factor = torch.linalg.cholesky(local @ local.transpose(1, 2) + ridge * _eye(locations, local))
            operator = local.transpose(1, 2) @ torch.cholesky_solve(local, factor)  # (N, d, d)
        else:
            gram = local.transpose(1, 2) @ local
            operator = torch.cholesky_solve(gram, torch.linalg.cholesky(gram + ridge * _eye(dim, local)))
            operator = (operator + operator.transpose(1, 2)) / 2  # symmetric, as the other form is
        return (operator @ operator - 2 * operator).reshape(n, -1)

    def summaries(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """local (N, L, d) -> what :meth:`distances_between` needs of each map: its Gram matrix Q^T Q
        and its residual operator, each flattened (N, d*d). Computed once per map, so a map kept
        (a gallery row) is never solved again."""
        return (local.transpose(1, 2) @ local).flatten(1), self.residual_operators(local)

    @staticmethod
    def distances_between(queries: tuple[torch.Tensor, torch.Tensor], references: tuple[torch.Tensor, torch.Tensor],
                          locations: int) -> torch.Tensor:
        """:meth:`summaries` of Q and R maps of ``locations`` locations each -> (Q, R) match distances."""
        (gram_q, operator_q), (gram_r, operator_r) = queries, references
        return _mean_residual(gram_q @ operator_r.T + operator_q @ gram_r.T, locations)

    def distances(self, queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """local (Q, L, d) and (R, L, d) -> (Q, R) match distances in [0, 1]: the mean squared
        residual per location of reconstructing each map from the other, averaged over both ways.
        Passing the same tensor twice (all pairs of a batch) computes one way and transposes it."""
        if queries.shape[1:] != references.shape[1:]:
            raise InvalidInputError(f"maps of different shapes: {tuple(queries.shape[1:])} and "
                                    f"{tuple(references.shape[1:])}")
        locations = queries.shape[1]
        if references is queries:
            gram = (queries.transpose(1, 2) @ queries).flatten(1)  # (Q, d*d); its trace is L for unit locations
            one_way = gram @ self.residual_operators(queries).T  # [i, j]: reconstructing i from j, less L
            return _mean_residual(one_way + one_way.T, locations)
        return self.distances_between(self.summaries(queries), self.summaries(references), locations)

    def combined_distance(self, global_distance: torch.Tensor, match_distance: torch.Tensor) -> torch.Tensor:
        """The trained score, lower is closer: ``s_g * squared distance of the unit global vectors +
        s_m * match distance`` (both (Q, R); the scales are learned in training)."""
        return self.log_scale_global.exp() * global_distance + self.log_scale_match.exp() * match_distance

    @property
    def match_weight(self) -> float:
        """The match distance's weight on the cosine's scale, ``s_m / (2 s_g)`` (learned in training)."""
        return float((self.log_scale_match - self.log_scale_global).detach().exp()) / 2

    def similarity(self, cosine: torch.Tensor, match_distance: torch.Tensor) -> torch.Tensor:
        """The trained score on the cosine's scale, higher is closer: ``cosine - match_weight * match
        distance``. For unit vectors the squared distance is 2 - 2 cosine, so this is
        ``1 - combined_distance / (2 s_g)``: the same order as :meth:`combined_distance`."""
        return cosine - self.match_weight * match_distance


def _mean_residual(both: torch.Tensor, locations: int) -> torch.Tensor:
    """<G_q, R_r> + <R_q, G_r> (both ways, each less L) -> the mean squared residual per location, both ways."""
    return ((2 * locations + both) / (2 * locations)).clamp_min(0)


def _eye(size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(size, dtype=like.dtype, device=like.device)


def coordinates(maps: torch.Tensor) -> torch.Tensor:
    """maps (N, C, H, W) -> (N, 2, H, W): each location's x and y, from -1 (left, top) to 1."""
    n, _, height, width = maps.shape
    ys = torch.linspace(-1, 1, height, dtype=maps.dtype, device=maps.device)
    xs = torch.linspace(-1, 1, width, dtype=maps.dtype, device=maps.device)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, then y
    return grid.expand(n, -1, -1, -1)


def match_loss(matcher: MapMatcher, embeddings: torch.Tensor, local: torch.Tensor, labels: torch.Tensor,
               k_shot: int, every_support: bool) -> torch.Tensor:
    """Prototypical cross-entropy over the combined distance, on the episodes of
    :class:`~oneshot.embedder.losses.PrototypicalLoss` (the same supports, every one in turn with
    ``every_support``): a query's distance to a class is its mean distance to the class's supports.

    embeddings (B, D) unit vectors, local (B, L, d), labels (B,).
    """
    inverse, rank, counts = class_ranks(labels, k_shot)
    distance = matcher.combined_distance(torch.cdist(embeddings, embeddings).pow(2), matcher.distances(local, local))
    losses = []
    for shift in range(int(counts.max())) if every_support else range(1):
        support = (rank - shift) % counts[inverse] < k_shot
        to_class = F.one_hot(inverse[support], len(counts)).to(distance.dtype) / k_shot  # (S, C)
        logits = -(distance[~support][:, support] @ to_class)
        losses.append(F.cross_entropy(logits, inverse[~support]))
    return torch.stack(losses).mean()
