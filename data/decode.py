"""Decode untrusted image bytes safely: one function, one error type.

:func:`decode_image` turns the bytes of any common image file into a uint8 array, or raises
:class:`~oneshot.errors.ImageReadError` naming the file and the reason. Nothing else escapes,
whatever the bytes (fuzzed in ``tests/test_data_decode_fuzz.py``). On the way it:

* refuses empty files, and files that are not images (HTML, text, random bytes) by their content,
  whatever their extension says;
* reads the width and height from the header first and refuses images above a pixel-count cap
  (a decompression bomb: a few kB of PNG can declare 100 000 x 100 000 pixels);
* applies the EXIF orientation (phone photos stored sideways);
* takes the first frame of multi-frame GIF and TIFF files;
* maps 16-bit, 32-bit and float images to 8 bits, palettes and CMYK to RGB;
* composites transparency onto a background that contrasts with the opaque pixels, so strokes
  drawn only in the alpha channel stay visible (naively dropping alpha turns them black on black).

Plain 8-bit grey or RGB PNG files (most drawings) are decoded by OpenCV after their header is
checked (faster, and the same pixels as before); everything else by Pillow, which reads the header
lazily, so the cap is checked before any pixel is decoded. The output follows OpenCV's conventions: grey (H, W), or BGR (H, W, 3)
when ``color``.
"""
from __future__ import annotations

import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from oneshot.errors import ImageReadError

#: Largest image accepted, in pixels (width x height): 64 megapixels, far above any scan or photo
#: a one-shot gallery needs, and about 64 MB of grey pixels once decoded.
DEFAULT_MAX_PIXELS = 64_000_000

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_SNIFF = (
    (b"<!doctype html", "an HTML page"), (b"<html", "an HTML page"), (b"<?xml", "an XML or SVG file"),
    (b"<svg", "an SVG drawing"), (b"{", "a JSON or text file"), (b"%pdf", "a PDF document"),
    (b"pk\x03\x04", "a zip archive"),
)


def describe_bytes(data: bytes) -> str:
    """A short guess at what non-image bytes are, for reject reasons ("an HTML page", ...)."""
    head = data[:256].lstrip().lower()
    for magic, what in _SNIFF:
        if head.startswith(magic):
            return what
    try:
        data[:4096].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised bytes"


def decode_image(data: bytes, name: str, color: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the bytes of one image file.

    Args:
        data: the file's bytes.
        name: how to name the file in errors (its path).
        color: return BGR (H, W, 3) instead of grey (H, W).
        max_pixels: refuse images with more pixels than this (width x height).
    Returns:
        uint8 C-contiguous array (H, W), or (H, W, 3) BGR when ``color``.
    Raises:
        ImageReadError: naming ``name`` and the reason (empty, not an image, truncated or corrupt,
            above the pixel cap).
    """
    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    fast = _decode_plain_png(data, name, color, max_pixels)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF warnings: our cap decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageReadError(f"{name}: image declares size {width}x{height}")
            if width * height > max_pixels:
                raise ImageReadError(f"{name}: {width}x{height} = {width * height} pixels exceeds the cap of "
                                     f"{max_pixels} (possible decompression bomb)")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            image = _upright(image)
            return _to_array(image, color)
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{name}: not an image ({describe_bytes(data)})") from error
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: too many pixels; exceeds the cap (possible decompression bomb)") from error
    except MemoryError as error:
        raise ImageReadError(f"{name}: too large to decode") from error
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, struct.error... on bad bytes
        reason = str(error) or type(error).__name__
        raise ImageReadError(f"{name}: truncated or corrupt image ({reason})") from error


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_plain_png(data: bytes, name: str, color: bool, max_pixels: int) -> np.ndarray | None:
    """OpenCV's faster decoder for the common case: an 8-bit grey or RGB PNG without transparency,
    EXIF or animation (read from the IHDR chunk, no Pillow needed); None when the image needs the
    careful path (which also says why a damaged one cannot be read)."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    if depth > 8 or colour_type not in (0, 2) or width < 1 or height < 1:
        return None
    if width * height > max_pixels:
        raise ImageReadError(f"{name}: {width}x{height} = {width * height} pixels exceeds the cap of "
                             f"{max_pixels} (possible decompression bomb)")
    if b"tRNS" in data or b"eXIf" in data or b"acTL" in data:
        return None  # transparency, orientation or frames: Pillow handles them (false alarms only cost time)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if decoded is None or decoded.dtype != np.uint8 or decoded.shape[:2] != (height, width):
        return None
    return np.ascontiguousarray(decoded)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any; a damaged EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - bad EXIF only loses the rotation
        return image


def _to_array(image: Image.Image, color: bool) -> np.ndarray:
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2) if color else grey)
    if mode in _TRANSPARENT_MODES:
        rgb = _composite(np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0)
        image = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")
    elif mode not in ("1", "L", "RGB"):
        image = image.convert("RGB")  # palette, CMYK, YCbCr, LAB, HSV
    if color:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
    return np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8))


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit integers by their full range; 32-bit integers and floats stretched min to max."""
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low) if high > low else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite(rgba: np.ndarray) -> np.ndarray:
    """RGBA in [0, 1] (H, W, 4) -> RGB (H, W, 3) over white, or over black when the opaque pixels are light.

    Drawings saved with transparency keep their strokes in the alpha channel; their colour under a
    fully transparent pixel is arbitrary (often black, like the strokes). The background is chosen
    to contrast with what is opaque, so the strokes stay visible either way.
    """
    alpha = rgba[:, :, 3:4]
    weight = float(alpha.sum())
    if weight > 0:
        luminance = rgba[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        opaque_light = float((luminance * alpha[:, :, 0]).sum()) / weight > 0.5
    else:
        opaque_light = False
    background = 0.0 if opaque_light else 1.0
    return rgba[:, :, :3] * alpha + background * (1.0 - alpha)
