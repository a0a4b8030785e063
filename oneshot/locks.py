"""One writer at a time: an exclusive lock on an output (a store, an index, a run folder)."""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from oneshot.errors import InvalidInputError

try:
    import fcntl
except ImportError:  # Windows: no flock; writes stay atomic, concurrent writers are not refused
    fcntl = None

log = logging.getLogger(__name__)
# oneshot.atomic.atomic_path's temporary names, and a staged index's sidecar (<temporary>.meta.parquet)
_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}\.tmp(\.meta\.parquet)?$")


def _belongs(name: str, target: str) -> bool:
    """Whether a temporary's base name is ``target``, a file named after it, or a temporary of those."""
    name = name.removeprefix(".") if name.startswith(f".{target}") else name
    return name == target or name.startswith(target + ".")


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Remove temporary files a killed writer of ``path`` left behind (``.<name>.<uuid>.tmp``).

    Only safe while holding :func:`exclusive_lock` on ``path`` (no live writer can own them). Looks
    beside ``path`` for temporaries of ``path`` and of files named after it (``<name>.rejects.csv``,
    ``<name>.meta.parquet``), and inside ``path`` when it is a folder (a training run).

    Returns:
        How many files were removed.
    """
    target = Path(path)
    found = []
    if target.parent.is_dir():
        found += [p for p in target.parent.iterdir()
                  if (m := _TEMP.match(p.name)) and _belongs(m["name"], target.name)]
    if target.is_dir():
        found += [p for p in target.iterdir() if _TEMP.match(p.name)]
    for stale in found:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            stale.unlink()
            log.info("removed %s, left by a writer that was killed", stale)
    return len(found)


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
    finished job leaves nothing behind. Once the lock is held, temporary files left by a killed
    writer of ``path`` are removed (:func:`remove_stale_temporaries`).

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
        remove_stale_temporaries(target)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        handle.close()
