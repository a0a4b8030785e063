"""The one reader of images for every command, and what it does with bad input: skip it and name it, or stop at it.

A :class:`RejectPolicy` says how a job treats a file it cannot use (``on_error="skip"``, the
default for bulk jobs, or ``"fail"``) and how many rejects are tolerated (``max_rejects``: a count
``"N"`` or a share ``"P%"`` of the files seen). A :class:`Rejects` collector records
``(path, reason)`` pairs under that policy (in ``fail`` mode the first one raises), writes them as a
CSV table beside the job's output (atomically), and gives the job's one summary line.

:func:`read_batch` is what every command that reads pixels calls (embed, identify, assign, the
cluster export, the report's thumbnails, training's data scan): it reads a batch of paths from an
image source and returns the images that decoded, their paths, and records the ones that did not.
:func:`open_store_source` opens the images behind a store again, :func:`open_queries` query images.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from oneshot.atomic import atomic_path
from oneshot.data.archive import escape_name
from oneshot.data.source import ImageSource, open_source, read_images
from oneshot.errors import ImageReadError, InvalidInputError, MissingDataError, OneshotError

log = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("skip", "fail")
REJECTS_SUFFIX = ".rejects.csv"
NOTES_SUFFIX = ".notes.csv"


class TooManyRejectsError(OneshotError):
    """More files were rejected than ``max_rejects`` allows (the output is still written)."""


@dataclass(frozen=True)
class RejectPolicy:
    """How a bulk job treats files it cannot use.

    Attributes:
        on_error: ``"skip"`` (record the file and go on) or ``"fail"`` (stop at the first one).
        max_rejects: ``None`` (no limit), an int (at most this many rejects) or a float in [0, 1]
            (at most this share of the files seen).
    """

    on_error: str = "skip"
    max_rejects: int | float | None = None

    def __post_init__(self):
        if self.on_error not in ON_ERROR_CHOICES:
            raise InvalidInputError(f"on_error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}")
        limit = self.max_rejects
        if isinstance(limit, bool) or (limit is not None and not isinstance(limit, (int, float))):
            raise InvalidInputError(f"max_rejects must be an int, a share in [0, 1] or None, got {limit!r}")
        if isinstance(limit, int) and limit < 0:
            raise InvalidInputError(f"max_rejects must be >= 0, got {limit}")
        if isinstance(limit, float) and not 0.0 <= limit <= 1.0:
            raise InvalidInputError(f"max_rejects as a share must be in [0, 1], got {limit}")

    @classmethod
    def parse(cls, on_error: str = "skip", max_rejects: str | int | float | None = None) -> "RejectPolicy":
        """From command-line text: ``max_rejects`` ``"10"`` (a count) or ``"2.5%"`` (a share)."""
        return cls(on_error, parse_max_rejects(max_rejects))

    @property
    def fail(self) -> bool:
        return self.on_error == "fail"

    def exceeded(self, rejected: int, seen: int) -> bool:
        """Whether ``rejected`` out of ``seen`` files is over the limit."""
        if self.max_rejects is None:
            return False
        if isinstance(self.max_rejects, float):
            return seen > 0 and rejected / seen > self.max_rejects
        return rejected > self.max_rejects

    def describe_limit(self) -> str:
        if isinstance(self.max_rejects, float):
            return f"{self.max_rejects * 100:g}%"
        return str(self.max_rejects)


def parse_max_rejects(text: str | int | float | None) -> int | float | None:
    """``None``/``""`` -> no limit; ``"N"`` -> int N; ``"P%"`` -> float P/100.

    Raises:
        InvalidInputError: for anything else (negative, over 100%, not a number).
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    value = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*%", value)
    if match:
        share = float(match[1]) / 100.0
        if share > 1.0:
            raise InvalidInputError(f"--max-rejects {value}: a share must be at most 100%")
        return share
    if re.fullmatch(r"\d+", value):
        return int(value)
    raise InvalidInputError(f"--max-rejects {value!r}: give a count (e.g. 10) or a share (e.g. 1%)")


class Rejects:
    """Files a job could not use, collected under a :class:`RejectPolicy`.

    Args:
        policy: the policy (default: skip, no limit).
    Attributes:
        items: ``(path, reason)`` pairs in the order found; paths are valid text (escaped bytes).
        where: the file the table was written to, once written.
        kept: how many files :func:`read_batch` read successfully under this collector.
        notes: ``(path, note)`` pairs for files that were used with a remark (which of several
            faces); written beside the rejects as ``<out>.notes.csv``.
    """

    def __init__(self, policy: RejectPolicy | None = None):
        self.policy = policy or RejectPolicy()
        self.items: list[tuple[str, str]] = []
        self.where: Path | None = None
        self.kept = 0
        self.notes: list[tuple[str, str]] = []
        self.notes_where: Path | None = None
        self._paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def add(self, path: str, reason: str) -> None:
        """Record one rejected file; in ``fail`` mode raise :class:`ImageReadError` naming it instead."""
        path, reason = escape_name(str(path)), escape_name(str(reason))
        if self.policy.fail:
            raise ImageReadError(f"{path}: {reason} (stopped: --on-error fail)")
        if path in self._paths:  # listed once, even when a resumed job meets it again
            return
        log.info("rejected %s: %s", path, reason)
        self._paths.add(path)
        self.items.append((path, reason))

    def extend(self, pairs: Sequence[tuple[str, str]]) -> None:
        for path, reason in pairs:
            self.add(path, reason)

    def note(self, path: str, text: str) -> None:
        """Record a remark on a file that was used (e.g. which of several faces)."""
        path = escape_name(str(path))
        log.info("%s: %s", path, text)
        self.notes.append((path, escape_name(str(text))))

    def resume_from(self, path: str | os.PathLike) -> int:
        """Take in the rejects an interrupted run of the same job listed at ``path`` (a CSV written
        by :meth:`write`); returns how many. A missing or unreadable list adds nothing."""
        try:
            earlier = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            return 0
        before = len(self.items)
        for found, reason in zip(earlier.get("path", []), earlier.get("reason", [])):
            if found not in self._paths:
                self._paths.add(found)
                self.items.append((found, reason))
        return len(self.items) - before

    def table(self) -> pd.DataFrame:
        """Columns ``path`` and ``reason``, one row per reject."""
        return pd.DataFrame(self.items, columns=["path", "reason"], dtype=object)

    def write(self, path: str | os.PathLike) -> Path | None:
        """Write the table as CSV (header ``path,reason``, UTF-8) atomically when there are rejects;
        with none, remove a list left there by an earlier run (so it never stands for this one).

        Returns:
            The written path, or None when there was nothing to write.
        """
        path = Path(path)
        notes = path.with_name(path.name.removesuffix(REJECTS_SUFFIX) + NOTES_SUFFIX)
        for target, rows, columns in ((path, self.items, ["path", "reason"]), (notes, self.notes, ["path", "note"])):
            if not rows:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                pd.DataFrame(rows, columns=columns, dtype=object).to_csv(tmp, index=False, encoding="utf-8")
        self.notes_where = notes if self.notes else None
        if not self.items:
            return None
        self.where = path
        return path

    def summary(self, done: int, verb: str = "encoded") -> str:
        """One line: how many were done, how many rejected, where the list is."""
        where = f"; list in {self.where}" if self.where is not None and self.items else ""
        noted = f"; {len(self.notes)} with a note (several faces: the largest used)" if self.notes else ""
        noted += f", in {self.notes_where}" if self.notes and self.notes_where is not None else ""
        return f"{verb} {done}, rejected {len(self.items)}{where}{noted}"

    def check(self, seen: int) -> None:
        """Raise :class:`TooManyRejectsError` when the rejects exceed the policy's ``max_rejects``."""
        if self.policy.exceeded(len(self.items), seen):
            where = f" (list in {self.where})" if self.where is not None else ""
            raise TooManyRejectsError(f"{len(self.items)} of {seen} files rejected, more than --max-rejects "
                                      f"{self.policy.describe_limit()}{where}")


def rejects_path(out: str | os.PathLike) -> Path:
    """Where the rejects table of an output file goes: ``<out>.rejects.csv`` beside it."""
    out = Path(out)
    return out.with_name(out.name + REJECTS_SUFFIX)


def _reason(error: Exception, path: str) -> str:
    """The reason part of an error message that starts with (or contains) ``path: ``."""
    text = str(error)
    marker = f"{path}: "
    at = text.find(marker)
    return text[at + len(marker):] if at >= 0 else text


def read_batch(source, paths: Sequence[str], rejects: Rejects,
               **read_options) -> tuple[list[np.ndarray], list[str]]:
    """Read a batch of images from a source, leaving out (and recording) those that fail.

    Args:
        source: anything with ``read(paths) -> list of arrays`` (an image source).
        paths: the batch, as in the source's ``path`` column.
        rejects: where failures go (in ``fail`` mode the first one raises).
        read_options: passed to ``source.read`` (e.g. ``color=True``).
    Returns:
        (images, their paths), in the order of ``paths``, without the rejected ones.
    """
    paths = list(paths)
    try:
        images = list(read_images(source, paths, **read_options))
        rejects.kept += len(images)
        return images, paths
    except ImageReadError:
        pass  # one or more bad files in the batch: read one by one
    images, kept = [], []
    for path in paths:
        try:
            images.append(read_images(source, [path], **read_options)[0])
            kept.append(path)
        except ImageReadError as error:
            if rejects.policy.fail:  # the source's own message names the whole path
                raise ImageReadError(f"{escape_name(str(error))} (stopped: --on-error fail)") from error
            rejects.add(path, _reason(error, path))
    rejects.kept += len(kept)
    return images, kept


def scan_source(source, rejects: Rejects, batch_size: int = 1024):
    """Decode every image of a source once (training's data scan), keeping none in memory.

    Returns:
        ``source`` itself when every image is usable, else a shallow copy of it whose ``table``
        leaves out the rejected rows (same type, same reader), the rejects recorded in ``rejects``.
    """
    rejects.extend(getattr(source, "rejects", None) or [])
    paths = list(source.table["path"])
    good: set[str] = set()
    for start in range(0, len(paths), batch_size):
        _, kept = read_batch(source, paths[start : start + batch_size], rejects)
        good.update(kept)
    if len(good) == len(paths):
        return source
    subset = copy.copy(source)
    subset.table = source.table[source.table["path"].isin(good)].reset_index(drop=True)
    return subset


def finite_rows(vectors: np.ndarray, paths: Sequence[str], rejects: Rejects) -> np.ndarray:
    """Boolean mask of rows whose vector is all finite; the others are recorded as rejects."""
    ok = np.isfinite(vectors).all(axis=1) if vectors.size else np.ones(len(vectors), dtype=bool)
    for row in np.flatnonzero(~ok):
        rejects.add(paths[row], "its embedding has NaN or infinite values")
    return ok


def read_each(source, paths: Sequence[str], rejects: Rejects, **read_options) -> list[np.ndarray | None]:
    """:func:`read_batch` that keeps one entry per path: ``None`` where the file was rejected."""
    images, kept = read_batch(source, paths, rejects, **read_options)
    found = dict(zip(kept, images))
    return [found.get(path) for path in paths]


def open_store_source(source: str | os.PathLike | ImageSource) -> ImageSource:
    """The images behind a store (its metadata's ``source``), labelled layout first, then unlabelled."""
    if isinstance(source, ImageSource):
        return source
    if not source or not Path(str(source)).exists():
        raise MissingDataError(f"{source}: the store's image source is not there any more; pass --source")
    try:
        return open_source(source)
    except InvalidInputError:  # not a labelled layout: any depth, no labels
        return open_source(source, labelled=False)


def open_queries(queries: str | os.PathLike | ImageSource, strict: bool = True) -> ImageSource:
    """Query images (identify, assign) as a labelled source when their layout carries labels, else unlabelled."""
    try:
        return open_source(queries, strict=True)
    except InvalidInputError:
        try:
            return open_source(queries, strict=strict)
        except InvalidInputError:
            return open_source(queries, labelled=False, strict=strict)
