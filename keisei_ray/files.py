"""Atomic file writes: the one helper every small file of a run goes through.

A reader (or a process killed half-way through the write) sees the old file or the new one,
never a torn one: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, and the temporary file is renamed over the target (`os.replace`, atomic on POSIX and
Windows). Checkpoint directories are written the same way, one level up (`checkpoint.py`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (the folder must exist); returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`write_atomic` of UTF-8 text."""
    return write_atomic(path, text.encode("utf-8"))
