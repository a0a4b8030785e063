"""The arithmetic a forward pass runs in, and every spelling of it the library takes (torch-free,
so the command line can list them without importing torch)."""
from __future__ import annotations

from oneshot.errors import InvalidInputError

#: The names inference uses (:class:`~oneshot.embedder.inference.InferenceModel`, embed, identify).
PRECISIONS = ("float32", "bfloat16")
#: Training's names (``TrainConfig.precision``, kept in checkpoints and configs).
TRAINING_PRECISIONS = ("fp32", "bf16")
#: Every spelling taken, and the inference name each stands for.
PRECISION_SPELLINGS = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_precision(precision: str) -> str:
    """``precision``'s name in ``PRECISIONS`` (any spelling of ``PRECISION_SPELLINGS``); else
    :class:`InvalidInputError` (a ValueError). Jobs call it before they read anything, so a typo
    costs no listing of a large gallery."""
    if not isinstance(precision, str) or precision not in PRECISION_SPELLINGS:
        raise InvalidInputError(f"precision must be one of {tuple(PRECISION_SPELLINGS)}, got {precision!r}")
    return PRECISION_SPELLINGS[precision]


def training_precision(precision: str) -> str:
    """``precision``'s training name (``"fp32"`` or ``"bf16"``), from any spelling."""
    return TRAINING_PRECISIONS[PRECISIONS.index(check_precision(precision))]
