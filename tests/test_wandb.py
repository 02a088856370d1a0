"""W&B: the retrying background queue, a failing uploader, real offline runs read back, sweeps.

No test reaches wandb.ai: real wandb runs in offline mode only; the server is the one thing
faked (an injected failing client).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import load_config
from keisei_ray.events import (
    CheckpointSaved,
    EvaluationDone,
    EventBus,
    GameStats,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.store.checkpoint import RunSnapshot, create_run_id, run_id_of, write_checkpoint
from keisei_ray.training.tracking import RetryQueue, WandbCallback, apply_sweep, sweep_trial

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep wandb's caches in the test's folder and make sure nothing goes online.
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


# ----------------------------------------------------------------------------- retry queue


def test_retry_queue_retries_with_backoff_in_order() -> None:
    q = RetryQueue(initial_s=0.01, max_s=0.04, max_attempts=4)
    seen: list[str] = []
    failures = {"b": 2}

    def call(name: str) -> None:
        if failures.get(name, 0):
            failures[name] -= 1
            raise ConnectionError("network down")
        seen.append(name)

    for name in "abc":
        q.submit(name, lambda name=name: call(name))  # type: ignore[misc]
    assert q.close(5.0)
    assert seen == ["a", "b", "c"]
    assert (q.done, q.retries, q.dropped) == (3, 2, 0)


def test_retry_queue_drops_a_call_that_keeps_failing(caplog: pytest.LogCaptureFixture) -> None:
    q = RetryQueue(initial_s=0.001, max_s=0.001, max_attempts=3)
    attempts: list[float] = []

    def broken() -> None:
        attempts.append(time.monotonic())
        raise TimeoutError("server unreachable")

    q.submit("log", broken)
    q.submit("log", lambda: None)
    assert not q.close(5.0)
    assert len(attempts) == 3 and (q.done, q.dropped) == (1, 1)
    assert any("W&B log failed 3 times; dropped" in r.getMessage() for r in caplog.records)


def test_retry_queue_close_is_bounded_even_when_a_call_hangs() -> None:
    q = RetryQueue(initial_s=10.0, max_s=10.0, max_attempts=5)
    release = threading.Event()
    q.submit("finish", lambda: release.wait(30) and None)
    q.submit("log", lambda: None)
    started = time.monotonic()
    assert not q.close(0.3)
    assert time.monotonic() - started < 10.0  # a generous bound: the call hangs for 30 s
    release.set()


# ----------------------------------------------------------------------------- fake server


class FlakyClient:
    """A W&B server that fails the first `failures` calls of each kind and is slow to answer."""

    def __init__(self, failures: int = 2, delay_s: float = 0.0,
                 gate: threading.Event | None = None) -> None:
        self.ready = False
        self.gate = gate  # when given, every call waits until it is set (a server not answering)
        self.calls = 0  # calls that reached the server
        self.failures = {"init": failures, "log": failures, "artifact": failures}
        self.delay_s = delay_s
        self.inits: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.artifacts: list[tuple[str, list[str], dict[str, Any], list[str]]] = []
        self.finished = False

    def _maybe_fail(self, kind: str) -> None:
        if self.gate is not None:
            self.gate.wait(60)
        self.calls += 1
        time.sleep(self.delay_s)
        if self.failures[kind] > 0:
            self.failures[kind] -= 1
            raise ConnectionError(f"{kind}: 503 Service Unavailable")

    def init(self, **kwargs: Any) -> None:
        self._maybe_fail("init")
        self.inits.append(kwargs)
        self.ready = True

    def log(self, data: dict[str, Any]) -> None:
        self._maybe_fail("log")
        self.logs.append(data)

    def log_artifact(self, folder: Path, name: str, aliases: list[str],
                     metadata: dict[str, Any]) -> None:
        self._maybe_fail("artifact")
        files = sorted(p.name for p in folder.iterdir())
        self.artifacts.append((name, aliases, metadata, files))

    def finish(self) -> None:
        self.finished = True


def wandb_config(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, ["model.size=tiny", "wandb.mode=offline", "wandb.project=tests",
                              "wandb.tags=[unit]", "wandb.retry_initial_s=0.01",
                              "wandb.retry_max_s=0.02", f"train.runs_dir={tmp_path}", *extra])


def update(timestep: int, version: int) -> UpdateDone:
    return UpdateDone(timestep=timestep, version=version, accepted=64,
                      metrics={"policy_loss": 0.1 * version, "entropy": 3.0},
                      games=GameStats(games=2, black_wins=1, draws=1, total_plies=80),
                      totals=GameStats(games=2 * version), policy_lag=1, workers_alive=1,
                      steps_per_s=321.0, worker_restarts=0, wall_time=float(version),
                      learner_busy=0.4)


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learner import Learner  # a real learner state in a real checkpoint

    config = load_config(None, ["model.size=tiny"])
    snapshot = RunSnapshot(config=config, timestep=128, version=2, driver={},
                           learner=Learner(config, capacity=8, device="cpu").state_dict(),
                           workers={})
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    return write_checkpoint(folder, snapshot, run_id="r", reason="interval")


def session(callback: WandbCallback, run_dir: Path, checkpoint: Path, *, start: int = 0,
            resumed: bool = False) -> EventBus:
    bus = EventBus()
    bus.register(callback)
    bus.emit(TrainStart(run_dir, callback.config, start, start // 64, resumed, bus=bus))
    for k in (1, 2):
        bus.emit(update(start + 64 * k, start // 64 + k))
    records = [run_dir / "game-1.svg", run_dir / "game-1.kif"]
    records[0].write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    records[1].write_text("先手：agent\n後手：random\n")
    bus.emit(EvaluationDone(timestep=start + 128, version=start // 64 + 2, opponent="random",
                            games=10, wins=8, losses=1, draws=1, elo=150.0, elo_ci=60.0,
                            details={"records": [str(p) for p in records]}))
    bus.emit(CheckpointSaved(start + 128, start // 64 + 2, checkpoint, "interval"))
    bus.emit(CheckpointSaved(start + 128, start // 64 + 2, checkpoint, "best"))
    bus.emit(TrainEnd(start + 128, start // 64 + 2, "completed"))
    assert bus.errors == 0
    return bus


def test_failing_uploader_is_retried_and_never_stalls_training(
        tmp_path: Path, checkpoint_files: Path) -> None:
    gate = threading.Event()  # the server answers nothing until the updates were emitted
    client = FlakyClient(failures=2, delay_s=0.05, gate=gate)
    callback = WandbCallback(wandb_config(tmp_path), client=client)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bus = EventBus()
    bus.register(callback)
    bus.emit(TrainStart(run_dir, callback.config, 0, 0, False, bus=bus))
    for k in range(1, 21):  # each call to the server takes 50 ms and the first ones fail
        bus.emit(update(64 * k, k))
    # The driver only enqueued: all 20 emits returned while the server had answered nothing
    # (were a call synchronous, emit would block on the gate for 60 s and the counts differ).
    assert client.calls == 0 and client.logs == [] and client.inits == []
    gate.set()
    bus.emit(CheckpointSaved(1280, 20, checkpoint_files, "interval"))
    bus.emit(TrainEnd(1280, 20, "completed"))
    assert client.finished and callback.queue.dropped == 0
    assert callback.queue.retries == 6  # two failures each of init, log and artifact
    assert [d["timestep"] for d in client.logs[:20]] == [64 * k for k in range(1, 21)]
    assert client.logs[-1] == {"timestep": 1280, "end_reason": "completed"}
    (name, aliases, metadata, files) = client.artifacts[0]
    assert name == f"checkpoint-{run_id_of(run_dir)}" and aliases == ["latest", "ts-1280"]
    assert metadata["timestep"] == 1280 and "manifest.json" in files
    assert not any((run_dir / ".wandb-staging").iterdir())  # staged links cleaned up
    init = client.inits[0]
    assert init["id"] == run_id_of(run_dir) and init["resume"] == "allow"
    assert init["config"]["wandb"]["mode"] == "offline" and init["tags"] == ["unit"]


def test_finish_is_bounded_when_the_server_hangs(tmp_path: Path) -> None:
    class Hanging(FlakyClient):
        def finish(self) -> None:
            time.sleep(30)

    callback = WandbCallback(wandb_config(tmp_path, "wandb.finish_timeout_s=0.3"),
                             client=Hanging(failures=0))
    bus = EventBus()
    bus.register(callback)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bus.emit(TrainStart(run_dir, callback.config, 0, 0, False, bus=bus))
    started = time.monotonic()
    bus.emit(TrainEnd(0, 0, "completed"))
    assert time.monotonic() - started < 10.0  # a generous bound: finish hangs for 30 s


def test_a_run_whose_init_never_succeeds_skips_its_calls(tmp_path: Path) -> None:
    client = FlakyClient(failures=100)
    callback = WandbCallback(wandb_config(tmp_path, "wandb.max_attempts=2"), client=client)
    bus = EventBus()
    bus.register(callback)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bus.emit(TrainStart(run_dir, callback.config, 0, 0, False, bus=bus))
    bus.emit(update(64, 1))
    bus.emit(TrainEnd(64, 1, "completed"))
    assert not client.logs and not client.finished and bus.errors == 0


# ----------------------------------------------------------------------------- real offline W&B


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline run's .wandb file (a LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 or len(chunk) < length:  # the end, or a chunk still being written
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(run_dir: Path, sessions: int = 1) -> list[dict[str, Any]]:
    # wandb-core finishes writing a run's file in the background: wait (bounded) for each
    # session's exit record.
    deadline = time.monotonic() + 30
    while True:
        files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        done = [f for f in files
                if any(r.WhichOneof("record_type") == "exit" for r in wandb_records(f))]
        if len(done) >= sessions or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    runs = []
    for file in files:
        out: dict[str, Any] = {"history": [], "artifacts": [], "config": {}}
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["id"], out["project"] = record.run.run_id, record.run.project
                out["tags"] = list(record.run.tags)
                out["config"].update({u.key: json.loads(u.value_json)
                                      for u in record.run.config.update})
            elif kind == "config":
                out["config"].update({u.key: json.loads(u.value_json)
                                      for u in record.config.update})
            elif kind == "history":
                out["history"].append({item.key or "/".join(item.nested_key):
                                       json.loads(item.value_json)
                                       for item in record.history.item})
            elif kind == "artifact":
                out["artifacts"].append((record.artifact.name, list(record.artifact.aliases),
                                         json.loads(record.artifact.metadata),
                                         sorted(m.path for m in record.artifact.manifest.contents)))
        runs.append(out)
    return runs


@pytest.mark.slow
def test_offline_run_logs_are_readable_and_resume_keeps_the_run_id(
        tmp_path: Path, checkpoint_files: Path) -> None:
    config = wandb_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_id = create_run_id(run_dir)
    session(WandbCallback(config), run_dir, checkpoint_files)
    session(WandbCallback(config), run_dir, checkpoint_files, start=128, resumed=True)

    first, second = read_offline_run(run_dir, sessions=2)
    assert first["id"] == second["id"] == run_id
    assert first["project"] == "tests" and first["tags"] == ["unit"]
    assert first["config"]["ppo"]["learning_rate"] == config.ppo.learning_rate
    assert first["config"]["model"]["size"] == "tiny"
    updates = [h for h in first["history"] if "train/policy_loss" in h]
    assert [h["timestep"] for h in updates] == [64, 128]
    assert updates[0]["games/finished"] == 2 and updates[0]["perf/steps_per_s"] == 321.0
    assert updates[0]["games/draw_share"] == 0.5
    evaluation = next(h for h in first["history"] if "eval/random/score" in h)
    assert evaluation["eval/random/score"] == 0.85 and evaluation["eval/elo"] == 150.0
    media = next(h for h in first["history"] if "eval/records/game-1/board/_type" in h)
    assert media["timestep"] == 128 and media["eval/records/game-1/kif/_type"] == "html-file"
    name, aliases, metadata, files = first["artifacts"][0]
    assert name == f"checkpoint-{run_id}" and set(aliases) == {"latest", "ts-128"}
    assert metadata["timestep"] == 128 and metadata["reason"] == "interval"
    assert "learner.pt" in files and "manifest.json" in files
    assert "best" in first["artifacts"][1][1]  # W&B adds "latest" to every new log
    assert [h["timestep"] for h in second["history"] if "train/policy_loss" in h] == [192, 256]


# ----------------------------------------------------------------------------- sweeps


def test_apply_sweep_validates_with_the_schema() -> None:
    base = load_config(None, ["model.size=tiny"])
    config = apply_sweep(base, {"ppo.learning_rate": 0.002, "train": {"rollout_steps": 16},
                                "_wandb": {"x": 1}})
    assert config.ppo.learning_rate == 0.002 and config.train.rollout_steps == 16
    assert config.model.size == "tiny"  # untouched fields keep the base's values
    with pytest.raises(ConfigError, match=r"sweep parameters: ppo.learning_rate: .*-1"):
        apply_sweep(base, {"ppo.learning_rate": -1})
    with pytest.raises(ConfigError, match="ppo.learnig_rate: unknown field"):
        apply_sweep(base, {"ppo.learnig_rate": 0.1})
    with pytest.raises(ConfigError, match="'ppo.epochs.x': ppo.epochs is a value"):
        apply_sweep(base, {"ppo.epochs.x": 1})


def test_example_sweep_parameters_are_config_fields() -> None:
    sweep = yaml.safe_load((EXAMPLES / "sweep.yaml").read_text())
    base = load_config(None, [])
    for name, spec in sweep["parameters"].items():
        for value in spec.get("values", [spec.get("min"), spec.get("max")]):
            apply_sweep(base, {name: value})


@pytest.mark.slow
def test_sweep_trial_applies_wandb_config_after_init(tmp_path: Path) -> None:
    import wandb

    calls: list[tuple[Config, str]] = []

    def init(**kwargs: Any) -> Any:
        # What the sweep controller does: the trial's parameters arrive with the run.
        assert kwargs["mode"] == "offline"
        return wandb.init(**kwargs, dir=str(tmp_path),
                          config={"ppo.entropy_coef": 0.03, "train.rollout_steps": 64})

    base = load_config(None, ["model.size=tiny", "wandb.mode=offline"])
    try:
        sweep_trial(base, lambda config, run_id: calls.append((config, run_id)), init=init)
    finally:
        wandb.finish()
    (config, run_id), = calls
    assert config.ppo.entropy_coef == 0.03 and config.train.rollout_steps == 64
    assert config.model.size == "tiny" and config.wandb.mode == "offline" and run_id

    def bad_init(**kwargs: Any) -> Any:
        return wandb.init(**kwargs, dir=str(tmp_path), config={"ppo.epochs": 0})

    with pytest.raises(ConfigError, match="ppo.epochs"):
        sweep_trial(base, lambda config, run_id: None, init=bad_init)
    assert wandb.run is None  # the rejected trial's run was finished


@pytest.mark.slow
def test_a_real_training_run_logs_offline_to_its_own_run_id(tmp_path: Path) -> None:
    # `sweep-agent --trial` outside a sweep: wandb.init gives no parameters, so this is a plain
    # training run with W&B offline, end to end through the CLI.
    import os
    import subprocess
    import sys

    from keisei_ray.training.metrics import METRICS_FILE, read_metrics

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
           "WANDB_DATA_DIR": str(tmp_path / "data"), "WANDB_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "sweep-agent", "--trial", "model.size=tiny",
         "env.max_moves=32", "train.games_per_worker=4", "train.rollout_steps=8",
         "train.num_workers=1", "train.learner_cpus=0", "train.total_timesteps=200",
         "ppo.epochs=1", "ppo.minibatch_size=32", "evaluation.enabled=false",
         "wandb.mode=offline", "wandb.project=e2e", f"train.runs_dir={tmp_path / 'runs'}",
         "train.run_name=trial"],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
        timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "trial"
    (run,) = read_offline_run(tmp_path)  # a trial's W&B run starts before its run folder
    assert run["id"] == run_id_of(run_dir) and run["project"] == "e2e"
    assert run["config"]["train"]["total_timesteps"] == 200
    logged = [h["timestep"] for h in run["history"] if "train/policy_loss" in h]
    updates = [r["timestep"] for r in read_metrics(run_dir / METRICS_FILE)
               if r["event"] == "update"]
    assert logged == updates and updates[-1] >= 200
    name, aliases, metadata, files = run["artifacts"][-1]
    assert name == f"checkpoint-{run['id']}"
    assert set(aliases) == {"latest", f"ts-{updates[-1]}"} and metadata["reason"] in (
        "end", "interval")
    assert "learner.pt" in files
