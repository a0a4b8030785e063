"""The shipped face model: dlib's face ResNet converted once into the product's model format.

``python -m oneshot.embedder.face_model SRC.dat OUT.safetensors`` reads dlib's
``dlib_face_recognition_resnet_model_v1.dat`` (``pip install face-recognition-models`` has it)
without dlib, and writes a model file (safetensors + recipe + fingerprint) whose vectors match
dlib's own to float error (tests/test_face_model.py checks this where dlib is installed).
The recipe is ``kind="face"``: dlib's detector, 5-point alignment and a 150x150 chip, then
``(pixel - mean) / 256`` per RGB channel as dlib's input layer does; the head L2-normalises, so
the index searches by cosine.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from oneshot.embedder.artifact import FACE_MODEL, save_model
from oneshot.embedder.dlib_format import read_dlib_face_resnet
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe

SOURCE = "dlib_face_recognition_resnet_model_v1.dat (Davis King, dlib-models; CC0 1.0), from face-recognition-models 0.3.0"


def face_recipe(means: list[float], faces: str = "detect") -> Recipe:
    """The face recipe for dlib's input means (0-255 levels, RGB)."""
    return Recipe(size=150, kind="face", channels=3, invert=False, margin=0.0, faces=faces,
                  mean=[round(m / 255.0, 6) for m in means], std=[256.0 / 255.0] * 3)


def convert_dlib_face(source: str | os.PathLike, out: str | os.PathLike = FACE_MODEL) -> Path:
    """Write dlib's face ResNet at ``source`` as a oneshot model file at ``out``; returns ``out``."""
    source = Path(source)
    state, means = read_dlib_face_resnet(source)
    model = Embedder(backbone="face-resnet29", dim=None, head="normalized", recipe=face_recipe(means))
    model.backbone.load_state_dict(state)
    info = {
        "source": SOURCE,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "licence": "CC0 1.0 Universal (public domain)",
        "command": f"python -m oneshot.embedder.face_model {source.name} {Path(out).name}",
        "trained_on": "about 3 million faces (FaceScrub, VGG and web photos; LFW identities left out), by dlib's author",
    }
    return save_model(model.eval(), out, info=info)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m oneshot.embedder.face_model SRC.dat [OUT.safetensors]", file=sys.stderr)
        return 2
    print(convert_dlib_face(*args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
