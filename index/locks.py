"""One writer at a time per index (``build``, ``add``, ``remove``): the shared lock of
:func:`oneshot.locks.exclusive_lock`, refused at once with :class:`IndexBusyError`.

The lock is an ``fcntl.flock`` on a hidden file beside the index, so the operating system releases
it when the process ends, even after a crash; it also clears temporaries a killed writer left.
Readers never take it (see :mod:`oneshot.index.index_file` for how they stay consistent).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from oneshot.errors import InvalidInputError
from oneshot.locks import exclusive_lock, lock_path

__all__ = ["IndexBusyError", "writer_lock", "lock_path"]


class IndexBusyError(InvalidInputError):
    """Another process is writing this index."""


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the writer lock of the index at ``path`` for the ``with`` block.

    Raises:
        IndexBusyError: another process holds it.
    """
    with contextlib.ExitStack() as stack:
        try:
            target = stack.enter_context(exclusive_lock(path))
        except InvalidInputError as exc:
            raise IndexBusyError(f"{path}: another process is writing this index; try again when it has "
                                 f"finished ({exc})") from exc
        yield target
