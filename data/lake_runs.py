"""Lake's 20 official 20-way within-alphabet one-shot runs (``all_runs.zip`` or its folder).

Each run ``runNN`` holds ``training/classNN.png`` (one drawing of each of 20 characters),
``test/itemNN.png`` (20 other drawings) and ``class_labels.txt`` mapping each test item to its
training class. Score = mean error over all runs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oneshot.data.archive import ImageArchive, is_image_name
from oneshot.errors import InvalidInputError, MissingDataError

_RUN = re.compile(r"(?:^|/)(run\d+)/class_labels\.txt$")


@dataclass
class LakeRun:
    """One run: ``answers[i]`` is the index in ``training`` of ``test[i]``'s character."""

    name: str
    archive: ImageArchive
    training: list[str]
    test: list[str]
    answers: np.ndarray  # int64 (n_test,)

    def training_images(self) -> list[np.ndarray]:
        """uint8 (H, W) arrays, one per training class."""
        return self.archive.read_many(self.training)

    def test_images(self) -> list[np.ndarray]:
        return self.archive.read_many(self.test)


def lake_runs_location(path: str | os.PathLike) -> Path:
    """Accept ``all_runs.zip``, an ``all_runs/`` folder, or an Omniglot root holding either."""
    path = Path(path)
    for candidate in (path / "all_runs", path / "all_runs.zip"):
        if path.is_dir() and candidate.exists():
            return candidate
    if path.exists():
        return path
    raise MissingDataError(f"{path}: Lake's runs (all_runs.zip or folder) not found")


def read_lake_runs(path: str | os.PathLike) -> list[LakeRun]:
    """Read every run, sorted by name.

    Raises:
        ValueError: naming the file when a ``class_labels.txt`` line is malformed or points to a
            missing image, or when no run is found.
    """
    location = lake_runs_location(path)
    archive = ImageArchive(location)
    members = archive.members()
    present = set(members)
    runs = []
    for member in sorted(m for m in members if _RUN.search(m)):
        name = _RUN.search(member).group(1)
        prefix = member[: -len("class_labels.txt")]  # "" or "all_runs/"-style leading folders + run/
        root = prefix[: -len(name) - 1]
        text = archive.read_bytes(member).decode("utf-8", errors="replace")
        pairs = [line.split() for line in text.splitlines() if line.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise InvalidInputError(f"{location}/{member}: expected lines 'test_image training_image'")
        tests = [root + p[0] for p in pairs]
        train_of_test = [root + p[1] for p in pairs]
        training = sorted(set(train_of_test) | {m for m in present if m.startswith(prefix + "training/") and is_image_name(m)})
        missing = [m for m in tests + training if m not in present]
        if missing:
            raise InvalidInputError(f"{location}/{member}: image {missing[0]} listed but not found")
        position = {m: i for i, m in enumerate(training)}
        answers = np.array([position[m] for m in train_of_test], dtype=np.int64)
        runs.append(LakeRun(name, archive, training, tests, answers))
    if not runs:
        raise InvalidInputError(f"{location}: no runNN/class_labels.txt found")
    return runs
