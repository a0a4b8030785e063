"""Generic labelled galleries: a folder, a zip, or a text list of image files.

Layouts understood (one per source, never mixed):

* ``root/<class>/<image>``: ``group`` is ``""`` and ``label`` is the class;
* ``root/<group>/<class>/<image>``: ``label`` is ``"group/class"`` (unique across groups);
* with ``labelled=False``, any depth: every ``label`` and ``group`` is ``""``;
* a ``.txt``/``.lst`` file naming one image per line (relative to the list's folder, or
  absolute; blank lines and ``#`` comments skipped): ``label`` is the parent folder's name,
  prefixed by ``"group/"`` when the file lies at least two folders below the list's folder.

A zip whose images all sit under one top folder at least three levels deep (``images_evaluation/
<alphabet>/<char>/x.png``) is read as if that folder were the root; its ``path`` column keeps the
full member name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from oneshot.data.archive import ImageArchive, is_image_name, read_image_file
from oneshot.errors import InvalidInputError, MissingDataError

LIST_SUFFIXES = (".txt", ".lst")
COLUMNS = ["id", "path", "label", "group"]


@dataclass
class Gallery:
    """Images with labels.

    Attributes:
        table: columns ``id`` (int64, 0..N-1), ``path`` (posix path inside the folder or zip, or
            as written in the list), ``label`` and ``group`` (str, ``""`` when absent).
        source: the folder, zip or list file it was read from.
    """

    table: pd.DataFrame
    source: Path
    archive: ImageArchive | None = field(default=None, repr=False)  # None for a list file
    #: ``(path, reason)`` for files found but left out while listing (only with ``strict=False``).
    rejects: list[tuple[str, str]] = field(default_factory=list, repr=False)

    @property
    def kind(self) -> str:
        """``"folder"``, ``"zip"`` or ``"list"``."""
        if self.archive is None:
            return "list"
        return "zip" if self.archive.is_zip else "folder"

    def __len__(self) -> int:
        return len(self.table)

    def file(self, path: str) -> Path:
        """The file on disk behind a list entry ``path``."""
        if self.archive is not None:
            raise InvalidInputError(f"{self.source}: file() is for list galleries; use read()")
        return _resolve(self.source.parent, path)

    def _known_paths(self) -> np.ndarray:
        """Sorted uint64 hashes of the table's paths, built once per table (reads come in many small
        batches): 8 bytes a path, where a set of Python strings costs about 100."""
        cached = self.__dict__.get("_known")
        if cached is None or cached[0] is not self.table:
            paths = self.table["path"]
            hashes = [_path_hashes(paths.iloc[start : start + 65536]) for start in range(0, len(paths), 65536)]
            cached = (self.table, np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64))
            self.__dict__["_known"] = cached
        return cached[1]

    def read(self, paths: Iterable[str] | None = None, color: bool = False) -> list[np.ndarray]:
        """Decode images by their ``path`` (all, in table order, when ``None``).

        Returns:
            uint8 arrays (H, W), or (H, W, 3) BGR when ``color``.
        Raises:
            ValueError: for a path not in the table.
            ImageReadError: (a ValueError) naming the file when it cannot be decoded.
        """
        if paths is None:
            paths = list(self.table["path"])
        else:
            paths = [paths] if isinstance(paths, str) else list(paths)
            known, wanted = self._known_paths(), _path_hashes(paths)
            found = (known[np.minimum(np.searchsorted(known, wanted), len(known) - 1)] == wanted if len(known)
                     else np.zeros(len(wanted), bool))
            unknown = [p for p, ok in zip(paths, found) if not ok]
            if unknown:
                raise InvalidInputError(f"{self.source}: {unknown[0]!r} is not a path of this gallery")
        if self.archive is not None:
            return self.archive.read_many(paths, color=color)
        return [read_image_file(self.file(p), color=color) for p in paths]


def _path_hashes(paths) -> np.ndarray:
    """uint64 hashes of path strings (pandas' vectorised SipHash); callers pass chunks, so the Python
    strings made on the way stay few."""
    return pd.util.hash_array(np.asarray(paths, dtype=object), categorize=False)


def read_gallery(source: str | os.PathLike, labelled: bool = True, strict: bool = True) -> Gallery:
    """Index a gallery (no pixel is decoded here).

    Args:
        source: a folder, a ``.zip``, or a ``.txt``/``.lst`` list of image paths.
        labelled: take labels from folder names; ``False`` gives every image label ``""``.
        strict: raise at the first file that cannot be listed (a dangling link, an unsafe zip
            member, an image at the wrong folder depth, a bad list line). With ``False`` such
            files go into ``Gallery.rejects`` with their reason instead, and the layout is the one
            most images follow. OS litter and hidden files are skipped silently either way.

    Returns:
        A :class:`Gallery`, folder and zip rows sorted by path, list rows in list order.
    Raises:
        FileNotFoundError: when ``source`` does not exist.
        ValueError: when no image is found, the layout mixes depths or is too deep, an image sits
            at the top level in labelled mode, or a list line names a missing or non-image file
            (the message names the list file and line).
    """
    source = Path(source)
    if not source.exists():
        raise MissingDataError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        return _read_list(source, labelled, strict)
    archive = ImageArchive(source)  # InvalidInputError unless a folder or a readable zip
    listing = archive.scan()
    if strict and listing.rejects:
        path, reason = listing.rejects[0]
        raise InvalidInputError(f"{source}/{path}: {reason}")
    rejects = list(listing.rejects)
    names = list(listing.names)
    if labelled and names and not strict:
        names, misplaced = _keep_main_layout(names, strip_top=archive.is_zip)
        rejects += misplaced
    if not names:
        raise InvalidInputError(f"no images found in {source}" + (f" ({len(rejects)} files rejected, e.g. "
                                                                  f"{rejects[0][0]}: {rejects[0][1]})" if rejects else ""))
    if labelled:
        paths, labels, groups = _labels_from_layout(source, names, strip_top=archive.is_zip)
    else:
        paths, labels, groups = names, [""] * len(names), [""] * len(names)
    listed = archive.names_array()
    if len(names) == len(listed):  # nothing left out: the path column shares the listing's Arrow buffers
        paths = pd.array(listed, dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    return Gallery(_table(paths, labels, groups), source, archive, rejects)


def _strip(names: list[str], strip_top: bool) -> int:
    tops = {n.split("/", 1)[0] for n in names}
    return 1 if strip_top and len(tops) == 1 and all(n.count("/") >= 2 for n in names) else 0


def _keep_main_layout(names: list[str], strip_top: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Images that follow the layout most images follow (<class>/<image> or <group>/<class>/<image>),
    and ``(path, reason)`` for the others. Works on the names as strings: a path object per name
    would intern every name for the life of the process (pathlib calls ``sys.intern``)."""
    skip = _strip(names, strip_top)
    depths = [n.count("/") + 1 - skip for n in names]
    counts = {d: depths.count(d) for d in (2, 3)}
    main = max((2, 3), key=lambda d: (counts[d], -d))
    if counts[main] == 0:
        return names, []  # nothing usable; the strict check below names the problem
    expected = "<class>/<image>" if main == 2 else "<group>/<class>/<image>"
    keep, rejects = [], []
    for name, depth in zip(names, depths):
        if depth == main:
            keep.append(name)
        else:
            where = "not inside a class folder" if depth == 1 else f"{depth} folder levels deep"
            rejects.append((name, f"wrong folder depth: {where}; this gallery is {expected}"))
    return keep, rejects


def _labels_from_layout(source: Path, names: list[str], strip_top: bool) -> tuple[list[str], list[str], list[str]]:
    """(path, label, group) columns from a consistent 2- or 3-level layout.

    Works on the names as strings (no per-file tuple of parts) and shares one label string per
    class, so a million images cost little more than their names.
    """
    skip = 0
    tops = {n.split("/", 1)[0] for n in names}
    if strip_top and len(tops) == 1 and all(n.count("/") >= 2 for n in names):
        skip = 1  # a zip of one top folder: read from inside it
    depths = {}
    for name in names:
        depths.setdefault(name.count("/") + 1 - skip, name)
    if 1 in depths:
        raise InvalidInputError(
            f"{source}: {depths[1]!r} is not inside a class folder; expected <class>/<image> or "
            "<group>/<class>/<image> (use labelled=False for unlabelled images)"
        )
    deep = [d for d in depths if d > 3]
    if deep:
        hint = f"; point at {source / next(iter(tops))} instead?" if len(tops) == 1 and not skip else ""
        raise InvalidInputError(
            f"{source}: {depths[max(deep)]!r} is {max(deep)} levels deep; expected <class>/<image> "
            f"or <group>/<class>/<image>{hint}"
        )
    if len(depths) > 1:
        raise InvalidInputError(
            f"{source}: mixed layout: {depths[2]!r} is <class>/<image> but {depths[3]!r} is "
            "<group>/<class>/<image>; use one layout throughout"
        )
    shared: dict[str, str] = {}
    labels, groups = [], []
    for name in names:
        inner = name.split("/", skip)[-1]
        label = inner.rsplit("/", 1)[0]
        label = shared.setdefault(label, label)
        group = label.split("/", 1)[0] if "/" in label else ""
        labels.append(label)
        groups.append(shared.setdefault(group, group))
    return names, labels, groups


def _resolve(base: Path, written: str) -> Path:
    path = Path(written).expanduser()
    return path if path.is_absolute() else base / path


def _read_list(source: Path, labelled: bool, strict: bool = True) -> Gallery:
    base = source.parent
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{source}: cannot read list file ({error})") from error
    rows, seen, rejects = [], {}, []
    for number, line in enumerate(text.splitlines(), start=1):
        written = line.strip()
        if not written or written.startswith("#"):
            continue
        where = f"{source}, line {number}"
        problem = None
        if not is_image_name(written):
            problem = f"{written!r} is not an image file name"
        elif written in seen:
            problem = f"{written!r} already listed on line {seen[written]}"
        elif not _resolve(base, written).is_file():
            problem = f"{written!r} not found (looked for {_resolve(base, written)})"
        if problem:
            if strict:
                raise InvalidInputError(f"{where}: {problem}")
            rejects.append((written, f"line {number}: {problem}"))
            continue
        seen[written] = number
        path = _resolve(base, written)
        label = group = ""
        if labelled:
            label = path.parent.name
            try:
                inside = path.resolve().relative_to(base.resolve()).parts
            except ValueError:
                inside = ()
            if len(inside) >= 3:
                group = inside[-3]
                label = f"{group}/{label}"
        rows.append((written, label, group))
    if not rows:
        raise InvalidInputError(f"no images found in {source}")
    return Gallery(_table(*map(list, zip(*rows))), source, None, rejects)


def _table(paths: list[str], labels: list[str], groups: list[str]) -> pd.DataFrame:
    table = pd.DataFrame({"path": paths, "label": labels, "group": groups})
    table.insert(0, "id", np.arange(len(table), dtype=np.int64))
    return table[COLUMNS]
