"""A run's folder: created once under `train.runs_dir`, holding the effective config."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import dump


def new_run_dir(config: Config) -> Path:
    """runs_dir/<run_name or timestamp-shortid>, created (an existing one is refused)."""
    name = config.train.run_name or (
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    run_dir = Path(config.train.runs_dir) / name
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(f"train.run_name: run folder {run_dir} exists already (use --resume "
                          "to continue it, or another name)") from None
    return run_dir



def write_run_files(config: Config, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(dump(config), encoding="utf-8")
