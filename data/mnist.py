"""MNIST-style IDX files (LeCun's format), plain or gzipped.

Header: two zero bytes, a type byte, a dimension count ``n``, then ``n`` big-endian uint32 sizes;
the data follow, big-endian. Gzip is detected by its magic bytes, not by the file name.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from oneshot.errors import CorruptFileError, InvalidInputError

IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def _load_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read ({error.strerror or error})") from error
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise CorruptFileError(f"{path}: corrupt or truncated gzip data ({error})") from error
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file.

    Returns:
        An array of the file's shape in native byte order: uint8, int8, int16, int32, float32 or
        float64 as the type byte says.
    Raises:
        ValueError: naming the file when it is unreadable, not IDX, truncated, or longer than its
            header says.
    """
    path = Path(path)
    data = _load_bytes(path)
    if len(data) < 4:
        raise CorruptFileError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise CorruptFileError(f"{path}: not an IDX file (magic {data[:4].hex()} does not start with 0000)")
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_TYPES)
        raise CorruptFileError(f"{path}: unknown IDX data type 0x{code:02x}; known: {known}")
    if ndim == 0:
        raise CorruptFileError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptFileError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise CorruptFileError(f"{path}: truncated: shape {shape} needs {expected} data bytes, found {found}")
    if found > expected:
        raise CorruptFileError(f"{path}: {found - expected} unexpected bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_mnist(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-style pair of IDX files.

    Returns:
        images uint8 (N, H, W) ((N, 28, 28) for MNIST; ink bright on black, as stored) and
        labels int64 (N,).
    Raises:
        ValueError: naming the file when either is malformed, images are not uint8 (N, H, W),
            labels are not integers (N,), or the counts differ.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InvalidInputError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"{labels_path}: expected integer labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise InvalidInputError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return images, labels.astype(np.int64)
