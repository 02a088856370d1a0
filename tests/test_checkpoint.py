"""The checkpoint store without Ray: round trip, corruption cases, fallback, rotation, best."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import keisei_ray.store.checkpoint as ckpt
from actors.self_play import SelfPlayWorker
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import (
    Callback,
    CheckpointSaved,
    EvaluationDone,
    EventBus,
    GameStats,
    LearnerLost,
    LearnerRestarted,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.store.checkpoint import (
    CheckpointError,
    RunSnapshot,
    list_checkpoints,
    read_checkpoint,
    run_id_of,
    verify_checkpoint,
    write_checkpoint,
)
from keisei_ray.store.model_file import ModelFileError, load_model, save_model
from keisei_ray.store.resume import check_compatible, find_resume_point
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.restarts import restore_point
from learner import Learner
from learner.model import export_weights


def tiny_config(*extra: str) -> Config:
    return load_config(None, ["model.size=tiny", "env.max_moves=40", "train.games_per_worker=2",
                              "train.rollout_steps=5", *extra])


@pytest.fixture(scope="module")
def snapshot() -> RunSnapshot:
    config = tiny_config()
    learner = Learner(config, capacity=64, device="cpu")
    worker = SelfPlayWorker(config, worker_id=0)
    _, payload = worker.collect(export_weights(worker.model), 0)
    return RunSnapshot(
        config=config, timestep=96, version=3,
        driver={"timestep": 96, "updates": 3, "version": 3, "games": {"games": 2},
                "dropped_batches": 0, "lost_batches": 0},
        learner=learner.state_dict(), workers={0: worker.get_state()}, pending=[payload],
        pending_games={"games": 1, "black_wins": 1}, rng={"numpy": np.random.get_state()},
        callbacks={"elo": {"ratings": {"random": 0.0}}})


def make_run(tmp_path: Path, snapshot: RunSnapshot, *timesteps: int) -> tuple[Path, list[Path]]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    run_id = run_id_of(run_dir, create=True)
    paths = [write_checkpoint(run_dir / "checkpoints", _at(snapshot, t), run_id=run_id,
                              reason="interval") for t in timesteps]
    return run_dir, paths


def _at(snapshot: RunSnapshot, timestep: int) -> RunSnapshot:
    return RunSnapshot(**{**snapshot.__dict__, "timestep": timestep})


# ----------------------------------------------------------------------------- store


def test_round_trip_restores_everything(tmp_path: Path, snapshot: RunSnapshot) -> None:
    run_dir, (path,) = make_run(tmp_path, snapshot, 96)
    assert path.name == "ckpt-000000000096"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["learner.pt", "workers.pt", "pending.pt", "driver.pt", "state.json", "callbacks.json",
         "config.yaml", "manifest.json"])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    back = read_checkpoint(path, run_id=run_id_of(run_dir))
    assert back.config == snapshot.config
    assert (back.timestep, back.version) == (96, 3)
    assert back.driver == snapshot.driver and back.callbacks == snapshot.callbacks
    assert back.pending == snapshot.pending and back.pending_games == snapshot.pending_games
    for name, tensor in snapshot.learner["model"].items():
        assert torch.equal(back.learner["model"][name], tensor)
    assert back.learner["optimizer"]["param_groups"] == snapshot.learner["optimizer"][
        "param_groups"]
    assert torch.equal(back.learner["generator"], snapshot.learner["generator"])
    # The worker state comes back as numpy and a fresh worker takes it.
    state = back.workers[0]
    assert isinstance(state["env"]["moves"], np.ndarray)
    worker = SelfPlayWorker(snapshot.config, worker_id=0)
    worker.set_state(state)
    assert worker.env.get_state()["rng"] == snapshot.workers[0]["env"]["rng"]
    assert np.array_equal(back.rng["numpy"][1], snapshot.rng["numpy"][1])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: (p / "manifest.json").unlink(), "partial (no manifest.json"),
    (lambda p: _truncate(p / "manifest.json"), "manifest.json is unreadable"),
    (lambda p: _flip_byte(p / "learner.pt"), "learner.pt does not match its SHA-256"),
    (lambda p: _truncate(p / "workers.pt"), "workers.pt is truncated or altered"),
    (lambda p: (p / "pending.pt").unlink(), "pending.pt is missing"),
    (lambda p: _flip_byte(p / "config.yaml"), "config.yaml does not match its SHA-256"),
])
def test_damaged_checkpoint_is_one_clear_line(tmp_path: Path, snapshot: RunSnapshot,
                                              damage: Any, message: str) -> None:
    _, (path,) = make_run(tmp_path, snapshot, 96)
    damage(path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_file_swapped_with_a_consistent_manifest_is_still_caught(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    # Tampering that also rewrites the manifest cannot smuggle in a pickle: weights_only.
    _, (path,) = make_run(tmp_path, snapshot, 96)

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, path / "learner.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / "learner.pt").read_bytes()
    manifest["files"]["learner.pt"] = {"sha256": ckpt.hashlib.sha256(data).hexdigest(),
                                       "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="learner.pt is unreadable"):
        read_checkpoint(path)


def test_failed_save_leaves_nothing_behind(tmp_path: Path, snapshot: RunSnapshot,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, (good,) = make_run(tmp_path, snapshot, 96)
    calls = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        path.write_bytes(data)

    monkeypatch.setattr(ckpt, "_write_synced", failing)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(run_dir / "checkpoints", _at(snapshot, 192), run_id="x", reason="x")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [good.name]


# ----------------------------------------------------------------------------- resume


def test_resume_falls_back_to_the_previous_good_checkpoint(
        tmp_path: Path, snapshot: RunSnapshot, caplog: pytest.LogCaptureFixture) -> None:
    run_dir, (old, mid, new) = make_run(tmp_path, snapshot, 96, 192, 288)
    _truncate(new / "learner.pt")
    (mid / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        point = find_resume_point(run_dir)
    assert point.path == old and point.snapshot is not None and point.snapshot.timestep == 96
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "truncated" in warnings[0] and "partial" in warnings[1]
    # Naming a checkpoint resumes from it, or from an older one of the same run.
    assert find_resume_point(mid).path == old
    assert find_resume_point(old).path == old


def test_no_good_checkpoint_refuses_unless_told_to_start_fresh(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    run_dir, (only,) = make_run(tmp_path, snapshot, 96)
    _flip_byte(only / "workers.pt")
    with pytest.raises(CheckpointError, match="no good checkpoint .* --allow-fresh"):
        find_resume_point(run_dir)
    point = find_resume_point(run_dir, allow_fresh=True)
    assert point.snapshot is None and point.run_id == run_id_of(run_dir)


def test_resume_never_uses_files_the_run_did_not_create(tmp_path: Path,
                                                        snapshot: RunSnapshot) -> None:
    run_dir, (ours,) = make_run(tmp_path, snapshot, 96)
    foreign = write_checkpoint(run_dir / "checkpoints", _at(snapshot, 500), run_id="someone-else",
                               reason="interval")
    assert find_resume_point(run_dir).path == ours  # the foreign one is skipped
    with pytest.raises(CheckpointError, match="belongs to run 'someone-else'"):
        verify_checkpoint(foreign, run_id=run_id_of(run_dir))
    # A checkpoint in the parent folder, or a loose one, is never picked up.
    loose = write_checkpoint(tmp_path / "checkpoints", _at(snapshot, 900), run_id="x", reason="x")
    with pytest.raises(CheckpointError, match="not inside its run folder"):
        find_resume_point(loose)
    with pytest.raises(CheckpointError, match="neither a run folder"):
        find_resume_point(tmp_path)


def test_incompatible_config_is_refused_naming_the_field() -> None:
    saved = tiny_config()
    with pytest.raises(CheckpointError, match="model.channels is None in the checkpoint, 64 now"):
        check_compatible(saved, tiny_config("model.channels=64"), "x")
    with pytest.raises(CheckpointError, match="model.size is 'tiny' in the checkpoint, 'small'"):
        check_compatible(saved, tiny_config("model.size=small"), "x")
    with pytest.raises(CheckpointError, match="ppo.optimizer"):
        check_compatible(saved, tiny_config("ppo.optimizer=adamw"), "x")
    with pytest.raises(CheckpointError, match="model.policy_head is 'relative' in the "
                                              "checkpoint, 'absolute' now"):
        check_compatible(saved, tiny_config("model.policy_head=absolute"), "x")
    with pytest.raises(CheckpointError, match="model.attack_planes"):
        check_compatible(saved, tiny_config("model.attack_planes=true"), "x")
    with pytest.raises(CheckpointError, match="ppo.amp"):
        check_compatible(saved, tiny_config("ppo.amp=fp16"), "x")
    assert check_compatible(saved, tiny_config("ppo.learning_rate=0.1"), "x") == []
    assert check_compatible(saved, tiny_config("train.games_per_worker=3", "env.max_moves=50"),
                            "x") == ["env.max_moves", "train.games_per_worker"]


def test_load_model_accepts_a_checkpoint_directory(tmp_path: Path,
                                                   snapshot: RunSnapshot) -> None:
    _, (path,) = make_run(tmp_path, snapshot, 96)
    loaded = load_model(path)
    assert loaded.config == snapshot.config.model
    assert loaded.meta["timestep"] == 96 and not loaded.model.training
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, snapshot.learner["model"][name])
    _flip_byte(path / "learner.pt")
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(path)


def test_the_value_s_material_shaping_travels_with_the_weights(tmp_path: Path,
                                                               snapshot: RunSnapshot) -> None:
    """The shaping coefficient in force at the cut reaches the loaded network, through an
    exported model file too; a checkpoint from before it was recorded gets its config's."""
    shaped = replace(snapshot, value_material=0.05)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, (path,) = make_run(tmp_path / "a", shaped, 96)
    loaded = load_model(path)
    assert loaded.meta["value_material"] == 0.05 and loaded.model.value_material == 0.05
    exported = save_model(tmp_path / "m.pt", export_weights(loaded.model), loaded.config,
                          loaded.meta)
    assert load_model(exported).model.value_material == 0.05
    state = json.loads((path / "state.json").read_text())
    assert state["value_material"] == 0.05
    _, (plain,) = make_run(tmp_path / "b", snapshot, 96)
    assert load_model(plain).model.value_material == 0.0


# ----------------------------------------------------------------------------- the callback


class Harness(Callback):
    """A bus with the checkpoint callback on it, fed like the driver feeds it."""

    def __init__(self, callback: CheckpointCallback, run_dir: Path, snapshot: RunSnapshot, *,
                 start: int = 0, resumed: bool = False) -> None:
        self.callback, self.snapshot = callback, snapshot
        self.saved: list[CheckpointSaved] = []
        self.captured: list[dict[str, Any]] = []  # the callback's state at each capture
        self.bus = EventBus()
        self.bus.register(callback)
        self.bus.register(self)
        self.bus.emit(TrainStart(run_dir, snapshot.config, start, 0, resumed, bus=self.bus))

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self.saved.append(event)

    def capture(self, timestep: int, version: int) -> Any:
        """What the driver's snapshot does: capture now (the callbacks' states too), return
        `fetch`."""

        def capture() -> Any:
            self.captured.append(json.loads(json.dumps(self.callback.state_dict())))
            return lambda: RunSnapshot(**{**self.snapshot.__dict__, "timestep": timestep,
                                          "version": version})

        return capture

    def update(self, timestep: int, version: int, accepted: int) -> None:
        self.bus.emit(UpdateDone(timestep=timestep, version=version, accepted=accepted,
                                 metrics={}, games=GameStats(), totals=GameStats(),
                                 policy_lag=1, workers_alive=1, steps_per_s=1.0,
                                 worker_restarts=0, wall_time=1.0,
                                 snapshot=self.capture(timestep, version)))
        assert self.callback._writer is not None
        self.callback._writer.wait()  # let the writer finish: the tests check the order

    def evaluated(self, version: int, wins: int, elo: float | None) -> None:
        self.bus.emit(EvaluationDone(timestep=0, version=version, opponent="random", games=10,
                                     wins=wins, losses=10 - wins, draws=0, elo=elo))

    def end(self, timestep: int, version: int, *, at_cut: bool = True) -> None:
        self.bus.emit(TrainEnd(timestep, version, "completed",
                               snapshot=self.capture(timestep, version) if at_cut else None))
        assert self.bus.errors == 0


def drive(callback: CheckpointCallback, run_dir: Path, snapshot: RunSnapshot, step: int,
          updates: int, *, start: int = 0, resumed: bool = False) -> list[CheckpointSaved]:
    """Feed the callback UpdateDone events of `step` transitions each, then TrainEnd."""
    harness = Harness(callback, run_dir, snapshot, start=start, resumed=resumed)
    for version in range(1, updates + 1):
        harness.update(start + step * version, version, step)
    harness.end(start + step * updates, updates)
    return harness.saved


def test_interval_checkpoints_fire_at_the_first_update_crossing_each_multiple(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    # 48 transitions per update, interval 100 (not a multiple): 144 crosses 100, 240 crosses
    # 200, 336 crosses 300; 384 is the end.
    config = tiny_config("checkpoint.interval_timesteps=100", "checkpoint.keep_last=10")
    run_dir = tmp_path / "run"
    callback = CheckpointCallback(config)
    saved = drive(callback, run_dir, snapshot, 48, 8)
    assert [(e.timestep, e.reason) for e in saved] == [
        (144, "interval"), (240, "interval"), (336, "interval"), (384, "end")]
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "ckpt-000000000384", "ckpt-000000000336", "ckpt-000000000240", "ckpt-000000000144"]
    assert len(callback.stall_s) == 4 and len(callback.save_s) == 4


def test_keeps_the_last_k_and_the_best(tmp_path: Path, snapshot: RunSnapshot) -> None:
    config = tiny_config("checkpoint.interval_timesteps=50", "checkpoint.keep_last=2")
    run_dir = tmp_path / "run"
    callback = CheckpointCallback(config)
    harness = Harness(callback, run_dir, snapshot)
    harness.update(50, 1, 50)
    harness.update(100, 2, 50)
    harness.evaluated(2, 9, elo=350.0)
    harness.update(150, 3, 50)
    harness.evaluated(3, 7, elo=120.0)
    harness.update(200, 4, 50)
    harness.update(250, 5, 50)
    harness.end(250, 5, at_cut=False)
    names = sorted(p.name for p in list_checkpoints(run_dir))
    # The last two plus version 2, the best rated one.
    assert names == ["ckpt-000000000100", "ckpt-000000000200", "ckpt-000000000250"]
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["checkpoint"] == "ckpt-000000000100" and best["rated"]
    assert [e.reason for e in harness.saved].count("best") == 1
    assert callback.state_dict()["best"] == "ckpt-000000000100"


def test_the_end_is_saved_again_once_the_final_evaluation_is_in(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    # The last update crosses an interval (as the defaults always do: 200k total, 50k
    # interval): its checkpoint is taken before the final evaluation finishes.
    config = tiny_config("checkpoint.interval_timesteps=50")
    callback = CheckpointCallback(config)
    harness = Harness(callback, tmp_path / "run", snapshot)
    harness.update(50, 1, 50)
    harness.update(100, 2, 50)
    harness.evaluated(2, 9, elo=200.0)  # the final evaluation, after that save
    harness.end(100, 2)
    assert [(e.timestep, e.reason) for e in harness.saved if e.reason != "best"] == [
        (50, "interval"), (100, "interval"), (100, "end")]
    # The end checkpoint's state holds the final rating and names the best checkpoint.
    assert harness.captured[-1] == {"merits": {"2": [1, 200.0]}, "best": "ckpt-000000000100"}
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [
        "ckpt-000000000100", "ckpt-000000000050"]

    # Nothing measured after the last save: the end is not saved twice.
    again = CheckpointCallback(config)
    harness = Harness(again, tmp_path / "other", snapshot)
    harness.update(50, 1, 50)
    harness.update(100, 2, 50)
    harness.end(100, 2)
    assert [(e.timestep, e.reason) for e in harness.saved] == [(50, "interval"),
                                                               (100, "interval")]


def test_a_resumed_run_keeps_the_best_that_best_json_names(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    # A crash after ckpt-96 was rated the best: the state of the checkpoint resumed from
    # (taken before that rating) knows nothing of it, best.json does.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_id = run_id_of(run_dir, create=True)
    for timestep, version in ((96, 1), (192, 2)):
        write_checkpoint(run_dir / "checkpoints", RunSnapshot(**{
            **snapshot.__dict__, "timestep": timestep, "version": version}), run_id=run_id,
            reason="interval")
    (run_dir / "checkpoints" / "best.json").write_text(json.dumps(
        {"checkpoint": "ckpt-000000000096", "timestep": 96, "version": 1, "rated": True,
         "merit": 300.0}))
    callback = CheckpointCallback(tiny_config("checkpoint.interval_timesteps=50",
                                              "checkpoint.keep_last=1"))
    callback.load_state_dict({"merits": {}, "best": None})
    harness = Harness(callback, run_dir, snapshot, start=192, resumed=True)
    harness.update(250, 3, 58)
    harness.evaluated(3, 6, elo=100.0)  # rated lower than ckpt-96
    harness.update(300, 4, 50)
    harness.end(300, 4)
    assert sorted(p.name for p in list_checkpoints(run_dir)) == [
        "ckpt-000000000096", "ckpt-000000000300"]
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["checkpoint"] == "ckpt-000000000096" and best["merit"] == 300.0
    assert callback.state_dict()["merits"] == {"1": [1, 300.0], "3": [1, 100.0]}


def test_unrated_merit_is_the_score_against_the_hardest_opponent(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    callback = CheckpointCallback(tiny_config())
    for opponent, wins in (("random", 10), ("heuristic", 4)):
        callback.on_evaluation_done(EvaluationDone(timestep=1, version=7, opponent=opponent,
                                                   games=10, wins=wins, losses=10 - wins,
                                                   draws=0))
    assert callback.merits[7] == (0, 0.4)
    callback.on_evaluation_done(EvaluationDone(timestep=1, version=7, opponent="random",
                                               games=10, wins=10, losses=0, draws=0, elo=80.0))
    assert callback.merits[7] == (1, 80.0)
    restored = CheckpointCallback(tiny_config())
    restored.load_state_dict(json.loads(json.dumps(callback.state_dict())))
    assert restored.merits == callback.merits


def test_resumed_run_sets_aside_checkpoints_from_a_lost_future(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    run_dir, _ = make_run(tmp_path, snapshot, 96, 192)
    callback = CheckpointCallback(tiny_config("checkpoint.interval_timesteps=1000"))
    saved = drive(callback, run_dir, snapshot, 10, 2, start=96, resumed=True)
    assert [e.timestep for e in saved] == [116]
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-000000000116",
                                                           "ckpt-000000000096"]
    assert [p.name.split(".")[0] for p in (run_dir / "checkpoints").glob("*.abandoned-*")] == [
        "ckpt-000000000192"]


def test_a_learner_restart_uses_the_newest_good_checkpoint_and_the_interval_goes_on_from_it(
        tmp_path: Path, snapshot: RunSnapshot) -> None:
    # 48 transitions per update, interval 100: checkpoints at 144 and 240; 240 is damaged.
    config = tiny_config("checkpoint.interval_timesteps=100", "checkpoint.keep_last=10")
    run_dir = tmp_path / "run"
    callback = CheckpointCallback(config)
    harness = Harness(callback, run_dir, snapshot)
    for version in range(1, 7):
        harness.update(48 * version, version, 48)
    bus = harness.bus
    bus.emit(LearnerLost(timestep=288, version=6, error="the learner failed"))
    assert [e.timestep for e in harness.saved] == [144, 240]  # announced before the restore
    _flip_byte(list_checkpoints(run_dir)[0] / "learner.pt")
    point = restore_point(run_dir)
    assert point.snapshot is not None and point.snapshot.timestep == 144
    bus.emit(LearnerRestarted(timestep=144, version=3, checkpoint=point.path,
                              transitions_lost=144, lost_timestep=288, restarts=1, down_s=1.0,
                              error="the learner failed"))
    # The bad newer one is set aside; 240 is due again from 144 (not 300, from 288).
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-000000000144"]
    assert len(list((run_dir / "checkpoints").glob("ckpt-000000000240.abandoned-*"))) == 1
    harness.update(192, 4, 48)
    harness.update(240, 5, 48)
    harness.end(240, 5)
    assert [e.timestep for e in harness.saved] == [144, 240, 240]
    assert verify_checkpoint(list_checkpoints(run_dir)[0]).timestep == 240


def test_a_saved_config_from_before_the_policy_head_option_reads_as_the_absolute_head(
        tmp_path: Path) -> None:
    # Saved configs hold every field: one without model.policy_head predates the option.
    config = load_config(None, ["model.size=tiny"])
    data = config.model_dump(mode="json")
    del data["model"]["policy_head"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    assert ckpt._read_config(tmp_path).model.policy_head == "absolute"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")),
                                          encoding="utf-8")
    assert ckpt._read_config(tmp_path).model.policy_head == "relative"
