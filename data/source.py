"""One interface for every source of images, and one function that opens any of them.

An image source is a table plus a reader: ``table`` has one row per image with columns ``id``
(int64), ``path`` (str, unique), ``label`` and ``group`` (str, ``""`` when absent), and
``read(paths) -> list of uint8 arrays`` decodes the rows named by ``path``. Folders, zips and list
files (:class:`~oneshot.data.folders.Gallery`), Omniglot splits
(:class:`~oneshot.data.omniglot.OmniglotSplit`), MNIST IDX files (:class:`MnistSource`) and the
synthetic generator (:class:`~oneshot.data.synthetic.SyntheticSet`) all implement it, so training,
embedding, the demo and the benchmarks take any of them the same way.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from oneshot.data.folders import read_gallery
from oneshot.data.forgeries import recognise_forgeries
from oneshot.data.mnist import read_mnist
from oneshot.data.omniglot import OmniglotSplit, split_location
from oneshot.errors import InvalidInputError, MissingDataError


@runtime_checkable
class ImageSource(Protocol):
    """A table of images (``id``, ``path``, ``label``, ``group``) and a reader of their pixels."""

    table: pd.DataFrame

    def read(self, paths: Sequence[str]) -> list[np.ndarray]:
        """uint8 (H, W) or (H, W, 3) arrays for the rows whose ``path`` is given, in that order."""
        ...


class MnistSource:
    """An MNIST-style pair of IDX files (images and labels) as an image source.

    Paths are ``<images file name>/<row>`` (stable, so ids and stores survive re-runs); labels are
    the digits as text; there are no groups. Images are kept as stored (ink bright on black).
    """

    def __init__(self, images_path: str | os.PathLike, labels_path: str | os.PathLike):
        self.location = Path(images_path)
        self.labels_path = Path(labels_path)
        self.images, labels = read_mnist(images_path, labels_path)
        stem = _idx_stem(self.location.name)
        self.table = pd.DataFrame({
            "id": np.arange(len(labels), dtype=np.int64),
            "path": [f"{stem}/{i:06d}" for i in range(len(labels))],
            "label": labels.astype(str),
            "group": "",
        })
        self._row = {path: i for i, path in enumerate(self.table["path"])}

    def __len__(self) -> int:
        return len(self.table)

    def read(self, paths: Sequence[str]) -> list[np.ndarray]:
        rows = []
        for path in ([paths] if isinstance(paths, str) else paths):
            if path not in self._row:
                raise InvalidInputError(f"{self.location}: {path!r} is not a row of this IDX file")
            rows.append(self._row[path])
        return list(self.images[rows])


_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)(?P<sep>[-_.])images[-_.]idx3[-_.]ubyte(?P<gz>\.gz)?$")


def _idx_stem(name: str) -> str:
    return name.removesuffix(".gz")


def is_idx_images(path: Path) -> bool:
    return bool(_IDX_IMAGES.match(path.name))


def mnist_labels_for(images_path: Path) -> Path:
    """The labels file beside an IDX images file (``*-images-idx3-ubyte[.gz]`` -> ``*-labels-idx1-ubyte[.gz]``)."""
    match = _IDX_IMAGES.match(images_path.name)
    if match is None:
        raise InvalidInputError(f"{images_path}: not an IDX images file name (*-images-idx3-ubyte[.gz])")
    sep = match["sep"]
    for gz in (match["gz"] or "", "" if match["gz"] else ".gz"):
        candidate = images_path.with_name(f"{match['prefix']}{sep}labels{sep}idx1{sep}ubyte{gz}")
        if candidate.exists():
            return candidate
    raise MissingDataError(f"{images_path}: no labels file {match['prefix']}{sep}labels{sep}idx1{sep}ubyte[.gz] beside it")


def _mnist_in_folder(folder: Path, split: str) -> Path | None:
    """The images file of ``split`` ("train" or "test"/"t10k") in a folder of IDX files, if any."""
    files = sorted(p for p in folder.iterdir() if is_idx_images(p))
    if not files:
        return None
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise InvalidInputError(f"{folder}: MNIST split must be 'train' or 'test', got {split!r}")
    chosen = [p for p in files if p.name.startswith(prefix)]
    if len(files) == 1:
        return files[0]
    if not chosen:
        raise InvalidInputError(f"{folder}: holds {[p.name for p in files]}, none for split {split!r}")
    return chosen[0]


def _is_omniglot_root(folder: Path) -> bool:
    try:
        split_location(folder, "background")
        return True
    except (MissingDataError, InvalidInputError):
        return False


def open_source(source: str | os.PathLike | ImageSource, labelled: bool = True,
                split: str | None = None, strict: bool = True) -> ImageSource:
    """Open any image source the product reads.

    Args:
        source: an :class:`ImageSource` (returned as is); an MNIST IDX images file (labels found
            beside it) or a folder of IDX files; an Omniglot folder (its zips or extracted splits);
            a gallery folder (``class/image`` or ``group/class/image``), a zip of one, or a
            ``.txt``/``.lst`` list of image files; ``writer/genuine|forged/image`` galleries are
            read as forgeries (see :mod:`oneshot.data.forgeries`).
        labelled: for galleries, take labels from folder names (``False``: any depth, no labels).
        split: which split of an Omniglot folder (``background`` by default, ``evaluation``,
            ``small1``, ``small2``) or of an MNIST folder (``train`` by default, or ``test``).
        strict: for galleries, raise at the first file that cannot be listed; with ``False`` such
            files are left out and named in the source's ``rejects`` (see
            :func:`~oneshot.data.folders.read_gallery`). Other sources have no listing rejects.
    Raises:
        MissingDataError: when ``source`` does not exist.
        InvalidInputError: when it is none of the above.
    """
    if isinstance(source, ImageSource):
        return source
    path = Path(source)
    if not path.exists():
        raise MissingDataError(f"{path}: no such file or folder")
    if path.is_file() and is_idx_images(path):
        return MnistSource(path, mnist_labels_for(path))
    if path.is_dir():
        images = _mnist_in_folder(path, split or "train")
        if images is not None:
            return MnistSource(images, mnist_labels_for(images))
        if _is_omniglot_root(path):
            return OmniglotSplit(path, split or "background")
    if split is not None:
        raise InvalidInputError(f"{path}: split {split!r} applies to Omniglot and MNIST folders only")
    gallery = read_gallery(path, labelled=labelled, strict=strict)
    return recognise_forgeries(gallery) if labelled else gallery


def describe_source(source: ImageSource) -> str:
    """Where a source's images come from, for metadata and messages."""
    for attribute in ("location", "source"):
        value = getattr(source, attribute, None)
        if value is not None:
            return str(value)
    return type(source).__name__


def listing_rejects(source: ImageSource) -> list[tuple[str, str]]:
    """``(path, reason)`` for files a source left out while listing (``[]`` for most sources)."""
    return list(getattr(source, "rejects", None) or [])


def read_all(source: ImageSource) -> list[np.ndarray]:
    """Every image of a source, in table order."""
    return source.read(list(source.table["path"]))


def read_images(source: ImageSource, paths: Sequence[str], color: bool = False) -> list[np.ndarray]:
    """``source.read(paths)``, in colour ((H, W, 3) BGR) when ``color`` and the source stores colour.

    Sources that only hold grey images (MNIST, Omniglot, the synthetic sets) ignore ``color``.
    """
    if color:
        import inspect

        if "color" in inspect.signature(source.read).parameters:
            return source.read(paths, color=True)
    return source.read(paths)


def rows_of_groups(table: pd.DataFrame, groups: Sequence[str], where: str) -> np.ndarray:
    """(N,) bool: the rows of ``table`` in ``groups``; a group with no row raises, naming ``where`` it was looked for."""
    missing = sorted(set(groups) - set(table["group"]))
    if missing:
        raise InvalidInputError(f"groups not in {where}: {missing}")
    return table["group"].isin(groups).to_numpy()
