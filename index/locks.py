"""One writer at a time per index: an advisory lock file beside it (``path + ".lock"``).

``index add`` and ``index remove`` hold the lock for their whole run; a second writer is refused
at once with a message naming the lock (no waiting, no silent interleaving). The lock is an
``fcntl.flock`` on an open file, so the operating system releases it when the process ends, even
after a crash; the (empty) lock file itself is left in place. Readers never take it (see
:mod:`oneshot.index.index_file` for how they stay consistent).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from oneshot.errors import InvalidInputError

LOCK_SUFFIX = ".lock"


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an index: ``path + ".lock"``."""
    return Path(str(path) + LOCK_SUFFIX)


class IndexBusyError(InvalidInputError):
    """Another process is writing this index."""


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the writer lock of the index at ``path`` for the ``with`` block.

    Raises:
        IndexBusyError: another process holds it.
    """
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise IndexBusyError(f"{path}: another process is writing this index (lock {target}); "
                                 "try again when it has finished") from exc
        try:
            yield target
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
