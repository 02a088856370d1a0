"""Atomic file writes and the modes of what a run leaves on disk.

A reader (or a process killed half-way through the write) sees the old file or the new one,
never a torn one: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, and the temporary file is renamed over the target (`os.replace`, atomic on POSIX and
Windows). Checkpoint directories are written the same way, one level up (`checkpoint.py`).

Modes: every file keisei-ray writes (run files, checkpoints, records, plots, model files) is
`FILE_MODE` 0644 and every folder it creates `DIR_MODE` 0755, whatever the umask. A temporary
file would otherwise be 0600 (mkstemp) and a plain `open` 0666 less the umask, so one run
folder held both. Results are for reading and sharing; a private run goes in a private
parent folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (the folder must exist), mode FILE_MODE; returns the
    path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`write_atomic` of UTF-8 text."""
    return write_atomic(path, text.encode("utf-8"))


def make_dir(path: str | Path) -> Path:
    """Create folder `path` and its missing parents, each mode DIR_MODE (existing ones are left
    as they are); returns the path."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):
        os.chmod(folder, DIR_MODE)
    return path


def set_file_mode(path: str | Path) -> Path:
    """Give a file another library created (a log handler, a plot) the mode FILE_MODE."""
    os.chmod(path, FILE_MODE)
    return Path(path)
