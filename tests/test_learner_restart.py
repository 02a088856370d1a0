"""The learner restarts itself from the last good checkpoint (`train.learner_max_restarts`) on a
real local Ray: killed with `ray.kill`, the run goes on and completes, the timestep counter is
the sum of the accepted transitions after the rollback, the new learner holds the checkpoint's
weights, and a resume from a checkpoint written after the restart is still exact; a worker
loads the new learner's weights even under a version number it already holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from actors.self_play import SelfPlayActor
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import (
    Callback,
    CheckpointSaved,
    LearnerLost,
    LearnerRestarted,
    TrainEnd,
    UpdateDone,
)
from keisei_ray.store.checkpoint import list_checkpoints, read_checkpoint, verify_checkpoint
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer, TrainResult
from keisei_ray.training.metrics import METRICS_FILE, MetricsLog, read_metrics
from keisei_ray.training.profiling import ProfileWindow
from keisei_ray.training.tuning import LearnerTuner
from learner.model import build_model, export_weights


class RestartLog(Callback):
    """Records updates, checkpoints and learner restarts in order, and the restored weights.

    `kill_every` > 0: kills the learner with ray.kill at the first update after a checkpoint
    was announced that does not cross a multiple of `kill_every` (so no newer checkpoint is
    being taken), `kills` times at most.
    """

    def __init__(self, kill_every: int = 0, kills: int = 1) -> None:
        self.kill_every = kill_every
        self.kills = kills
        self.events: list[tuple[str, Any]] = []
        self.saved: list[CheckpointSaved] = []
        self.lost: list[LearnerLost] = []
        self.restarts: list[LearnerRestarted] = []
        self.restored_weights: list[dict[str, np.ndarray]] = []
        # What the restored checkpoint held, read when it was restored (rotation may delete
        # it before the run ends).
        self.checkpoints: list[tuple[int, int, dict[str, Any]]] = []
        self.killed_at: list[int] = []  # the timesteps the learner was killed at
        self.ended = False
        self._armed = False
        self._timestep = 0

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self.saved.append(event)
        self._armed = True

    def on_update_done(self, event: UpdateDone) -> None:
        self.events.append(("update", event))
        before, self._timestep = self._timestep, event.timestep
        if (self._armed and len(self.killed_at) < self.kills and self.kill_every
                and before // self.kill_every == event.timestep // self.kill_every):
            self._armed = False
            self.killed_at.append(event.timestep)
            ray.kill(ray.get_actor("keisei/learner"), no_restart=True)

    def on_learner_lost(self, event: LearnerLost) -> None:
        self.lost.append(event)

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        self._timestep = event.timestep
        self.events.append(("restart", event))
        self.restarts.append(event)
        self.restored_weights.append(ray.get(event.weights[0]))
        if event.checkpoint is not None:
            info = verify_checkpoint(event.checkpoint)
            self.checkpoints.append((info.timestep, info.version,
                                     read_checkpoint(event.checkpoint).learner["model"]))

    def on_train_end(self, event: TrainEnd) -> None:
        self.ended = True


def check_counter(log: RestartLog, final_timestep: int, start: int = 0) -> None:
    """Every update advanced the counter by what the learner accepted; every restart took it
    back to its checkpoint's timestep, which the counter had reached at an update, and lost
    exactly what was accepted after it."""
    counter, seen = start, {start}
    for kind, event in log.events:
        if kind == "update":
            counter += event.accepted
            assert event.timestep == counter
            seen.add(counter)
        else:
            assert event.lost_timestep == counter
            assert event.timestep in seen
            assert event.transitions_lost == counter - event.timestep
            counter = event.timestep
    assert final_timestep == counter


def check_restored_weights(log: RestartLog) -> None:
    """The new learner's first weights are its checkpoint's model, bit for bit."""
    assert log.restarts
    for event, weights, (timestep, version, saved) in zip(
            log.restarts, log.restored_weights, log.checkpoints, strict=True):
        assert (timestep, version) == (event.timestep, event.version)
        assert set(weights) <= set(saved)
        for name, value in weights.items():
            np.testing.assert_array_equal(value, saved[name].numpy(), err_msg=name)


INTERVAL = 200  # about 4 updates


def restart_config(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, [
        "model.size=tiny", "env.max_moves=48", "train.games_per_worker=4",
        "train.rollout_steps=12", "train.num_workers=1", "train.learner_cpus=0",
        "train.total_timesteps=560", "train.seed=11", "ppo.epochs=1", "ppo.minibatch_size=32",
        f"checkpoint.interval_timesteps={INTERVAL}", "checkpoint.keep_last=10",
        f"train.runs_dir={tmp_path}", *extra])


def assert_same_run(a: TrainResult, b: TrainResult) -> None:
    assert a.state == b.state
    assert a.final_weights is not None and b.final_weights is not None
    for name, value in a.final_weights.items():
        np.testing.assert_array_equal(value, b.final_weights[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_killed_learner_restarts_from_its_checkpoint_and_a_later_resume_is_exact(
        tmp_path: Path) -> None:
    config = restart_config(tmp_path)
    run_dir = tmp_path / "healed"
    run_dir.mkdir()
    log = RestartLog(kill_every=INTERVAL)
    healed = Trainer(config, run_dir, callbacks=[CheckpointCallback(config), MetricsLog(),
                                                 log]).run()

    assert healed.reason == "completed" and healed.learner_restarts == 1
    assert healed.state.timestep >= config.train.total_timesteps
    restart = log.restarts[0]
    # The newest checkpoint announced before the loss was the one restored.
    before = [e for e in log.saved if e.timestep <= log.killed_at[0]]
    assert restart.checkpoint == before[-1].path
    assert restart.lost_timestep >= log.killed_at[0]
    assert 0 < restart.transitions_lost <= INTERVAL + 2 * 4 * 13  # two updates at most
    check_counter(log, healed.state.timestep)
    check_restored_weights(log)
    # metrics.jsonl: the lost updates' lines are gone, the restart is recorded, and the
    # counter adds up through it.
    records = read_metrics(run_dir / METRICS_FILE)
    kinds = [r["event"] for r in records]
    assert kinds.count("learner_restart") == 1
    updates = [r for r in records if r["event"] == "update"]
    timesteps = [int(r["timestep"]) for r in updates]
    assert all(b == a + int(r["accepted"])
               for a, b, r in zip([0, *timesteps], timesteps, updates, strict=False))

    # A resume from a checkpoint the healed run wrote after its restart ends exactly where
    # the healed run ended.
    later = sorted((p for p in list_checkpoints(run_dir)
                    if restart.timestep < verify_checkpoint(p).timestep < healed.state.timestep),
                   key=lambda p: verify_checkpoint(p).timestep)
    assert later, [p.name for p in list_checkpoints(run_dir)]
    snapshot = read_checkpoint(later[-1])
    resumed = Trainer(config, run_dir, resume=snapshot,
                      callbacks=[CheckpointCallback(config)]).run()
    assert resumed.reason == "completed"
    assert_same_run(healed, resumed)


def _weights_of(worker: Any) -> dict[str, np.ndarray]:
    return dict(ray.get(worker.__ray_call__.remote(lambda actor: export_weights(
        actor.worker.model))))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_worker_loads_a_restarted_learner_s_weights_of_a_version_number_it_holds() -> None:
    # After a restart the versions after the checkpoint come again with other weights: a
    # worker holding the lost learner's version 3 must load the new learner's version 3.
    config = load_config(None, ["model.size=tiny", "env.max_moves=24",
                                "train.games_per_worker=2", "train.rollout_steps=2"])
    lost, new = (export_weights(build_model(config.model)) for _ in range(2))
    assert any(not np.array_equal(lost[k], new[k]) for k in lost)
    worker = SelfPlayActor.remote(config, 0)
    ray.get(worker.collect.options(num_returns=2).remote([ray.put(lost)], 3, None, lineage=0)[0])
    held = _weights_of(worker)
    assert all(np.array_equal(held[k], lost[k]) for k in lost)
    ray.get(worker.collect.options(num_returns=2).remote([ray.put(new)], 3, None, lineage=1)[0])
    held = _weights_of(worker)
    assert all(np.array_equal(held[k], new[k]) for k in new)
    ray.kill(worker)


# ----------------------------------------------------------------------------- other phases


def _kill_learner() -> None:
    """ray.kill, and wait until the learner is dead (ray.kill only sends the order: a call
    sent right after it may still be answered)."""
    learner = ray.get_actor("keisei/learner")
    ray.kill(learner, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(300):
            ray.get(learner.__ray_ready__.remote(), timeout=10)
            time.sleep(0.1)


def _healed_once(tmp_path: Path, log: RestartLog, *extra: str) -> TrainResult:
    """A run killed once by the test (see the callers), healed, completed; its counter adds
    up and its newest checkpoint is the end, verified, with the run's final weights."""
    config = restart_config(tmp_path, *extra)
    run_dir = tmp_path / "healed"
    run_dir.mkdir()
    healed = Trainer(config, run_dir, callbacks=[CheckpointCallback(config), log]).run()
    assert healed.reason == "completed" and healed.learner_restarts == 1, healed
    assert healed.state.timestep >= config.train.total_timesteps
    check_counter(log, healed.state.timestep)
    check_restored_weights(log)
    newest = max(list_checkpoints(run_dir), key=lambda p: verify_checkpoint(p).timestep)
    assert verify_checkpoint(newest).timestep == healed.state.timestep
    saved = read_checkpoint(newest).learner["model"]
    assert healed.final_weights is not None
    for name, value in healed.final_weights.items():
        np.testing.assert_array_equal(value, saved[name].numpy(), err_msg=name)
    return healed


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_learner_lost_while_autotuning_heals(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The micro-batch autotune asks the learner after an update: lost there, it heals.
    log = RestartLog()
    real = LearnerTuner.after_update

    def after_update(self: LearnerTuner, learner: Any) -> Any:
        if log.saved and not log.killed_at:
            log.killed_at.append(log._timestep)
            _kill_learner()
        return real(self, learner)

    monkeypatch.setattr(LearnerTuner, "after_update", after_update)
    _healed_once(tmp_path, log, "train.autotune=true", "train.autotune_interval_s=0.001")
    assert log.killed_at and log.lost


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_learner_lost_as_profiling_starts_heals_and_is_profiled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = RestartLog()
    real = ProfileWindow._start

    def start(self: ProfileWindow, learner: Any, workers: list[tuple[int, Any]]) -> None:
        if log.saved and not log.killed_at:
            log.killed_at.append(log._timestep)
            _kill_learner()
        real(self, learner, workers)

    monkeypatch.setattr(ProfileWindow, "_start", start)
    # The window starts after the first checkpoint (update 7 of about 11), the learner is lost
    # then, and the new learner is profiled once the window comes round again.
    _healed_once(tmp_path, log, "profile.updates=2", "profile.skip_updates=7")
    assert log.killed_at and log.lost
    run_dir = tmp_path / "healed"
    assert (run_dir / "profile" / "learner.pt.trace.json").is_file()


class KillAtTheEnd(RestartLog):
    """Kills the learner at the run's last update, once: before the driver took its end."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total

    def on_update_done(self, event: UpdateDone) -> None:
        super().on_update_done(event)
        if event.timestep >= self.total and not self.killed_at:
            self.killed_at.append(event.timestep)
            _kill_learner()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_learner_lost_after_its_last_update_heals_and_the_end_is_checkpointed(
        tmp_path: Path) -> None:
    log = KillAtTheEnd(560)
    healed = _healed_once(tmp_path, log)
    assert log.lost and log.restarts[0].lost_timestep == log.killed_at[0]
    assert healed.state.timestep >= 560
