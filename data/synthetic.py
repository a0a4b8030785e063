"""Deterministic synthetic alphabets: the project's built-in stand-in for Omniglot.

Each alphabet draws a stroke *style* from the seed (how many strokes, straight or curvy, loops,
dots, grid-snapped corners, pen thickness, slant). Each character is a few strokes in a canonical
frame ``[-1, 1]^2``; each drawer renders it with its own jitter (affine transform, per-point noise,
per-stroke shifts, pen thickness). Images are dark ink (0) on white (255), like Omniglot.

Random streams are keyed by ``(seed, prefix, alphabet, character)``, so the first alphabets of a
larger set equal a smaller set made with the same arguments, and a different ``prefix`` gives
different drawings as well as different names.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from oneshot.atomic import atomic_folder
from oneshot.errors import InvalidInputError

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_BYTES = 4 << 30
_SAMPLES_PER_SEGMENT = 8
_EXTENT = 0.36  # canonical unit, as a fraction of the image side
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
_REJECT_SIMILARITY = 0.8  # max cosine between two characters' canonical renderings
_TRIES = 12
_POINT_NOISE = 0.10  # drawer jitter: per control point, canonical units
_STROKE_NOISE = 0.12  # drawer jitter: per stroke offset, canonical units
_MAX_SHIFT = 0.08  # drawer jitter: translation, fraction of the side


@dataclass
class _Style:
    """An alphabet's stroke style (canonical units; thickness in pixels at size 105)."""

    min_strokes: int
    max_strokes: int
    smooth_p: float
    max_points: int
    step: float
    max_turn: float
    grid: bool
    loop_p: float
    dot_p: float
    connect_p: float
    thickness: float
    aspect: float
    slant: float
    extent: float


@dataclass
class _Stroke:
    points: np.ndarray  # float64 (k, 2) control points, canonical frame
    smooth: bool
    closed: bool
    dot: bool = False


@dataclass
class SyntheticSet:
    """Synthetic alphabet images and their table.

    Attributes:
        images: uint8 (N, size, size), dark ink (0) on white (255); row ``i`` is ``table.id == i``.
        table: columns ``id`` (int64), ``path`` (``alphabet/character/CC_DD.png``), ``alphabet``,
            ``character``, ``drawer`` (int64, 1..drawers), ``label`` (``alphabet/character``),
            ``group`` (the alphabet).
    """

    images: np.ndarray
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.table)

    def read(self, paths=None) -> list[np.ndarray]:
        """Images by table path (all, in table order, when ``None``): uint8 (size, size) arrays."""
        if paths is None:
            return list(self.images)
        position = dict(zip(self.table["path"], self.table["id"]))
        out = []
        for path in paths:
            if path not in position:
                raise InvalidInputError(f"{path!r}: not a path of this synthetic set")
            out.append(self.images[position[path]])
        return out

    def write(self, folder: str | os.PathLike) -> Path:
        """Write every image as PNG at ``folder/<path>``, all or nothing.

        Images go to a temporary sibling folder that is renamed into place at the end, so a crash
        never leaves a half-written gallery at ``folder``.

        Returns:
            ``folder`` as a Path.
        Raises:
            ValueError: when ``folder`` exists and is not an empty folder.
        """
        folder = Path(folder)
        with atomic_folder(folder) as temporary:
            for path, image in zip(self.table["path"], self.images):
                target = temporary / path
                target.parent.mkdir(parents=True, exist_ok=True)
                ok, encoded = cv2.imencode(".png", image)
                if not ok:
                    raise InvalidInputError(f"{path}: PNG encoding failed")
                target.write_bytes(encoded.tobytes())
        return folder


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def make_alphabets(
    n_alphabets: int,
    characters_per_alphabet: int = 20,
    drawers: int = 20,
    size: int = 105,
    seed: int = 0,
    prefix: str = "synth",
) -> SyntheticSet:
    """Generate ``n_alphabets * characters_per_alphabet * drawers`` character drawings.

    Args:
        n_alphabets: number of alphabets, each with its own stroke style.
        characters_per_alphabet: characters in each alphabet.
        drawers: drawings of each character, each by a different simulated drawer.
        size: image side in pixels.
        seed: random seed; same arguments give byte-identical images.
        prefix: alphabet name prefix (``<prefix>_a01``...); also changes the drawings.

    Returns:
        A :class:`SyntheticSet` with images uint8 (N, size, size), ordered by alphabet, character,
        drawer.
    Raises:
        ValueError: on a non-positive count, ``size < 16``, a negative or non-int ``seed``, a
            ``prefix`` that is not a plain file name, or a set larger than 4 GiB.
    """
    n_alphabets = _check_int("n_alphabets", n_alphabets, 1)
    characters_per_alphabet = _check_int("characters_per_alphabet", characters_per_alphabet, 1)
    drawers = _check_int("drawers", drawers, 1)
    size = _check_int("size", size, 16)
    seed = _check_int("seed", seed, 0)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise InvalidInputError(f"prefix must be a plain name of letters, digits, '_', '.', '-', got {prefix!r}")
    count = n_alphabets * characters_per_alphabet * drawers
    if count * size * size > _MAX_BYTES:
        raise InvalidInputError(f"{count} images of {size}x{size} exceed 4 GiB; ask for fewer or smaller")

    key = zlib.crc32(prefix.encode("utf-8"))
    images = np.empty((count, size, size), dtype=np.uint8)
    a_width = max(2, len(str(n_alphabets)))
    c_width = max(2, len(str(characters_per_alphabet)))
    d_width = max(2, len(str(drawers)))
    rows = []
    for a in range(n_alphabets):
        alphabet = f"{prefix}_a{a + 1:0{a_width}d}"
        style = _style(np.random.default_rng([seed, key, a]))
        references: list[np.ndarray] = []
        for c in range(characters_per_alphabet):
            rng = np.random.default_rng([seed, key, a, c + 1])
            strokes = _distinct_character(style, rng, references)
            start = (a * characters_per_alphabet + c) * drawers
            images[start : start + drawers] = _render_drawers(strokes, style, drawers, size, rng)
            character = f"char{c + 1:0{c_width}d}"
            for d in range(1, drawers + 1):
                path = f"{alphabet}/{character}/{c + 1:0{c_width}d}_{d:0{d_width}d}.png"
                rows.append((path, alphabet, character, d))
    table = pd.DataFrame(rows, columns=["path", "alphabet", "character", "drawer"])
    table["drawer"] = table["drawer"].astype("int64")
    table["label"] = table["alphabet"] + "/" + table["character"]
    table["group"] = table["alphabet"]
    table.insert(0, "id", np.arange(len(table), dtype=np.int64))
    return SyntheticSet(images=images, table=table)


def _style(rng: np.random.Generator) -> _Style:
    min_strokes = int(rng.integers(1, 3))
    return _Style(
        min_strokes=min_strokes,
        max_strokes=int(rng.integers(min_strokes + 1, 5)),
        smooth_p=float(rng.choice([0.05, 0.5, 0.95])),
        max_points=int(rng.integers(3, 6)),
        step=float(rng.uniform(0.6, 1.1)),
        max_turn=float(np.deg2rad(rng.uniform(60, 160))),
        grid=bool(rng.random() < 0.35),
        loop_p=float(rng.uniform(0.0, 0.35)),
        dot_p=float(rng.uniform(0.0, 0.3)),
        connect_p=float(rng.uniform(0.3, 0.8)),
        thickness=float(rng.uniform(2.0, 3.5)),
        aspect=float(rng.uniform(0.8, 1.2)),
        slant=float(rng.choice([0.0, rng.uniform(-0.25, 0.25)])),
        extent=float(rng.uniform(0.7, 0.9)),
    )


def _distinct_character(style: _Style, rng: np.random.Generator, references: list[np.ndarray]) -> list[_Stroke]:
    """A character unlike the alphabet's earlier ones (up to ``_TRIES`` attempts); appends its thumbnail."""
    best, best_score, best_thumb = None, np.inf, None
    for _ in range(_TRIES):
        strokes = _character(style, rng)
        thumb = _thumbnail(strokes)
        score = max((float(thumb @ r) for r in references), default=0.0)
        if score < best_score:
            best, best_score, best_thumb = strokes, score, thumb
        if score <= _REJECT_SIMILARITY:
            break
    references.append(best_thumb)
    return best


def _thumbnail(strokes: list[_Stroke], size: int = 24) -> np.ndarray:
    """Unit-norm float32 (size*size,) blurred rendering of the canonical character."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    for stroke in strokes:
        _draw(canvas, _curve_matrix(len(stroke.points), stroke.smooth, stroke.closed) @ stroke.points
              * (size * _EXTENT) + size / 2, stroke, 2, 255)
    vector = cv2.GaussianBlur(canvas.astype(np.float32), (5, 5), 1.5).ravel()
    return vector / max(float(np.linalg.norm(vector)), 1e-6)


def _character(style: _Style, rng: np.random.Generator) -> list[_Stroke]:
    """A few strokes, centred and scaled to fill the canonical frame."""
    n_strokes = int(rng.integers(style.min_strokes, style.max_strokes + 1))
    strokes: list[_Stroke] = []
    while len(strokes) < n_strokes or sum(len(s.points) for s in strokes) < 4:
        anchors = np.concatenate([s.points for s in strokes]) if strokes else None
        if anchors is not None and rng.random() < style.connect_p:
            start = anchors[rng.integers(len(anchors))]
        else:
            start = rng.uniform(-0.7, 0.7, size=2)
        if rng.random() < style.loop_p:
            strokes.append(_loop(start, rng))
        else:
            strokes.append(_open_stroke(start, style, rng))
    if rng.random() < style.dot_p:
        strokes.append(_Stroke(rng.uniform(-0.8, 0.8, size=(1, 2)), smooth=False, closed=False, dot=True))
    for stroke in strokes:
        stroke.points = stroke.points * [style.aspect, 1.0]
        stroke.points[:, 0] += style.slant * stroke.points[:, 1]
    drawn = np.concatenate([_curve_matrix(len(s.points), s.smooth, s.closed) @ s.points for s in strokes])
    low, high = drawn.min(axis=0), drawn.max(axis=0)
    centre = (low + high) / 2
    scale = style.extent * rng.uniform(0.85, 1.0) / max(float((high - low).max()) / 2, 0.2)
    for stroke in strokes:
        stroke.points = (stroke.points - centre) * scale
    return strokes


def _open_stroke(start: np.ndarray, style: _Style, rng: np.random.Generator) -> _Stroke:
    smooth = bool(rng.random() < style.smooth_p)
    n_points = int(rng.integers(2, style.max_points + 1)) + (1 if smooth else 0)
    heading = rng.uniform(-np.pi, np.pi)
    points = [np.asarray(start, dtype=np.float64)]
    for _ in range(n_points - 1):
        heading += rng.uniform(-style.max_turn, style.max_turn)
        length = style.step * rng.uniform(0.5, 1.2) * (0.7 if smooth else 1.0)
        step = length * np.array([np.cos(heading), np.sin(heading)])
        nxt = points[-1] + step
        # turn back inside the frame rather than leave it
        for axis in range(2):
            if abs(nxt[axis]) > 0.85:
                step[axis] = -step[axis]
                heading = np.arctan2(step[1], step[0])
        nxt = np.clip(points[-1] + step, -0.85, 0.85)
        if style.grid and not smooth:
            nxt = np.round(nxt * 2.0) / 2.0
        points.append(nxt)
    return _Stroke(np.array(points), smooth=smooth, closed=False)


def _loop(start: np.ndarray, rng: np.random.Generator) -> _Stroke:
    radius = rng.uniform(0.2, 0.45, size=2)
    centre = np.clip(start, -0.85 + radius, 0.85 - radius)
    n_points = int(rng.integers(4, 7))
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    angles += rng.normal(0, 0.2, size=n_points)
    wobble = rng.uniform(0.8, 1.2, size=(n_points, 1))
    points = centre + wobble * radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return _Stroke(points, smooth=True, closed=True)


@lru_cache(maxsize=64)
def _curve_matrix(k: int, smooth: bool, closed: bool) -> np.ndarray:
    """Linear map from k control points to the drawn polyline: float64 (samples, k).

    Smooth strokes are uniform Catmull-Rom splines through their control points; others are the
    control points themselves.
    """
    if not smooth or k < 3:
        return np.eye(k)
    n_segments = k if closed else k - 1
    t = np.arange(_SAMPLES_PER_SEGMENT) / _SAMPLES_PER_SEGMENT
    basis = 0.5 * np.stack(
        [-t**3 + 2 * t**2 - t, 3 * t**3 - 5 * t**2 + 2, -3 * t**3 + 4 * t**2 + t, t**3 - t**2], axis=1
    )  # (S, 4) weights of p[i-1], p[i], p[i+1], p[i+2]
    rows = []
    for i in range(n_segments):
        block = np.zeros((_SAMPLES_PER_SEGMENT, k))
        for j, offset in enumerate((-1, 0, 1, 2)):
            index = (i + offset) % k if closed else min(max(i + offset, 0), k - 1)
            block[:, index] += basis[:, j]
        rows.append(block)
    if not closed:
        last = np.zeros((1, k))
        last[0, -1] = 1.0
        rows.append(last)
    return np.concatenate(rows)


def _render_drawers(
    strokes: list[_Stroke], style: _Style, drawers: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Render one character by ``drawers`` jittered hands: uint8 (drawers, size, size)."""
    out = np.full((drawers, size, size), 255, dtype=np.uint8)
    angle = np.deg2rad(rng.uniform(-12, 12, size=drawers))
    scale = rng.uniform(0.85, 1.15, size=drawers)[:, None] * rng.uniform(0.93, 1.07, size=(drawers, 2))
    shear = rng.uniform(-0.15, 0.15, size=drawers)
    shift = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=(drawers, 2)) * size
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (D, 2, 2)
    shearing = np.zeros((drawers, 2, 2))
    shearing[:, 0, 0] = shearing[:, 1, 1] = 1.0
    shearing[:, 0, 1] = shear
    linear = rotation @ shearing * scale[:, :, None] * (size * _EXTENT)  # (D, 2, 2)
    centre = size / 2 + shift  # (D, 2)
    thickness = style.thickness * rng.uniform(0.7, 1.4, size=drawers) * size / 105
    for stroke in strokes:
        k = len(stroke.points)
        noisy = (
            stroke.points[None]
            + rng.normal(0, _POINT_NOISE, size=(drawers, k, 2))
            + rng.normal(0, _STROKE_NOISE, size=(drawers, 1, 2))
        )
        curve = _curve_matrix(k, stroke.smooth, stroke.closed) @ noisy  # (D, S, 2)
        pixels = curve @ linear.transpose(0, 2, 1) + centre[:, None, :]
        for d in range(drawers):
            _draw(out[d], pixels[d], stroke, thickness[d], 0)
    return out


def _draw(canvas: np.ndarray, pixels: np.ndarray, stroke: _Stroke, thickness: float, color: int) -> None:
    """Draw one stroke's polyline, float (S, 2) pixel (x, y), onto ``canvas`` in place."""
    fixed = np.round(pixels * (1 << _SHIFT)).astype(np.int32)
    width = max(1, int(round(thickness)))
    if stroke.dot:
        radius = max(1, int(round(max(thickness, 2.5) * (1 << _SHIFT))))
        cv2.circle(canvas, tuple(int(v) for v in fixed[0]), radius, color, -1, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(canvas, [fixed.reshape(-1, 1, 2)], stroke.closed, color, width, cv2.LINE_AA, _SHIFT)
