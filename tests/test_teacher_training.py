"""Search as a teacher end to end on a real local Ray: a short training run with
train.search.simulations=4 distils the search's targets, and stop + resume is bit-identical
to a straight run (the teacher's generators travel in the worker state)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from keisei_ray.events import Callback, UpdateDone
from keisei_ray.store.resume import find_resume_point
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer

from .test_resume import Saved, StopAt, assert_same_run, resume_config

pytestmark = pytest.mark.usefixtures("ray_local")

TEACHER = ("train.search.simulations=4", "train.search.full_search_share=0.5",
           "train.search.cheap_simulations=1", "search.leaves_per_forward=2",
           "ppo.search_value_mix=0.2")


class Metrics(Callback):
    def __init__(self) -> None:
        self.updates: list[dict[str, float]] = []

    def on_update_done(self, event: UpdateDone) -> None:
        self.updates.append(event.metrics)


@pytest.mark.slow
def test_training_with_search_targets_resumes_exactly(tmp_path: Path) -> None:
    config = resume_config(tmp_path, "ppo.max_policy_lag=1", *TEACHER)
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    metrics = Metrics()
    straight = Trainer(config, straight_dir, callbacks=[metrics]).run()
    assert straight.reason == "completed"
    assert metrics.updates and all("distill_loss" in m for m in metrics.updates)
    assert all(m["distill_loss"] > 0 for m in metrics.updates)

    run_dir = tmp_path / "split"
    run_dir.mkdir()
    stop = threading.Event()
    first = Trainer(config, run_dir, stop=stop,
                    callbacks=[CheckpointCallback(config), StopAt(stop, 240), Saved()]).run()
    assert first.reason == "interrupted"
    point = find_resume_point(run_dir)
    assert point.snapshot is not None
    (state,) = point.snapshot.workers.values()
    assert state["teacher"]["settings"]["simulations"] == 4
    resumed = Trainer(config, run_dir, resume=point.snapshot,
                      callbacks=[CheckpointCallback(config)]).run()
    assert resumed.reason == "completed"
    assert_same_run(straight, resumed)
