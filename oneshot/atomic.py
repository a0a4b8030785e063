"""Write files so that nothing half-written is ever left under the final name."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


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
