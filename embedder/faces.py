"""Find, align and crop faces: a photo (H, W, 3) -> the face ResNet's 150x150 RGB chip.

Detection is dlib's HOG frontal face detector (its model is built into dlib; install with
``pip install 'oneshot[face]'``); alignment uses dlib's 5-point landmark model (eye corners and
nose, CC0, shipped in ``embedder/weights/face_landmarks_5.dat``) and ``dlib.get_face_chip``: the
face rotated upright and scaled to 150x150 with 25% padding, as dlib's face ResNet was trained.

How a face is looked for (:class:`FaceFinder`): the photo is scaled down to at most
:data:`DETECT_SIDE` pixels on its longer side, searched once, and searched again at twice the
size when nothing was found and the photo is small. A photo without a face raises
:class:`NoFaceError` (a bulk job records it as a reject with that reason; nothing falls back to
the whole picture). Several faces: the largest is used and the result says so.

``whole=True`` is for galleries of photos that are already face crops (the crop is the face's
box): the landmarks are found inside the whole image and no detector runs.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from oneshot.errors import InvalidInputError, MissingDataError

LANDMARKS = Path(__file__).parent / "weights" / "face_landmarks_5.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DETECT_SIDE = 640        # longest side the detector searches (larger photos are scaled down first)
UPSAMPLE_BELOW = 400     # photos whose shorter side is under this are searched again at twice the size
FACE_EXTRA = "pip install 'oneshot[face]'"


class NoFaceError(InvalidInputError):
    """A photo in which no face was found."""


def _dlib():
    try:
        import dlib
    except ImportError as error:
        raise MissingDataError(f"the face recipe needs dlib's face detector: {FACE_EXTRA}") from error
    return dlib


@dataclass(frozen=True)
class Face:
    """One face: its 150x150 RGB chip, its box (x, y, w, h) in the photo, and how many faces the photo had."""

    chip: np.ndarray
    box: tuple[int, int, int, int]
    faces_in_photo: int
    score: float

    @property
    def note(self) -> str:
        """``""`` for a photo with one face, else which face was used."""
        if self.faces_in_photo <= 1:
            return ""
        x, y, w, h = self.box
        return f"{self.faces_in_photo} faces found; used the largest, at x={x} y={y} w={w} h={h}"


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) BGR -> contiguous uint8 (H, W, 3) RGB."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0 or (
            image.ndim == 3 and image.shape[2] != 3):
        raise InvalidInputError(f"expected a uint8 image (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    code = cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB
    return np.ascontiguousarray(cv2.cvtColor(image, code))


class FaceFinder:
    """Detects faces and cuts aligned chips; safe to share between threads (each has its own dlib objects)."""

    def __init__(self, landmarks: str | Path = LANDMARKS):
        self.landmarks = Path(landmarks)
        if not self.landmarks.is_file():
            raise MissingDataError(f"{self.landmarks}: the face landmark model is missing (reinstall oneshot)")
        self._local = threading.local()

    def _tools(self):
        tools = getattr(self._local, "tools", None)
        if tools is None:
            dlib = _dlib()
            tools = self._local.tools = (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(self.landmarks)))
        return tools

    def boxes(self, rgb: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
        """Every face box (x, y, w, h) found in an RGB photo with its detector score, largest first."""
        _, detector, _ = self._tools()
        height, width = rgb.shape[:2]
        scale = min(1.0, DETECT_SIDE / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(width * scale), round(height * scale)),
                                                    interpolation=cv2.INTER_AREA)
        found = []
        for upsample in (0, 1):
            if upsample and min(small.shape[:2]) >= UPSAMPLE_BELOW:
                break
            rects, scores, _ = detector.run(small, upsample, 0.0)
            found = [((r.left() / scale, r.top() / scale, r.width() / scale, r.height() / scale), float(s))
                     for r, s in zip(rects, scores)]
            if found:
                break
        found.sort(key=lambda item: -item[0][2] * item[0][3])
        return [(tuple(int(round(v)) for v in box), score) for box, score in found]

    def chip(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The aligned 150x150 RGB chip of the face in ``box``: uint8 (150, 150, 3)."""
        dlib, _, predictor = self._tools()
        x, y, w, h = box
        shape = predictor(rgb, dlib.rectangle(int(x), int(y), int(x + w - 1), int(y + h - 1)))
        return np.ascontiguousarray(dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def faces(self, image: np.ndarray, whole: bool = False) -> list[Face]:
        """Every face of a photo, largest first (``whole``: the photo is one face crop)."""
        rgb = as_rgb(image)
        if whole:
            height, width = rgb.shape[:2]
            return [Face(self.chip(rgb, (0, 0, width, height)), (0, 0, width, height), 1, 0.0)]
        found = self.boxes(rgb)
        return [Face(self.chip(rgb, box), box, len(found), score) for box, score in found]

    def face(self, image: np.ndarray, whole: bool = False) -> Face:
        """The photo's largest face; :class:`NoFaceError` when there is none."""
        if whole:
            return self.faces(image, whole=True)[0]
        rgb = as_rgb(image)
        found = self.boxes(rgb)
        if not found:
            raise NoFaceError("no face found")
        box, score = found[0]
        return Face(self.chip(rgb, box), box, len(found), score)


_shared: FaceFinder | None = None
_shared_lock = threading.Lock()


def face_finder() -> FaceFinder:
    """The process's one :class:`FaceFinder` (dlib's models load once per thread)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FaceFinder()
        return _shared
