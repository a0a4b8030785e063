"""Read images from a folder or a zip file through one interface.

An :class:`ImageArchive` lists image files by their path relative to the folder (or their member
name inside the zip) and decodes them with OpenCV. It never writes next to its source.
"""
from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from oneshot.errors import ImageReadError, InvalidInputError, MissingDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not Path(name).name.startswith(".")


def decode_image(data: bytes, name: str, color: bool = False) -> np.ndarray:
    """Decode encoded image bytes.

    Returns:
        uint8 array (H, W) in grayscale, or (H, W, 3) BGR when ``color``.
    Raises:
        ImageReadError: naming ``name`` when OpenCV cannot decode the bytes.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(buffer, flag) if buffer.size else None
    if image is None:
        raise ImageReadError(f"{name}: not an image OpenCV can decode")
    if image.dtype != np.uint8:  # 16-bit PNG/TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    return image


class ImageArchive:
    """A folder or a ``.zip`` file of images.

    Args:
        path: the folder or zip file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingDataError(f"{self.path}: no such file or folder")
        self.is_zip = self.path.is_file()
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise InvalidInputError(f"{self.path}: neither a folder nor a zip file")
        self._local = threading.local()

    def _zip(self) -> zipfile.ZipFile:
        handle = getattr(self._local, "zip", None)
        if handle is None:
            handle = zipfile.ZipFile(self.path)
            self._local.zip = handle
        return handle

    def members(self) -> list[str]:
        """Every file (not only images), as posix paths relative to the archive root."""
        if self.is_zip:
            return [n for n in self._zip().namelist() if not n.endswith("/")]
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]

    def names(self) -> list[str]:
        """Sorted posix paths of every image file, relative to the archive root."""
        return sorted(n for n in self.members() if is_image_name(n) and "__MACOSX" not in n)

    def read_bytes(self, name: str) -> bytes:
        try:
            if self.is_zip:
                return self._zip().read(name)
            return (self.path / name).read_bytes()
        except (KeyError, OSError) as error:
            raise ImageReadError(f"{self.path}/{name}: cannot read ({error})") from error

    def read(self, name: str, color: bool = False) -> np.ndarray:
        """Decode one image: uint8 (H, W), or (H, W, 3) BGR when ``color``."""
        return decode_image(self.read_bytes(name), f"{self.path}/{name}", color=color)

    def read_many(self, names: Sequence[str], color: bool = False) -> list[np.ndarray]:
        return [self.read(n, color=color) for n in names]

    def __getstate__(self) -> dict:
        """Pickles as its path (open zip handles stay per process and thread): workers reopen it."""
        return {"path": self.path, "is_zip": self.is_zip}

    def __setstate__(self, state: dict) -> None:
        self.path, self.is_zip = state["path"], state["is_zip"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ImageArchive({str(self.path)!r})"


def read_image_file(path: str | os.PathLike, color: bool = False) -> np.ndarray:
    """Decode a single image file on disk."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read ({error.strerror or error})") from error
    return decode_image(data, str(path), color=color)
