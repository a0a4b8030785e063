"""Read images from a folder or a zip file through one interface.

An :class:`ImageArchive` lists image files by their path relative to the folder (or their member
name inside the zip) and decodes them safely (:mod:`oneshot.data.decode`). It never writes next to
its source and never extracts anything.

Listing is robust to what real galleries hold (:meth:`ImageArchive.scan`):

* OS litter (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``__MACOSX/``, AppleDouble ``._x``
  files, any hidden file or folder) is skipped silently; so are files without an image extension;
* a file name that is not valid UTF-8 is listed under an escaped name (each undecodable byte
  written ``\\xNN``), the same on every run; :meth:`ImageArchive.read_bytes` maps it back;
* symbolic links are never followed out of the folder: a link to a file inside it is read, a link
  leading outside, a dangling link, a loop or a link to a folder is rejected with its reason;
* zip members with ``..`` or absolute names, repeated names (only the first is read), and members
  larger than a size cap (zip bombs) are rejected with their reason; a zip whose central directory
  cannot be read is refused as a whole.
"""
from __future__ import annotations

import os
import re
import stat
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from oneshot.data.decode import DEFAULT_MAX_PIXELS, decode_image
from oneshot.errors import ImageReadError, InvalidInputError, MissingDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".ppm", ".webp", ".gif")
LITTER_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r", "__macosx"})
#: Largest file (or uncompressed zip member) read, in bytes: 256 MiB.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

__all__ = ["DEFAULT_MAX_FILE_BYTES", "IMAGE_SUFFIXES", "ImageArchive", "Listing", "decode_image", "escape_name",
           "is_image_name", "is_litter", "read_image_file"]


def is_image_name(name: str) -> bool:
    """A file name with an image extension (any case) that is not hidden."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.rsplit("/", 1)[-1].startswith(".")


def is_litter(name: str) -> bool:
    """OS litter or hidden: any part of the posix path hidden, ``__MACOSX``, ``Thumbs.db`` ..."""
    return any((part.startswith(".") and part not in (".", "..")) or part.lower() in LITTER_NAMES
               for part in name.split("/"))  # plain string parts: listing a million names stays fast


_ESCAPED_BYTE = re.compile(r"\\x([0-9a-f]{2})")


def unescape_name(name: str) -> str:
    r"""The inverse of :func:`escape_name`: ``\xNN`` back to the surrogate-escaped byte."""
    return _ESCAPED_BYTE.sub(lambda match: chr(0xDC00 + int(match[1], 16)), name)


def escape_name(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 (surrogate-escaped) become ``\\xNN``.

    Valid names come back unchanged; the result is the same on every run.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", errors="backslashreplace")


@dataclass
class Listing:
    """What a scan found: image names (escaped, sorted) and files rejected while listing.

    Attributes:
        names: posix paths relative to the archive root, valid UTF-8.
        rejects: ``(path, reason)`` pairs, paths escaped like ``names``.
    """

    names: list[str] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)


class ImageArchive:
    """A folder or a ``.zip`` file of images.

    Args:
        path: the folder or zip file.
        max_file_bytes: files (or uncompressed zip members) larger than this are rejected
            (default :data:`DEFAULT_MAX_FILE_BYTES`).
        max_pixels: images with more pixels are rejected (default
            :data:`oneshot.data.decode.DEFAULT_MAX_PIXELS`).
    Raises:
        MissingDataError: ``path`` does not exist.
        InvalidInputError: ``path`` is a file but not a readable zip (e.g. a corrupt central directory).
    """

    def __init__(self, path: str | os.PathLike, max_file_bytes: int | None = None,
                 max_pixels: int | None = None):
        self.path = Path(path)
        self.max_file_bytes = int(max_file_bytes if max_file_bytes is not None else DEFAULT_MAX_FILE_BYTES)
        self.max_pixels = int(max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS)
        if not self.path.exists():
            raise MissingDataError(f"{self.path}: no such file or folder")
        self.is_zip = self.path.is_file()
        self._local = threading.local()
        self._real: dict[str, str] = {}  # escaped name -> name on disk
        self._infos: dict[str, zipfile.ZipInfo] = {}  # member name -> its first entry
        self._listing: tuple[pa.LargeStringArray, list[tuple[str, str]]] | None = None  # see scan()
        if self.is_zip:
            if not zipfile.is_zipfile(self.path):
                raise InvalidInputError(f"{self.path}: neither a folder nor a readable zip file "
                                        "(no valid zip central directory)")
            self._zip()

    def _zip(self) -> zipfile.ZipFile:
        handle = getattr(self._local, "zip", None)
        if handle is None:
            try:
                handle = zipfile.ZipFile(self.path)
            except Exception as error:  # zipfile raises BadZipFile, NotImplementedError, ValueError... on bad bytes
                raise InvalidInputError(f"{self.path}: corrupt zip file ({error})") from error
            self._local.zip = handle
        return handle

    # ------------------------------------------------------------------ listing

    def scan(self) -> Listing:
        """List image files once: their escaped names (sorted), and what was rejected while listing.

        The listing is kept as one Arrow string array (about 20 bytes a name, against about 70 for
        a Python string), so a million-image gallery's listing weighs little while a job runs;
        each call returns the names as a list of its own.
        """
        if self._listing is None:
            listing = self._scan_zip() if self.is_zip else self._scan_folder()
            listing.names.sort()
            self._listing = (pa.array(listing.names, type=pa.large_string()), listing.rejects)
            return listing
        names, rejects = self._listing
        return Listing(names.to_pylist(), list(rejects))

    def names_array(self) -> pa.LargeStringArray:
        """The sorted, escaped image names as the Arrow array :meth:`scan` keeps (no copy)."""
        if self._listing is None:
            self.scan()
        return self._listing[0]

    def _scan_zip(self) -> Listing:
        listing = Listing()
        for info in self._zip().infolist():
            name = info.filename
            if not name or name.endswith("/") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            reason = None
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
                reason = "unsafe member name (absolute or with '..'); not read"
            elif is_litter(name) or not is_image_name(name):
                continue
            elif name in self._infos:
                reason = "duplicate member name in the zip; only the first is read"
            elif info.file_size > self.max_file_bytes:
                reason = (f"uncompressed size {info.file_size} bytes exceeds the cap of {self.max_file_bytes} "
                          "(possible zip bomb)")
            if reason:
                listing.rejects.append((name, reason))
                continue
            self._infos[name] = info
            listing.names.append(name)
        return listing

    def _scan_folder(self) -> Listing:
        listing = Listing()
        root = self.path.resolve()
        seen_escaped: set[str] = set()

        def walk_error(error: OSError) -> None:
            where = Path(error.filename) if error.filename else self.path
            try:
                rel = where.relative_to(self.path).as_posix()
            except ValueError:
                rel = str(where)
            if not is_litter(rel):
                listing.rejects.append((escape_name(rel), f"cannot list folder ({error.strerror or error})"))

        # plain strings, no Path per file: pathlib interns every name it parses (sys.intern), which
        # kept a million-image listing's names alive for the whole job
        for folder, dirs, files in os.walk(self.path, onerror=walk_error, followlinks=False):
            rel_folder = Path(folder).relative_to(self.path).as_posix()
            prefix = "" if rel_folder == "." else rel_folder + "/"
            dirs[:] = sorted(d for d in dirs if not is_litter(d))
            candidates = list(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]
            for entry in candidates:
                rel = prefix + entry
                if is_litter(rel) or not is_image_name(rel):
                    continue
                escaped = escape_name(rel)
                full = os.path.join(folder, entry)
                reason = self._folder_entry_problem(full, root)
                if reason is None and escaped in seen_escaped:
                    reason = "another file has the same escaped name"
                if reason:
                    listing.rejects.append((escaped, reason))
                    continue
                seen_escaped.add(escaped)
                if escaped != rel:
                    self._real[escaped] = rel
                listing.names.append(escaped)
        return listing

    @staticmethod
    def _folder_entry_problem(full: str, root: Path) -> str | None:
        """Why a listed path is not a readable regular file inside the folder, or None."""
        link = os.path.islink(full)
        if link:
            try:
                target = Path(full).resolve(strict=True)
            except (OSError, RuntimeError):
                return "broken symbolic link (missing target or a loop)"
            if not target.is_relative_to(root):
                return f"symbolic link leads outside the gallery (to {escape_name(str(target))}); not followed"
            if target.is_dir():
                return "symbolic link to a folder; not followed"
        try:
            mode = os.stat(full).st_mode
        except OSError as error:
            return f"cannot read ({error.strerror or error})"
        if stat.S_ISDIR(mode):
            return None if not link else "symbolic link to a folder; not followed"
        if not stat.S_ISREG(mode):
            return "not a regular file (a device, pipe or socket)"
        return None

    def members(self) -> list[str]:
        """Every file (not only images), as posix paths relative to the archive root."""
        if self.is_zip:
            return [n for n in self._zip().namelist() if not n.endswith("/")]
        return [escape_name(name) for name in _walk_files(str(self.path), "")]

    def names(self) -> list[str]:
        """Sorted posix paths (escaped, see :func:`escape_name`) of every image file that can be read."""
        return list(self.scan().names)

    # ------------------------------------------------------------------ reading

    def read_bytes(self, name: str) -> bytes:
        """The bytes of one file or member (by its listed, escaped name).

        Raises:
            ImageReadError: naming the file, when it is missing, unreadable, larger than the cap or
                a corrupt zip member.
        """
        where = f"{self.path}/{name}"
        try:
            if self.is_zip:
                info = self._infos.get(name)
                if info is None:
                    info = self._zip().getinfo(name)
                if info.file_size > self.max_file_bytes:
                    raise ImageReadError(f"{where}: uncompressed size {info.file_size} bytes exceeds the cap of "
                                         f"{self.max_file_bytes} (possible zip bomb)")
                with self._zip().open(info) as handle:
                    return handle.read(self.max_file_bytes + 1)[: self.max_file_bytes + 1]
            real = self._real.get(name)
            if real is None:
                real = name if "\\x" not in name or (self.path / name).exists() else unescape_name(name)
            path = self.path / real
            size = path.stat().st_size
            if size > self.max_file_bytes:
                raise ImageReadError(f"{where}: {size} bytes exceeds the cap of {self.max_file_bytes}")
            with open(path, "rb") as handle:
                return handle.read()
        except ImageReadError:
            raise
        except KeyError as error:
            raise ImageReadError(f"{where}: no such member") from error
        except OSError as error:
            raise ImageReadError(f"{where}: cannot read ({error.strerror or error})") from error
        except Exception as error:  # zipfile: BadZipFile (bad CRC), zlib.error, NotImplementedError, RuntimeError
            raise ImageReadError(f"{where}: corrupt zip member ({error or type(error).__name__})") from error

    def read(self, name: str, color: bool = False) -> np.ndarray:
        """Decode one image: uint8 (H, W), or (H, W, 3) BGR when ``color``."""
        return decode_image(self.read_bytes(name), f"{self.path}/{name}", color=color, max_pixels=self.max_pixels)

    def read_many(self, names: Sequence[str], color: bool = False) -> list[np.ndarray]:
        return [self.read(n, color=color) for n in names]

    def __getstate__(self) -> dict:
        """Pickles without its open zip handles (they stay per process and thread): workers reopen
        the zip, and keep the listing (escaped names, checked members, caps)."""
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ImageArchive({str(self.path)!r})"


def _walk_files(folder: str, prefix: str):
    """Posix paths of the files under ``folder`` (links to folders not followed, so no loops), as plain strings.

    ``os.scandir`` instead of ``Path.rglob``: no Path object per file, so listing a million images
    costs their names' memory only.
    """
    with os.scandir(folder) as entries:
        for entry in entries:
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_files(entry.path, name + "/")
            elif entry.is_file():
                yield name


def read_image_file(path: str | os.PathLike, color: bool = False, max_pixels: int | None = None,
                    max_file_bytes: int | None = None) -> np.ndarray:
    """Decode a single image file on disk (see :func:`decode_image`); refuses folders, pipes and devices."""
    path = Path(path)
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    max_file_bytes = DEFAULT_MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes
    shown = escape_name(str(path))
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageReadError(f"{shown}: a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(f"{shown}: not a regular file (a device, pipe or socket)")
        if info.st_size > max_file_bytes:
            raise ImageReadError(f"{shown}: {info.st_size} bytes exceeds the cap of {max_file_bytes}")
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"{shown}: cannot read ({error.strerror or error})") from error
    return decode_image(data, shown, color=color, max_pixels=max_pixels)
