"""Atomic writes and file modes: whatever the umask, files 0644 and folders 0755."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from keisei_ray.files import (
    DIR_MODE,
    FILE_MODE,
    make_dir,
    set_file_mode,
    write_atomic,
    write_text_atomic,
)


@pytest.fixture
def private_umask() -> Iterator[None]:
    """umask 077, under which a plain write would be 0600 and a folder 0700."""
    before = os.umask(0o077)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_do_not_depend_on_the_umask(tmp_path: Path, private_umask: None) -> None:
    assert (FILE_MODE, DIR_MODE) == (0o644, 0o755)
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    folder = make_dir(existing / "a" / "b")
    assert mode(existing) == 0o700  # not ours: left as it was
    assert mode(existing / "a") == mode(folder) == DIR_MODE
    written = write_atomic(folder / "x.bin", b"data")
    assert written.read_bytes() == b"data" and mode(written) == FILE_MODE
    text = write_text_atomic(folder / "x.txt", "é")
    assert text.read_text(encoding="utf-8") == "é" and mode(text) == FILE_MODE
    other = folder / "other.png"
    other.write_bytes(b"png")  # a file another library wrote (0600 here)
    assert mode(set_file_mode(other)) == FILE_MODE
    assert sorted(p.name for p in folder.iterdir()) == ["other.png", "x.bin", "x.txt"]


def run_files_modes(run_dir: Path) -> dict[str, int]:
    """The mode of everything under `run_dir` that is not FILE_MODE / DIR_MODE."""
    return {str(p.relative_to(run_dir)): mode(p) for p in [run_dir, *run_dir.rglob("*")]
            if mode(p) != (DIR_MODE if p.is_dir() else FILE_MODE)}
