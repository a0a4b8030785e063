"""The preprocessing recipe, saved with every model so a model file alone encodes correctly.

Two kinds of image:

* ``kind="handwriting"`` follows the reference notebook's ``init_image``: grayscale, optional
  binary threshold, invert so ink is bright on black, optional crop to the ink's bounding box,
  aspect-preserving resize into the input canvas (INTER_AREA), centre on a zero canvas, scale to
  [0, 1]. One channel.
* ``kind="photo"`` (scans, objects): no binarisation or inversion; resize to cover the
  canvas and centre-crop; ``channels=3`` keeps colour (RGB), ``1`` converts to grey; then
  per-channel normalisation ``(x - mean) / std`` (statistics measured on the training images).
* ``kind="face"``: find the face, align and crop it (:mod:`oneshot.embedder.faces`: dlib's
  detector and 5-point landmarks, a 150x150 RGB chip), then normalise as photos are. A photo
  without a face is an error (:class:`~oneshot.embedder.faces.NoFaceError`), never the whole
  picture; ``faces="whole"`` takes each image as one face crop (galleries already cropped).

The canvas is ``size`` x ``size``, or ``size`` high and ``width`` wide for wide (or tall) images
such as signatures and words, whose ink a square canvas would squash into a few rows.

Fields added after the first models (photo fields, ``width``) are left out of ``to_dict`` while at
their defaults, so handwriting models (and their fingerprints) read exactly as before.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import cv2
import numpy as np

from oneshot.errors import InvalidInputError


@dataclass(frozen=True)
class Recipe:
    """How raw images become network input.

    Attributes:
        size: side of the square input, in pixels; its height when ``width`` is set.
        threshold: gray level below which a pixel is ink (binarise); ``None`` keeps gray levels.
        invert: ``"auto"`` inverts images whose border is bright (dark ink on light paper),
            ``True`` always, ``False`` never.
        crop_to_ink: crop to the bounding box of the ink before resizing.
        margin: with ``crop_to_ink``, blank border kept around the ink, as a fraction of the
            input's shorter side.
        kind: ``"handwriting"`` or ``"photo"``.
        channels: 1 (grey) or 3 (RGB, photos only).
        mean, std: per-channel normalisation of photos.
        width: width of the input in pixels; ``None`` for a square input.
        faces: face recipe only: ``"detect"`` (the largest face of each photo), ``"all"`` (every face
            found, each its own row in bulk jobs) or ``"whole"`` (the image is a face crop).
    """

    size: int = 28
    threshold: int | None = None
    invert: bool | str = "auto"
    crop_to_ink: bool = False
    margin: float = 0.1
    kind: str = "handwriting"
    channels: int = 1
    mean: tuple | None = None
    std: tuple | None = None
    width: int | None = None
    faces: str = "detect"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidInputError(f"recipe kind must be one of {KINDS}, got {self.kind!r}")
        if self.faces not in FACE_MODES:
            raise InvalidInputError(f"faces must be one of {FACE_MODES}, got {self.faces!r}")
        if self.kind == "face" and (self.channels != 3 or self.width is not None):
            raise InvalidInputError("the face recipe makes square RGB chips: channels 3 and no width")
        if self.channels not in (1, 3) or (self.kind == "handwriting" and self.channels != 1):
            raise InvalidInputError(f"channels must be 1, or 3 for photos; got {self.channels!r} for {self.kind}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != self.channels:
                    raise InvalidInputError(f"recipe {name} needs {self.channels} values, got {value}")
                object.__setattr__(self, name, value)
        if self.std is not None and min(self.std) <= 0:
            raise InvalidInputError(f"recipe std must be positive, got {self.std}")
        if not isinstance(self.size, int) or self.size < 8:
            raise InvalidInputError(f"size must be an int >= 8, got {self.size!r}")
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 8):
            raise InvalidInputError(f"width must be an int >= 8 or None, got {self.width!r}")
        if self.threshold is not None and not 0 < int(self.threshold) < 256:
            raise InvalidInputError(f"threshold must be in 1..255 or None, got {self.threshold!r}")
        if self.invert not in (True, False, "auto"):
            raise InvalidInputError(f"invert must be True, False or 'auto', got {self.invert!r}")
        if not 0 <= self.margin < 0.5:
            raise InvalidInputError(f"margin must be in [0, 0.5), got {self.margin!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.size, self.width or self.size

    def to_dict(self) -> dict:
        """The fields, without the photo-only ones that are at their defaults (stable fingerprints)."""
        out = asdict(self)
        for name, default in _NEW_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        for name in ("mean", "std"):
            if out.get(name) is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise InvalidInputError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**config)

    def ink(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W) or (H, W, 3) -> float32 (H, W) in [0, 1], ink bright on black."""
        grey = self._grey(image)
        return ink_levels(grey, self.threshold, self._inverts(grey))

    def _grey(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if image.ndim != 2 or image.size == 0:
            raise InvalidInputError(f"expected an image (H, W) or (H, W, 3), got shape {image.shape}")
        return image

    def _inverts(self, grey: np.ndarray) -> bool:
        """Whether the ink is dark on light paper: ``invert``, or with ``"auto"`` whether the median
        border level, read as grey levels / 255 in float32, is above 0.5."""
        if self.invert != "auto":
            return bool(self.invert)
        return paper_level(grey) > 0.5

    def photo(self, image: np.ndarray) -> np.ndarray:
        """A photo: uint8 (H, W) or (H, W, 3) BGR -> float32 (channels, height, width), normalised."""
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[2] != 3):
            raise InvalidInputError(f"expected an image (H, W) or (H, W, 3), got shape {image.shape}")
        if self.channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        (out_h, out_w), (height, width) = self.shape, image.shape[:2]
        scale = max(out_h / height, out_w / width)
        new_h, new_w = max(out_h, int(round(height * scale))), max(out_w, int(round(width * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        crop = resized[top : top + out_h, left : left + out_w].astype(np.float32) / 255.0
        planes = crop[None] if crop.ndim == 2 else np.transpose(crop, (2, 0, 1))
        if self.mean is not None:
            planes = planes - np.asarray(self.mean, np.float32)[:, None, None]
        if self.std is not None:
            planes = planes / np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray(planes, dtype=np.float32)

    def face(self, image: np.ndarray) -> tuple[np.ndarray, str]:
        """A face photo -> (float32 (3, size, size) normalised chip, a note naming the face used when there were several)."""
        from oneshot.embedder.faces import face_finder

        found = face_finder().face(image, whole=self.faces == "whole")
        return self.chip_planes(found.chip), found.note

    def chip_planes(self, chip: np.ndarray) -> np.ndarray:
        """An aligned RGB face chip (150, 150, 3) -> float32 (3, size, size), normalised."""
        return self.photo(cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Preprocess one image: uint8 (H, W) or (H, W, 3) -> float32 (height, width) in [0, 1]
        (handwriting), or (channels, height, width) normalised (photo, face)."""
        if self.kind == "photo":
            return self.photo(image)
        if self.kind == "face":
            return self.face(image)[0]
        grey = self._grey(image)
        invert = self._inverts(grey)
        if self.crop_to_ink:  # the ink's bounding box found on the grey levels, the crop alone turned to ink
            x, y, w, h = cv2.boundingRect(ink_mask(grey, self.threshold, invert))
            if w and h:
                grey = grey[y : y + h, x : x + w]
        ink = ink_levels(grey, self.threshold, invert)
        out_h, out_w = self.shape
        border = 2 * int(round(self.margin * min(out_h, out_w))) if self.crop_to_ink else 0
        height, width = ink.shape
        scale = min((out_h - border) / height, (out_w - border) / width)
        new_h = max(1, min(out_h, int(round(height * scale))))
        new_w = max(1, min(out_w, int(round(width * scale))))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(ink, (new_w, new_h), interpolation=interpolation)
        canvas = np.zeros((out_h, out_w), dtype=np.float32)
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = resized
        return np.clip(canvas, 0.0, 1.0, out=canvas)

    def batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocess many images: -> float32 (N, channels, height, width), C-contiguous."""
        out = np.empty((len(images), self.channels, *self.shape), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out

    def prepare(self, images: Sequence[np.ndarray]) -> "Prepared":
        """Preprocess many images, leaving out those the recipe cannot use (a photo without a face)."""
        if self.kind != "face":
            return Prepared(self.batch(images), np.arange(len(images)), {}, {})
        from oneshot.embedder.faces import NoFaceError, face_finder

        if self.faces == "all":  # every face its own row, largest first; face numbers from 1
            planes, kept, numbers, reasons = [], [], [], {}
            for i, image in enumerate(images):
                found = face_finder().faces(image)
                if not found:
                    reasons[i] = "no face found"
                for number, face in enumerate(found, start=1):
                    planes.append(self.chip_planes(face.chip))
                    kept.append(i)
                    numbers.append(number)
            pixels = np.stack(planes) if planes else np.zeros((0, self.channels, *self.shape), np.float32)
            return Prepared(np.ascontiguousarray(pixels, dtype=np.float32), np.asarray(kept, dtype=np.int64), reasons,
                            {}, np.asarray(numbers, dtype=np.int64))
        out = np.empty((len(images), self.channels, *self.shape), dtype=np.float32)
        kept, reasons, notes = [], {}, {}
        for i, image in enumerate(images):
            try:
                out[len(kept)], note = self.face(image)
            except NoFaceError as error:
                reasons[i] = str(error)
                continue
            if note:
                notes[i] = note
            kept.append(i)
        return Prepared(out[: len(kept)], np.asarray(kept, dtype=np.int64), reasons, notes)


@dataclass(frozen=True)
class Prepared:
    """What :meth:`Recipe.prepare` made of n images.

    Attributes:
        pixels: float32 (k, C, H, W) for the k usable images, in order.
        kept: int64 (k,) their positions among the n.
        reasons: position -> why the recipe could not use that image (``"no face found"``).
        notes: position -> a remark on a used image (which of several faces).
        face: with ``faces="all"``, int64 (k,) the face number (1 = largest) of each pixel row; else None.
    """

    pixels: np.ndarray
    kept: np.ndarray
    reasons: dict
    notes: dict
    face: np.ndarray | None = None


def ink_levels(grey: np.ndarray, threshold: int | None, invert: bool) -> np.ndarray:
    """uint8 grey levels (any shape) -> float32 ink in [0, 1]: binarised at ``threshold`` or scaled
    to [0, 1], then inverted when ``invert`` (ink bright on black)."""
    levels = grey.astype(np.float32) / 255.0
    if threshold is not None:
        cut = threshold / 255.0
        return (levels >= cut if not invert else levels < cut).astype(np.float32)
    return 1.0 - levels if invert else levels


INK_LEVEL = 0.2  # ink above this counts towards the crop's bounding box


@functools.cache
def _ink_cut(threshold: int | None, invert: bool) -> tuple[str, int]:
    """Which grey levels :func:`ink_levels` maps above :data:`INK_LEVEL`, as ``("below", c)``
    (levels < c) or ``("from", c)`` (levels >= c); the mapping is monotone, so one cut says it."""
    inked = np.flatnonzero(ink_levels(np.arange(256, dtype=np.uint8), threshold, invert) > INK_LEVEL)
    if inked.size == 0:
        return "below", 0
    if inked[0] == 0 and inked.size == inked[-1] + 1:
        return "below", int(inked[-1]) + 1
    if inked[-1] == 255 and inked.size == 256 - inked[0]:
        return "from", int(inked[0])
    raise AssertionError(f"ink levels not monotone for threshold={threshold}, invert={invert}")  # pragma: no cover


def ink_mask(grey: np.ndarray, threshold: int | None, invert: bool) -> np.ndarray:
    """uint8 (H, W) grey levels -> uint8 (H, W), 1 where the ink is above :data:`INK_LEVEL`, found
    on the grey levels themselves (no float image is made; other dtypes take the float route)."""
    if grey.dtype != np.uint8:
        return (ink_levels(grey, threshold, invert) > INK_LEVEL).view(np.uint8)
    side, cut = _ink_cut(threshold, invert)
    mask = grey < cut if side == "below" else grey >= cut
    return mask.view(np.uint8)


_GREY_LEVELS = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0


def paper_level(grey: np.ndarray) -> float:
    """The median of a uint8 (H, W) image's border, in grey levels / 255: the value ``np.median``
    gives on the border made float32 (the middle two levels' float32 mean), without converting
    the image."""
    if grey.dtype != np.uint8:
        return float(np.median(border_pixels(grey.astype(np.float32) / 255.0)))
    border = np.sort(border_pixels(grey))
    middle = border.size // 2
    if border.size % 2:
        return float(_GREY_LEVELS[border[middle]])
    return float((_GREY_LEVELS[border[middle - 1]] + _GREY_LEVELS[border[middle]]) / 2)


def border_pixels(image: np.ndarray) -> np.ndarray:
    """The outermost rows and columns of a 2-D image (H, W), as one 1-D array: the paper's level."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


KINDS = ("handwriting", "photo", "face")
FACE_MODES = ("detect", "all", "whole")
_NEW_DEFAULTS = {"kind": "handwriting", "channels": 1, "mean": None, "std": None, "width": None, "faces": "detect"}
