"""A run's folder: created once under `train.runs_dir`, holding the effective config."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import dump
from keisei_ray.files import DIR_MODE, make_dir, write_text_atomic


def new_run_dir(config: Config) -> Path:
    """runs_dir/<run_name or timestamp-shortid>, created (an existing one is refused)."""
    name = config.train.run_name or (
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    run_dir = Path(config.train.runs_dir) / name
    make_dir(run_dir.parent)
    try:
        run_dir.mkdir(exist_ok=False)
    except FileExistsError:
        raise ConfigError(f"train.run_name: run folder {run_dir} exists already (use --resume "
                          "to continue it, or another name)") from None
    os.chmod(run_dir, DIR_MODE)
    return run_dir


def write_run_files(config: Config, run_dir: Path) -> None:
    write_text_atomic(run_dir / "config.yaml", dump(config))
