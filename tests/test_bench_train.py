"""`bench train`: arms of overrides alternated on a real local Ray, figures and ratios."""

from __future__ import annotations

import pytest

from keisei_ray.bench.train import bench_training

pytestmark = pytest.mark.usefixtures("ray_local")  # one real local Ray for the module


def test_compare_runs_each_arm_and_reports_its_ratio_to_the_first() -> None:
    figures = bench_training("smoke", (1,), timesteps=512, compare=(
        ("train.learner_threads=2",), ("train.learner_threads=1", "ppo.epochs=1")))
    first, second = "train.learner_threads=2", "train.learner_threads=1 ppo.epochs=1"
    for arm in (first, second):
        assert figures[f"N=1 {arm} steps per s"] > 0
        assert figures[f"N=1 {arm} updates"] >= 1
        assert 0.0 <= figures[f"N=1 {arm} learner idle"] <= 1.0
    assert figures[f"N=1 {second} / {first}"] == pytest.approx(
        figures[f"N=1 {second} steps per s"] / figures[f"N=1 {first} steps per s"])


def test_the_same_arm_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="must differ"):
        bench_training("smoke", (1,), compare=(("ppo.epochs=1",), ("ppo.epochs=1",)))
