"""The library's own exceptions.

Every error the library raises on purpose derives from :class:`OneshotError`; the CLI prints
those as one line and exits 1. Anything else that escapes is a bug and keeps its traceback.
Each class also derives from the built-in it refines (``ValueError``, ``FileNotFoundError``), so
``except ValueError`` in callers' code keeps working.
"""
from __future__ import annotations


class OneshotError(Exception):
    """Base of every error the library raises on purpose."""


class InvalidInputError(OneshotError, ValueError):
    """Bad arguments, values or layouts given by the caller (a flag, a table, a folder)."""


class ImageReadError(InvalidInputError):
    """An image file that cannot be read or decoded; the message names the file."""


class MissingDataError(OneshotError, FileNotFoundError):
    """A file, folder or data set that is not where it was asked for."""


class CorruptFileError(OneshotError, ValueError):
    """A store, index, model or checkpoint whose bytes are damaged, truncated or not ours."""


class ModelMismatchError(OneshotError, ValueError):
    """Vectors, an index or thresholds made by one model used with another."""


__all__ = ["OneshotError", "InvalidInputError", "ImageReadError", "MissingDataError", "CorruptFileError",
           "ModelMismatchError"]
