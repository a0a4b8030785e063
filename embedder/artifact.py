"""Model files: weights in safetensors plus a JSON config, loadable without unpickling code.

``save_model(model, "m.safetensors")`` writes ``m.safetensors`` (the config JSON is also stored in
its header, so the weights file alone is enough) and ``m.json`` beside it for people to read.
Both are written under temporary names and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from oneshot.atomic import atomic_path
from oneshot.embedder.model import Embedder
from oneshot.errors import CorruptFileError, InvalidInputError, MissingDataError, ModelMismatchError

FORMAT = "oneshot-embedder"
FORMAT_VERSION = 1
DEFAULT_MODEL = Path(__file__).parent / "weights" / "default.safetensors"
#: The handwriting model shipped as the default before the block recipe (64 channels in every conv
#: block): kept so that stores and indexes embedded with it go on working, and its figures reproduce.
HANDWRITING_V1_MODEL = Path(__file__).parent / "weights" / "handwriting_v1.safetensors"
#: The block recipe's net, the default from the first change until the recipe took mirror images and twice
#: the steps (same net, same encoding cost): kept for the same reason, and as ``handwriting-ensemble``'s member.
HANDWRITING_V2_MODEL = Path(__file__).parent / "weights" / "handwriting_v2.safetensors"
#: A residual net and the default's recipe, both trained with mirror images as new classes, side by side
#: (``oneshot ensemble``): more accurate on handwriting, at 5.6 times the default's FLOPs an image; for
#: jobs where accuracy matters more than throughput, and as ``identify --rerank``'s second model.
HANDWRITING_ENSEMBLE_MODEL = Path(__file__).parent / "weights" / "handwriting_ensemble.safetensors"
#: The first ``handwriting-ensemble`` (``handwriting-v2`` beside an 800-step residual net): kept so that
#: stores and indexes embedded with it go on working, and its figures reproduce.
HANDWRITING_ENSEMBLE_V1_MODEL = Path(__file__).parent / "weights" / "handwriting_ensemble_v1.safetensors"
FACE_MODEL = Path(__file__).parent / "weights" / "face.safetensors"
#: The models shipped in the package, by the names ``--model`` takes.
SHIPPED_MODELS = {"handwriting": DEFAULT_MODEL, "default": DEFAULT_MODEL, "handwriting-v2": HANDWRITING_V2_MODEL,
                  "handwriting-v1": HANDWRITING_V1_MODEL,
                  "handwriting-ensemble": HANDWRITING_ENSEMBLE_MODEL,
                  "handwriting-ensemble-v1": HANDWRITING_ENSEMBLE_V1_MODEL, "face": FACE_MODEL}
#: The shipped handwriting models by name, newest first.
HANDWRITING_MODELS = {"default": DEFAULT_MODEL, "handwriting-v2": HANDWRITING_V2_MODEL,
                      "handwriting-v1": HANDWRITING_V1_MODEL}


def model_path(model: str | os.PathLike | None) -> Path:
    """The file of a model given as a path, a training run's folder (its ``model.safetensors``) or a
    shipped model's name (``None``: the default)."""
    if model is None:
        return DEFAULT_MODEL
    path = Path(model)
    if not path.exists() and str(model) in SHIPPED_MODELS:
        return SHIPPED_MODELS[str(model)]
    return path / "model.safetensors" if path.is_dir() else path


def shipped_model_with(fingerprint: str | None) -> Path | None:
    """The shipped model file whose fingerprint is ``fingerprint``, if any."""
    for path in dict.fromkeys(SHIPPED_MODELS.values()):
        if fingerprint and path.is_file() and read_model_config(path)["fingerprint"] == fingerprint:
            return path
    return None


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        oneshot_version = version("oneshot")
    except PackageNotFoundError:
        oneshot_version = "source"
    return {"oneshot": oneshot_version, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _tensors(model: Embedder) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def model_fingerprint(model: Embedder) -> str:
    """sha256 over the config and every tensor's name, dtype, shape and bytes (first 16 hex)."""
    digest = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, tensor in sorted(_tensors(model).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def save_model(model: Embedder, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns ``path``.

    Args:
        info: free-form training facts (command, seed, wall time, validation accuracy, ...).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"{path}: model files end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config(),
        "metric": model.metric,
        "dim": model.dim,
        "fingerprint": model_fingerprint(model),
        "versions": library_versions(),
        "info": info or {},
    }
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    sidecar = path.with_suffix(".json")
    with atomic_path(path) as tmp_weights, atomic_path(sidecar) as tmp_sidecar:
        save_file(_tensors(model), str(tmp_weights), metadata={"oneshot": text})
        os.chmod(tmp_weights, 0o644)  # safetensors creates owner-only files; models are shared
        tmp_sidecar.write_text(text + "\n")
    model.fingerprint = config["fingerprint"]
    model.info = config["info"]
    return path


def rewrite_info(model: Embedder, path: str | os.PathLike, info: dict) -> Path:
    """Write ``model`` (loaded from a file) to ``path`` with ``info`` as its facts, weights untouched
    (atomically, as :func:`save_model`); raises :class:`ModelMismatchError` if the written file's
    fingerprint is not the model's."""
    fingerprint = model.fingerprint
    save_model(model, path, info)
    if load_model(path).fingerprint != fingerprint:
        raise ModelMismatchError(f"{path}: fingerprint changed while rewriting the model's info (a bug)")
    return Path(path)


def read_model_config(path: str | os.PathLike) -> dict:
    """The config stored in a model file's header."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CorruptFileError(f"{path}: not a safetensors model file ({error})") from error
    if "oneshot" not in metadata:
        raise CorruptFileError(f"{path}: safetensors file without a oneshot config")
    try:
        config = json.loads(metadata["oneshot"])
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{path}: the oneshot config in its header is not JSON ({error})") from error
    if not isinstance(config, dict):
        raise CorruptFileError(f"{path}: the oneshot config in its header is not a JSON object")
    if config.get("format") != FORMAT or config.get("format_version", 0) > FORMAT_VERSION:
        raise CorruptFileError(f"{path}: unsupported model format {config.get('format')!r} v{config.get('format_version')}")
    if not isinstance(config.get("model"), dict) or "fingerprint" not in config:
        raise CorruptFileError(f"{path}: the oneshot config in its header is incomplete")
    return config


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Embedder:
    """Load a model file, or a shipped model by name (``"face"``, ``"handwriting"``, ``"handwriting-v2"``,
    ``"handwriting-v1"``, ``"handwriting-ensemble"``, ``"handwriting-ensemble-v1"``; ``None``: the default
    handwriting model), in eval mode.

    The returned model carries ``fingerprint`` and ``info`` attributes from its file.
    """
    path = model_path(path)
    config = read_model_config(path)
    try:
        model = Embedder.from_config(config["model"])
    except (InvalidInputError, TypeError, KeyError, ValueError) as error:
        raise CorruptFileError(f"{path}: the stored model config cannot build a model ({error})") from error
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as error:  # safetensors' own error types for truncated or inconsistent data
        raise CorruptFileError(f"{path}: damaged weights ({error})") from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CorruptFileError(f"{path}: weights do not match the stored config ({error})") from error
    if model_fingerprint(model) != config["fingerprint"]:
        raise CorruptFileError(f"{path}: weights do not match the stored fingerprint {config['fingerprint']} "
                         "(corrupt or edited file)")
    model.fingerprint = config["fingerprint"]
    model.info = config.get("info", {})
    return model.to(device).eval()


def as_model(model: Embedder | str | os.PathLike | None) -> Embedder:
    """A model as given, or loaded from its file (``None``: the shipped default)."""
    return model if isinstance(model, Embedder) else load_model(model)
