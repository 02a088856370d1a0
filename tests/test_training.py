"""The actor-learner loop on a real local Ray: counting, lag, worker loss, seeds, callbacks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import BatchCollected, Callback, UpdateDone
from keisei_ray.training.driver import Trainer, TrainResult

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # Ray training runs


def small_config(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, [
        "model.size=tiny", "env.max_moves=64", "train.games_per_worker=4",
        "train.rollout_steps=16", "train.num_workers=2", "train.learner_cpus=0",
        "train.total_timesteps=400", "ppo.epochs=1", "ppo.minibatch_size=64",
        f"train.runs_dir={tmp_path}", *extra])


class Recorder(Callback):
    def __init__(self) -> None:
        self.updates: list[UpdateDone] = []
        self.batches: list[BatchCollected] = []

    def on_batch_collected(self, event: BatchCollected) -> None:
        self.batches.append(event)

    def on_update_done(self, event: UpdateDone) -> None:
        self.updates.append(event)


def train(config: Config, tmp_path: Path, *callbacks: Callback) -> TrainResult:
    run_dir = tmp_path / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    return Trainer(config, run_dir, callbacks=list(callbacks)).run()


def test_timestep_is_the_sum_of_accepted_transitions(tmp_path: Path) -> None:
    rec = Recorder()
    result = train(small_config(tmp_path), tmp_path, rec)
    assert result.reason == "completed"
    assert result.state.timestep >= 400
    assert result.state.timestep == sum(u.accepted for u in rec.updates)
    assert [u.timestep for u in rec.updates] == list(
        np.cumsum([u.accepted for u in rec.updates]))
    assert result.state.updates == len(rec.updates) == result.state.version
    # Pipelined: every accepted batch is at most one version old.
    assert max(u.policy_lag for u in rec.updates) <= 1
    assert {b.worker_id for b in rec.batches} == {0, 1}
    assert result.final_weights is not None


def test_time_limit_ends_the_run_as_completed(tmp_path: Path) -> None:
    rec = Recorder()
    config = small_config(tmp_path, "train.total_timesteps=100000000", "train.max_minutes=0.05")
    result = train(config, tmp_path, rec)
    assert result.reason == "completed"
    assert 0 < result.state.timestep < 100_000_000 and rec.updates
    assert 3.0 <= result.wall_s < 60.0  # the limit is checked between rounds


def test_synchronous_mode_has_no_policy_lag(tmp_path: Path) -> None:
    rec = Recorder()
    result = train(small_config(tmp_path, "ppo.max_policy_lag=0"), tmp_path, rec)
    assert result.reason == "completed"
    assert all(u.policy_lag == 0 for u in rec.updates)
    assert result.state.dropped_batches == 0


def test_killed_worker_is_restarted_and_its_batch_never_counted(tmp_path: Path) -> None:
    stop = threading.Event()
    killed_at: list[float] = []

    class KillOnce(Recorder):
        def on_batch_collected(self, event: BatchCollected) -> None:
            super().on_batch_collected(event)
            if not killed_at and len(self.batches) >= 4:
                # Kill worker-0 while it is collecting (the other worker just delivered).
                ray.kill(ray.get_actor("keisei/worker-0"), no_restart=False)
                killed_at.append(time.monotonic())
            elif killed_at and event.worker_id == 0:
                stop.set()  # worker-0 is back and delivering: enough

    rec = KillOnce()
    config = small_config(tmp_path, "train.total_timesteps=30000", "train.rollout_steps=32")
    run_dir = tmp_path / "kill"
    run_dir.mkdir()
    result = Trainer(config, run_dir, callbacks=[rec], stop=stop).run()
    assert killed_at and stop.is_set()
    assert result.reason == "interrupted"  # stopped on request once worker-0 was back
    assert result.worker_restarts == 1
    assert result.state.lost_batches >= 1
    assert result.state.timestep == sum(u.accepted for u in rec.updates)
    assert rec.updates[-1].workers_alive == 2


def test_fixed_seed_with_one_worker_is_reproducible(tmp_path: Path) -> None:
    config = small_config(tmp_path, "train.num_workers=1", "train.total_timesteps=200",
                          "train.seed=7")
    a = train(config, tmp_path)
    b = train(config, tmp_path)
    assert a.state.timestep == b.state.timestep
    assert a.state.games == b.state.games
    assert a.final_weights is not None and b.final_weights is not None
    for name, value in a.final_weights.items():
        np.testing.assert_array_equal(value, b.final_weights[name], err_msg=name)
    c = train(small_config(tmp_path, "train.num_workers=1", "train.total_timesteps=200",
                           "train.seed=8"), tmp_path)
    assert c.final_weights is not None
    assert any(not np.array_equal(v, c.final_weights[k]) for k, v in a.final_weights.items())


def test_failing_callback_does_not_stop_training(tmp_path: Path) -> None:
    class Broken(Callback):
        def on_update_done(self, event: UpdateDone) -> None:
            raise RuntimeError("callback bug")

    rec = Recorder()
    result = train(small_config(tmp_path), tmp_path, Broken(), rec)
    assert result.reason == "completed"
    assert result.callback_errors == 3  # then disabled
    assert result.state.timestep >= 400 and len(rec.updates) == result.state.updates
