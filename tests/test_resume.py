"""Exact resume on a real local Ray: N steps straight == N/2, stop, resume, N/2 more."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import Callback, CheckpointSaved, UpdateDone
from keisei_ray.store.checkpoint import list_checkpoints, read_checkpoint, run_id_of
from keisei_ray.store.resume import find_resume_point
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer, TrainResult

pytestmark = pytest.mark.usefixtures("ray_local")


def resume_config(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, [
        "model.size=tiny", "env.max_moves=48", "train.games_per_worker=4",
        "train.rollout_steps=12", "train.num_workers=1", "train.learner_cpus=0",
        "train.total_timesteps=480", "train.seed=11", "ppo.epochs=2", "ppo.minibatch_size=32",
        "ppo.lr_schedule=linear", "checkpoint.interval_timesteps=1000000",
        f"train.runs_dir={tmp_path}", *extra])


class StopAt(Callback):
    """Asks the driver to stop (like Ctrl-C) once the timestep reaches `at`."""

    def __init__(self, stop: threading.Event, at: int) -> None:
        self.stop, self.at = stop, at

    def on_update_done(self, event: UpdateDone) -> None:
        if event.timestep >= self.at:
            self.stop.set()


class Saved(Callback):
    def __init__(self) -> None:
        self.events: list[CheckpointSaved] = []

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self.events.append(event)


def assert_same_run(a: TrainResult, b: TrainResult) -> None:
    assert a.state == b.state  # timestep, updates, version, game statistics, drops, losses
    assert a.final_weights is not None and b.final_weights is not None
    for name, value in a.final_weights.items():
        np.testing.assert_array_equal(value, b.final_weights[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("lag", [1, 0], ids=["pipelined", "synchronous"])
def test_stop_and_resume_is_bit_identical_to_a_straight_run(tmp_path: Path, lag: int) -> None:
    config = resume_config(tmp_path, f"ppo.max_policy_lag={lag}")
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    straight = Trainer(config, straight_dir).run()
    assert straight.reason == "completed"

    run_dir = tmp_path / "split"
    run_dir.mkdir()
    stop = threading.Event()
    saved = Saved()
    first = Trainer(config, run_dir, stop=stop,
                    callbacks=[CheckpointCallback(config), StopAt(stop, 240), saved]).run()
    assert first.reason == "interrupted"
    assert 240 <= first.state.timestep < straight.state.timestep
    assert [e.reason for e in saved.events] == ["interrupt"]
    assert saved.events[0].timestep == first.state.timestep

    point = find_resume_point(run_dir)
    assert point.snapshot is not None and point.run_id == run_id_of(run_dir)
    assert point.snapshot.timestep == first.state.timestep
    assert len(point.snapshot.workers) == 1
    assert len(point.snapshot.pending) == (1 if lag else 0)
    resumed = Trainer(config, run_dir, resume=point.snapshot,
                      callbacks=[CheckpointCallback(config), saved]).run()
    assert resumed.reason == "completed"
    assert_same_run(straight, resumed)
    assert [e.reason for e in saved.events] == ["interrupt", "end"]
    assert read_checkpoint(list_checkpoints(run_dir)[0]).timestep == straight.state.timestep
