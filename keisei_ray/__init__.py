"""keisei-ray: distributed PPO self-play for Shogi on Ray.

The library API: `train(config) -> RunResult`, `evaluate(player, opponent) -> MatchResult`
and `load_config(...)` (keisei_ray.api, keisei_ray.config_loading), and the errors they raise:
`ConfigError`, `CheckpointError` (a resume that cannot go on) and `TrainingError` (a failed run).
They are imported on first use, so `import keisei_ray` stays cheap (no Ray, no torch).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("keisei-ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from keisei_ray.api import RunResult, evaluate, train
    from keisei_ray.config import Config, ConfigError
    from keisei_ray.config_loading import load_config
    from keisei_ray.store.checkpoint import CheckpointError
    from keisei_ray.training.ray_cluster import TrainingError

_LAZY = {"train": "keisei_ray.api", "evaluate": "keisei_ray.api", "RunResult": "keisei_ray.api",
         "Config": "keisei_ray.config", "ConfigError": "keisei_ray.config",
         "load_config": "keisei_ray.config_loading",
         "CheckpointError": "keisei_ray.store.checkpoint",
         "TrainingError": "keisei_ray.training.ray_cluster"}

__all__ = ["CheckpointError", "Config", "ConfigError", "RunResult", "TrainingError",
           "__version__", "evaluate", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keisei_ray' has no attribute {name!r}")
