"""Seeded batch samplers for training; they read labels (and groups) only.

Every sampler is a pure function of ``(seed, step)``: ``sampler.batch(step)`` returns the same
row indices for the same step, so training resumes exactly from any checkpoint.
"""
from __future__ import annotations

import logging

import numpy as np

from oneshot.errors import InvalidInputError

logger = logging.getLogger(__name__)


class _LabelIndex:
    def __init__(self, labels, groups=None, min_per_class: int = 1):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise InvalidInputError(f"expected non-empty labels (N,), got shape {labels.shape}")
        groups = np.zeros(len(labels), dtype=np.int64) if groups is None else np.asarray(groups)
        if groups.shape != labels.shape:
            raise InvalidInputError(f"groups shape {groups.shape} does not match labels {labels.shape}")
        classes, inverse = np.unique(labels, return_inverse=True)
        rows = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        keep = [c for c in range(len(classes)) if len(rows[c]) >= min_per_class]
        if not keep:
            raise InvalidInputError(f"no class has the {min_per_class} items a batch needs")
        self.rows = [rows[c] for c in keep]
        self.class_group = np.array([groups[rows[c][0]] for c in keep])
        self.by_group = {g: np.flatnonzero(self.class_group == g) for g in np.unique(self.class_group)}

    def __len__(self) -> int:
        return len(self.rows)


def _rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step)])


class PKSampler:
    """P classes x K items each, class-major: rows ``[c0 x K, c1 x K, ...]``."""

    def __init__(self, labels, p: int, k: int, seed: int = 0):
        if p < 2 or k < 1:
            raise InvalidInputError(f"need p >= 2 classes and k >= 1 items, got p={p}, k={k}")
        self.index = _LabelIndex(labels, min_per_class=k)
        if len(self.index) < p:
            raise InvalidInputError(f"p={p} classes asked but only {len(self.index)} have {k} items")
        self.p, self.k, self.seed = p, k, seed

    def batch(self, step: int) -> np.ndarray:
        rng = _rng(self.seed, step)
        classes = rng.choice(len(self.index), self.p, replace=False)
        return np.concatenate([rng.choice(self.index.rows[c], self.k, replace=False) for c in classes])


class EpisodeSampler:
    """N-way episodes with ``k_shot + n_query`` items per class, class-major.

    With ``within_group`` all N classes come from one group (alphabet), chosen at random among
    groups that have at least N classes. With ``classes_per_group = g`` (0: off) they come in blocks
    of ``g`` classes from ``ceil(N / g)`` different groups, drawn at random among groups with at
    least ``g`` classes (the last block takes the remainder): each class meets ``g - 1`` rivals
    from its own group, as in a within-alphabet test, when no group has N classes. With
    ``small_groups`` the groups with fewer than ``g`` classes are drawn too, as smaller blocks of
    all their classes: groups come in random order, each giving up to ``g`` classes, until N.
    With ``look_alikes = h`` and a table of each class's nearest classes in ``self.neighbours``
    ((C, >= h - 1), see :mod:`oneshot.embedder.look_alikes`; None until the trainer sets it), ``h``
    of the N classes are one class drawn at random and its ``h - 1`` nearest, the rest drawn as above.
    """

    def __init__(self, labels, groups=None, n_way: int = 20, k_shot: int = 1, n_query: int = 5,
                 within_group: bool = True, seed: int = 0, classes_per_group: int = 0, small_groups: bool = False,
                 look_alikes: int = 0):
        if not (look_alikes == 0 or 2 <= look_alikes < n_way):
            raise InvalidInputError(f"look_alikes must be 0 (off) or in [2, n_way), got {look_alikes} with n_way={n_way}")
        self.look_alikes, self.neighbours = look_alikes, None
        if n_way < 2 or k_shot < 1 or n_query < 1:
            raise InvalidInputError(f"need n_way >= 2, k_shot >= 1, n_query >= 1; got {n_way}, {k_shot}, {n_query}")
        if classes_per_group < 0 or (classes_per_group and within_group):
            raise InvalidInputError(f"classes_per_group must be >= 0 and needs within_group off, got {classes_per_group}")
        if small_groups and not classes_per_group:
            raise InvalidInputError("small_groups needs classes_per_group (blocks) to be on")
        self.index = _LabelIndex(labels, groups, min_per_class=k_shot + n_query)
        self.n_way, self.per_class, self.within_group, self.seed = n_way, k_shot + n_query, within_group, seed
        self.classes_per_group = min(classes_per_group, n_way)
        self.small_groups = small_groups
        if within_group or (self.classes_per_group and not small_groups):
            block = self.classes_per_group or n_way
            self.block_sizes = [min(block, n_way - start) for start in range(0, n_way, block)]
            self.groups = [g for g, c in self.index.by_group.items() if len(c) >= block]
            if not self.groups:
                raise InvalidInputError(f"no group has {block} classes with {self.per_class} items each")
            if len(self.groups) < len(self.block_sizes):
                raise InvalidInputError(f"{n_way} classes in blocks of {block} need {len(self.block_sizes)} groups with "
                                        f"{block} classes of {self.per_class} items each, {len(self.groups)} found")
            left_out = [len(c) for c in self.index.by_group.values() if len(c) < block]
            if left_out:
                logger.warning("%d of %d groups (%d of %d classes) have fewer than %d classes with %d items and are "
                               "never drawn", len(left_out), len(self.index.by_group), sum(left_out), len(self.index),
                               block, self.per_class)
        elif len(self.index) < n_way:
            raise InvalidInputError(f"n_way={n_way} but only {len(self.index)} classes have {self.per_class} items")
        elif small_groups:
            self.groups = list(self.index.by_group)  # every group, whatever its size

    def batch(self, step: int) -> np.ndarray:
        rng = _rng(self.seed, step)
        if self.within_group:
            pool = self.index.by_group[self.groups[rng.integers(len(self.groups))]]
            classes = rng.choice(pool, self.n_way, replace=False)
        elif self.small_groups:
            classes = self._blocks_with_small_groups(rng)
        elif self.classes_per_group:
            classes = self._blocks(rng)
        else:
            classes = rng.choice(np.arange(len(self.index)), self.n_way, replace=False)
        if self.look_alikes and self.neighbours is not None:
            classes = self._with_look_alikes(rng, classes)
        return np.concatenate([rng.choice(self.index.rows[c], self.per_class, replace=False) for c in classes])

    def _with_look_alikes(self, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
        anchor = int(rng.integers(len(self.index)))
        block = np.concatenate([[anchor], self.neighbours[anchor, :self.look_alikes - 1]])
        rest = classes[~np.isin(classes, block)][:self.n_way - len(block)]
        return np.concatenate([rest, block])

    def _blocks(self, rng: np.random.Generator) -> np.ndarray:
        chosen = rng.choice(len(self.groups), len(self.block_sizes), replace=False)
        return np.concatenate([rng.choice(self.index.by_group[self.groups[g]], size, replace=False)
                               for g, size in zip(chosen, self.block_sizes)])

    def _blocks_with_small_groups(self, rng: np.random.Generator) -> np.ndarray:
        blocks, needed = [], self.n_way
        for g in rng.permutation(len(self.groups)):
            pool = self.index.by_group[self.groups[g]]
            size = min(self.classes_per_group, len(pool), needed)
            blocks.append(rng.choice(pool, size, replace=False))
            needed -= size
            if not needed:
                break
        return np.concatenate(blocks)


class PairSampler:
    """Balanced pairs: rows ``a = out[:P]`` and ``b = out[P:]``, the first half of pairs "same".

    Args:
        same_group_negatives: draw each "different" partner from the same group (alphabet).
    """

    def __init__(self, labels, groups=None, pairs: int = 32, same_group_negatives: bool = True, seed: int = 0):
        if pairs < 2:
            raise InvalidInputError(f"need at least 2 pairs per batch, got {pairs}")
        self.index = _LabelIndex(labels, groups, min_per_class=2)
        if len(self.index) < 2:
            raise InvalidInputError("pairs need at least two classes with two items each")
        self.pairs, self.same_group_negatives, self.seed = pairs, same_group_negatives, seed

    def _other_class(self, rng, c: int) -> int:
        pool = self.index.by_group[self.index.class_group[c]] if self.same_group_negatives else None
        if pool is None or len(pool) < 2:
            pool = np.arange(len(self.index))
        while True:
            other = int(rng.choice(pool))
            if other != c:
                return other

    def batch(self, step: int) -> np.ndarray:
        rng = _rng(self.seed, step)
        n_same = self.pairs // 2
        a, b = [], []
        for i, c in enumerate(rng.integers(len(self.index), size=self.pairs)):
            if i < n_same:
                x, y = rng.choice(self.index.rows[c], 2, replace=False)
            else:
                x = rng.choice(self.index.rows[c])
                y = rng.choice(self.index.rows[self._other_class(rng, c)])
            a.append(x)
            b.append(y)
        return np.array(a + b, dtype=np.int64)


class TripletSampler:
    """Explicit triplets: ``out[:T]`` anchors, ``out[T:2T]`` positives, ``out[2T:]`` negatives."""

    def __init__(self, labels, groups=None, triplets: int = 32, same_group_negatives: bool = True, seed: int = 0):
        if triplets < 1:
            raise InvalidInputError(f"need at least 1 triplet per batch, got {triplets}")
        self.pairs = PairSampler(labels, groups, 2, same_group_negatives, seed)
        self.triplets, self.seed = triplets, seed

    def batch(self, step: int) -> np.ndarray:
        rng = _rng(self.seed, step)
        index = self.pairs.index
        anchors, positives, negatives = [], [], []
        for c in rng.integers(len(index), size=self.triplets):
            x, y = rng.choice(index.rows[c], 2, replace=False)
            anchors.append(x)
            positives.append(y)
            negatives.append(rng.choice(index.rows[self.pairs._other_class(rng, c)]))
        return np.array(anchors + positives + negatives, dtype=np.int64)
