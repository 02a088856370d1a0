"""The env benchmark returns its figures (the numbers themselves are printed, not asserted)."""

from __future__ import annotations

import pytest

from keisei_ray.bench.env import bench_env


def test_bench_env_returns_positive_figures() -> None:
    figures = bench_env(num_games=4, seconds=0.05, seed=0)
    assert set(figures) == {"num_games", "vecenv_plies_per_s", "raw_cshogi_plies_per_s",
                            "vecenv_to_raw_ratio"}
    assert figures["num_games"] == 4
    assert figures["vecenv_plies_per_s"] > 0 and figures["raw_cshogi_plies_per_s"] > 0
    assert figures["vecenv_to_raw_ratio"] == pytest.approx(
        figures["vecenv_plies_per_s"] / figures["raw_cshogi_plies_per_s"])


def test_bench_env_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_games"):
        bench_env(num_games=0, seconds=1.0)
