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
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if image.ndim != 2 or image.size == 0:
            raise InvalidInputError(f"expected an image (H, W) or (H, W, 3), got shape {image.shape}")
        gray = image.astype(np.float32) / 255.0
        invert = self.invert
        if invert == "auto":
            invert = float(np.median(border_pixels(gray))) > 0.5
        if self.threshold is not None:
            level = self.threshold / 255.0
            gray = (gray >= level if not invert else gray < level).astype(np.float32)
        elif invert:
            gray = 1.0 - gray
        return gray

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
        ink = self.ink(image)
        if self.crop_to_ink:
            rows = np.flatnonzero(ink.max(axis=1) > 0.2)
            cols = np.flatnonzero(ink.max(axis=0) > 0.2)
            if rows.size and cols.size:
                ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
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
        return np.clip(canvas, 0.0, 1.0)

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


def border_pixels(image: np.ndarray) -> np.ndarray:
    """The outermost rows and columns of a 2-D image (H, W), as one 1-D array: the paper's level."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


KINDS = ("handwriting", "photo", "face")
FACE_MODES = ("detect", "all", "whole")
_NEW_DEFAULTS = {"kind": "handwriting", "channels": 1, "mean": None, "std": None, "width": None, "faces": "detect"}
