"""Labelled, preprocessed images in memory for training and validation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError


@dataclass
class LabelledImages:
    """Preprocessed images with integer class and group codes.

    Attributes:
        images: float32 (N, C, H, W), as the recipe makes them.
        labels: int64 (N,) class codes.
        groups: int64 (N,) group (alphabet) codes.
        rotations: with True, each class rotated by 90, 180 and 270 degrees is a new class (in a
            new group), so the set holds ``4 N`` virtual items.
        reflections: with True, each class's mirror image (left-right) is a new class (in a new
            group), and with rotations so are the mirror image's rotations: ``8 N`` virtual items.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    rotations: bool = False
    reflections: bool = False

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise InvalidInputError(f"expected images (N, 1 or 3, H, W), got {self.images.shape}")
        if self.rotations and self.images.shape[2] != self.images.shape[3]:
            raise InvalidInputError(f"90-degree rotations need square images, got {self.images.shape[2:]}; "
                                    "drop --rotations")
        if self.labels.shape != (n,) or self.groups.shape != (n,):
            raise InvalidInputError(f"labels {self.labels.shape} and groups {self.groups.shape} must be ({n},)")

    @classmethod
    def from_table(cls, table: pd.DataFrame, read: Callable[[Sequence[str]], list], recipe: Recipe,
                   rotations: bool = False, unusable: Callable[[str, str], None] | None = None,
                   reflections: bool = False) -> "LabelledImages":
        """Read and preprocess the rows of a table with ``path``, ``label`` and ``group`` columns.

        Rows the recipe cannot use (a photo without a face) are left out and passed to
        ``unusable(path, reason)``.
        """
        prepared = recipe.prepare(read(list(table["path"])))
        for position, reason in sorted(prepared.reasons.items()):
            if unusable is not None:
                unusable(str(table["path"].iloc[position]), reason)
        table = table.iloc[prepared.kept]
        images = prepared.pixels
        labels = pd.factorize(table["label"], sort=True)[0].astype(np.int64)
        groups = pd.factorize(table["group"], sort=True)[0].astype(np.int64)
        return cls(images, labels, groups, rotations, reflections)

    @property
    def copies(self) -> int:
        """Virtual copies of each item: 1, 2 (mirror images), 4 (rotations) or 8 (both)."""
        return (4 if self.rotations else 1) * (2 if self.reflections else 1)

    def virtual_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Labels and groups of all virtual items, shape (copies * N,) each."""
        n_labels, n_groups = int(self.labels.max()) + 1, int(self.groups.max()) + 1
        turns = np.repeat(np.arange(self.copies), len(self.labels))
        return (np.tile(self.labels, self.copies) + turns * n_labels,
                np.tile(self.groups, self.copies) + turns * n_groups)

    def fetch(self, rows: np.ndarray) -> torch.Tensor:
        """Images of virtual rows -> float32 (B, C, H, W), mirrored and rotated as their copy says
        (copy k: mirrored when ``k >= 4`` with rotations, ``k >= 1`` without; then ``k % 4``
        quarter turns counter-clockwise with rotations)."""
        base, copy = rows % len(self.images), rows // len(self.images)
        batch = torch.from_numpy(self.images[base])
        turns_per_mirror = 4 if self.rotations else 1
        mirrored = torch.from_numpy(copy >= turns_per_mirror)
        if mirrored.any():
            batch[mirrored] = torch.flip(batch[mirrored], dims=(3,))
        turns = copy % turns_per_mirror
        for k in range(1, turns_per_mirror):
            chosen = torch.from_numpy(turns == k)
            if chosen.any():
                batch[chosen] = torch.rot90(batch[chosen], k, dims=(2, 3))
        return batch
