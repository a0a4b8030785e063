"""One writer at a time: an exclusive lock on an output (a store, an index, a run folder)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from oneshot.errors import InvalidInputError

try:
    import fcntl
except ImportError:  # Windows: no flock; writes stay atomic, concurrent writers are not refused
    fcntl = None


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    target = Path(path)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` while writing it; refuse at once if another process holds it.

    The lock is a hidden file beside ``path`` locked with ``flock``: the operating system releases
    it when the process ends, even when it is killed, so a crash never leaves a stale lock. The
    file is removed on release (a waiter that locked a removed file notices and retries), so a
    finished job leaves nothing behind.

    Yields:
        The lock file's path.
    Raises:
        InvalidInputError: another process is writing ``path``.
    """
    target = Path(path)
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield lock
        return
    while True:
        handle = open(lock, "a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.close()
            raise InvalidInputError(f"{target}: another oneshot process is writing it (lock {lock} is held); "
                                    "wait for it to finish or write elsewhere") from error
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the holder removed the file between our open and our lock: try again
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        handle.close()
