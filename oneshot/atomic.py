"""Write files so that nothing half-written is ever left under the final name."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from oneshot.errors import InvalidInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; move it into place on success.

    The caller writes the whole file to the yielded path. When the ``with`` block ends normally
    the file is renamed onto ``path`` with :func:`os.replace` (atomic on one filesystem); when it
    raises, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: final file name. Its folder must exist.

    Yields:
        The temporary path to write.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise ValueError(f"{final}: folder {final.parent} does not exist")
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` when the ``with`` block ends normally.

    ``path`` must not exist or be an empty folder (checked on entry and again before the rename);
    when the block raises, the temporary folder is removed and ``path`` is left as it was.

    Raises:
        InvalidInputError: ``path`` exists and is not an empty folder.
    """
    final = Path(path)
    _refuse_unless_empty(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield temporary
        _refuse_unless_empty(final)
        if final.exists():
            final.rmdir()
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _refuse_unless_empty(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidInputError(f"{folder}: already exists and is not an empty folder; not overwriting")
