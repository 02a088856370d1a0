"""keisei-ray: distributed PPO self-play for Shogi on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keisei-ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
