"""The Omniglot data set (Lake et al.), read in place from its zip files or extracted folders.

Layout: ``images_background/<Alphabet>/characterNN/<id>_<drawer>.png``. A split is found under a
root directory as ``<split>.zip`` or ``<split>/``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from oneshot.data.archive import ImageArchive
from oneshot.errors import InvalidInputError, MissingDataError

SPLITS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
SPLIT_ALIASES = {
    "background": "images_background",
    "evaluation": "images_evaluation",
    "small1": "images_background_small1",
    "small2": "images_background_small2",
}
ENV_VAR = "OMNIGLOT_DIR"
_NAME = re.compile(r"^(?P<alphabet>[^/]+)/(?P<character>[^/]+)/(?P<stem>\d+)_(?P<drawer>\d+)\.png$")


def omniglot_root(root: str | os.PathLike | None = None) -> Path:
    """The Omniglot folder: ``root`` if given, else ``$OMNIGLOT_DIR``.

    Raises:
        FileNotFoundError: when neither is set or the folder does not exist.
    """
    if root is None:
        root = os.environ.get(ENV_VAR)
        if not root:
            raise MissingDataError(f"no Omniglot folder given and ${ENV_VAR} is not set")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"{path}: Omniglot folder not found")
    return path


def split_location(root: str | os.PathLike, split: str) -> Path:
    """Where ``split`` lives under ``root``: an extracted folder if present, else the zip."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise InvalidInputError(f"unknown Omniglot split {split!r}; known: {', '.join(SPLIT_ALIASES)}")
    root = Path(root)
    for candidate in (root / name, root / f"{name}.zip"):
        if candidate.exists():
            return candidate
    raise MissingDataError(f"{root}: neither {name}/ nor {name}.zip found")


class OmniglotSplit:
    """One Omniglot split as a table plus pixel access.

    ``table`` columns: ``id`` (int64), ``path`` (member path inside the archive), ``alphabet``,
    ``character`` (e.g. ``character07``), ``drawer`` (1..20), ``label`` (``Alphabet/characterNN``,
    unique across the split) and ``group`` (the alphabet).
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "background"):
        self.location = split_location(omniglot_root(root), split)
        self.archive = ImageArchive(self.location)
        self.table = self._index()

    def _index(self) -> pd.DataFrame:
        rows = []
        prefix = SPLIT_ALIASES.get(self.location.stem, self.location.stem) + "/"
        for name in self.archive.names():
            inner = name[len(prefix):] if name.startswith(prefix) else name
            match = _NAME.match(inner)
            if match is None:
                continue
            rows.append(
                (name, match["alphabet"], match["character"], int(match["drawer"]))
            )
        if not rows:
            raise InvalidInputError(f"{self.location}: no Omniglot images (<Alphabet>/characterNN/NNNN_DD.png) found")
        table = pd.DataFrame(rows, columns=["path", "alphabet", "character", "drawer"])
        table["label"] = table["alphabet"] + "/" + table["character"]
        table["group"] = table["alphabet"]
        table.insert(0, "id", pd.RangeIndex(len(table)).astype("int64"))
        return table

    @property
    def alphabets(self) -> list[str]:
        return sorted(self.table["alphabet"].unique())

    def read(self, paths) -> list:
        """Decode images by path: a list of uint8 (105, 105) arrays, ink dark on white."""
        return self.archive.read_many(list(paths))

    def __len__(self) -> int:
        return len(self.table)
