"""Logging set-up: a Rich handler for the terminal, an optional plain-text file per run."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from keisei_ray.files import make_dir, set_file_mode

_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# One console for everything keisei-ray draws on the terminal (logs, live progress, tables), so
# that Rich can keep the live view below the log lines. stderr keeps stdout free for data output
# (`config show`, USI).
console = Console(stderr=True)


def setup_logging(level: int | str = logging.INFO, log_file: Path | None = None) -> None:
    """Route the root logger to the terminal (Rich) and, when given, to a plain-text file."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_keisei", False):
            root.removeHandler(handler)
            handler.close()
    rich_handler = RichHandler(console=console, show_path=False, rich_tracebacks=True,
                               log_time_format="[%X]")
    rich_handler._keisei = True  # type: ignore[attr-defined]
    root.addHandler(rich_handler)
    if log_file is not None:
        make_dir(log_file.parent)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        set_file_mode(log_file)
        file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        file_handler._keisei = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
    # Ray and wandb are chatty at INFO; their warnings still come through.
    for noisy in ("ray", "wandb", "filelock", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def is_interactive() -> bool:
    """True when the terminal can show a live view (stderr is a TTY)."""
    return sys.stderr.isatty()


_PACKAGES = ("keisei_ray", "actors", "learner", "shogi")


@contextlib.contextmanager
def run_log_file(path: Path) -> Iterator[None]:
    """Also write log records to `path` (a run's train.log) while the block runs.

    The project's own loggers log at INFO at least meanwhile, so the file has the run's story
    even for a library caller who never set logging up (the root logger's WARNING default);
    what reaches the caller's own handlers is up to their levels.
    """
    make_dir(path.parent)
    handler = logging.FileHandler(path, encoding="utf-8")
    set_file_mode(path)
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    raised = []
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            raised.append((logger, logger.level))
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in raised:
            logger.setLevel(level)
        root.removeHandler(handler)
        handler.close()
