"""metrics.jsonl (without Ray) and the Ray dashboard metrics, scraped from the node's endpoint."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray

from keisei_ray.config_loading import load_config
from keisei_ray.events import (
    CheckpointSaved,
    EvaluationDone,
    EventBus,
    GameStats,
    LearnerRestarted,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer
from keisei_ray.training.metrics import METRICS_FILE, MetricsLog, RayMetrics, read_metrics


def update(timestep: int, version: int, **metrics: float) -> UpdateDone:
    return UpdateDone(timestep=timestep, version=version, accepted=50, metrics=metrics,
                      games=GameStats(games=1, black_wins=1, total_plies=30),
                      totals=GameStats(games=version), policy_lag=1, workers_alive=2,
                      steps_per_s=100.0, worker_restarts=0, wall_time=float(version),
                      learner_busy=0.5)


def session(run_dir: Path, start: int, updates: int, *, resumed: bool = False) -> None:
    bus = EventBus()
    bus.register(MetricsLog())
    bus.emit(TrainStart(run_dir, None, start, start // 50, resumed, bus=bus))
    for k in range(1, updates + 1):
        bus.emit(update(start + 50 * k, start // 50 + k, policy_loss=0.25,
                        explained_variance=float("nan")))
    bus.emit(EvaluationDone(timestep=start + 50, version=start // 50 + 1, opponent="random",
                            games=4, wins=3, losses=1, draws=0, elo=12.5, elo_ci=40.0))
    bus.emit(CheckpointSaved(start + 50 * updates, start // 50 + updates,
                             run_dir / "checkpoints" / "ckpt-x", "interval"))
    bus.emit(TrainEnd(start + 50 * updates, start // 50 + updates, "completed"))
    assert bus.errors == 0


def test_metrics_jsonl_has_every_update_evaluation_and_checkpoint(tmp_path: Path) -> None:
    session(tmp_path, 0, 3)
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["event"] for r in records] == [
        "start", "update", "update", "update", "evaluation", "checkpoint", "end"]
    first = records[1]
    assert (first["timestep"], first["version"], first["accepted"]) == (50, 1, 50)
    assert first["metrics"] == {"policy_loss": 0.25, "explained_variance": None}  # NaN -> null
    assert first["games"]["black_wins"] == 1 and first["totals"]["games"] == 1
    assert first["learner_busy"] == 0.5
    evaluation = records[4]
    assert (evaluation["opponent"], evaluation["score"], evaluation["elo"]) == (
        "random", 0.75, 12.5)
    # Strict JSON on every line (no NaN tokens).
    for line in (tmp_path / METRICS_FILE).read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))


def test_resume_drops_the_records_of_lost_work(tmp_path: Path) -> None:
    session(tmp_path, 0, 4)  # up to timestep 200; say the newest good checkpoint was at 100
    with open(tmp_path / METRICS_FILE, "a") as handle:
        handle.write('{"event": "update", "timest')  # torn by a SIGKILL
    session(tmp_path, 100, 2, resumed=True)
    updates = [r["timestep"] for r in read_metrics(tmp_path / METRICS_FILE)
               if r["event"] == "update"]
    assert updates == [50, 100, 150, 200]  # the first 150/200 were dropped, then redone


# ----------------------------------------------------------------------------- Ray


def scrape() -> str:
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode("utf-8"))


EXPECTED = [
    # driver
    "ray_keisei_timesteps", "ray_keisei_steps_per_second", "ray_keisei_games_finished_total",
    "ray_keisei_policy_lag", "ray_keisei_learner_busy_fraction", "ray_keisei_worker_restarts",
    "ray_keisei_checkpoint_age_seconds", "ray_keisei_workers_alive", "ray_keisei_updates_total",
    # learner
    "ray_keisei_learner_update_seconds", "ray_keisei_learner_transitions_total",
    # workers
    "ray_keisei_worker_collect_seconds", "ray_keisei_worker_transitions_total",
    "ray_keisei_worker_games_total",
]


@pytest.mark.slow
def test_learner_restart_drops_the_records_of_lost_work_and_says_so(tmp_path: Path) -> None:
    bus = EventBus()
    bus.register(MetricsLog())
    bus.emit(TrainStart(tmp_path, None, 0, 0, False, bus=bus))
    for k in range(1, 5):
        bus.emit(update(50 * k, k))
    bus.emit(LearnerRestarted(timestep=100, version=2, checkpoint=tmp_path / "ckpt-100",
                              transitions_lost=100, lost_timestep=200, restarts=1, down_s=2.5,
                              error="the learner failed: ActorDiedError: gone"))
    bus.emit(update(150, 3))
    bus.emit(TrainEnd(150, 3, "completed"))
    assert bus.errors == 0
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [(r["event"], r["timestep"]) for r in records] == [
        ("start", 0), ("update", 50), ("update", 100), ("learner_restart", 100),
        ("update", 150), ("end", 150)]
    restart = records[3]
    assert (restart["transitions_lost"], restart["lost_timestep"], restart["restarts"]) == (
        100, 200, 1)
    assert restart["checkpoint"] == str(tmp_path / "ckpt-100")


def test_dashboard_metrics_endpoint_exports_driver_learner_and_worker_metrics(
        tmp_path: Path, ray_local: None) -> None:
    config = load_config(None, [
        "model.size=tiny", "env.max_moves=16", "train.games_per_worker=4",
        "train.rollout_steps=8", "train.num_workers=1", "train.learner_cpus=0",
        "train.total_timesteps=100000000", "ppo.epochs=1", "ppo.minibatch_size=64",
        "checkpoint.interval_timesteps=200", f"train.runs_dir={tmp_path}"])
    run_dir = tmp_path / "metrics-run"
    run_dir.mkdir()
    stop = threading.Event()
    trainer = Trainer(config, run_dir, stop=stop,
                      callbacks=[CheckpointCallback(config), RayMetrics(), MetricsLog()])
    thread = threading.Thread(target=trainer.run, name="train")
    thread.start()
    missing = EXPECTED
    text = ""
    try:
        deadline = time.monotonic() + 120
        while missing and time.monotonic() < deadline and thread.is_alive():
            time.sleep(2)
            text = scrape()
            missing = [name for name in EXPECTED if not re.search(rf"^{name}\{{", text, re.M)]
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not missing, f"not exported: {missing}"
    timesteps = re.search(r'^ray_keisei_timesteps\{[^}]*run="metrics-run"[^}]*\} (\S+)', text,
                          re.M)
    assert timesteps is not None and float(timesteps.group(1)) > 0
    assert re.search(r'^ray_keisei_worker_games_total\{[^}]*worker="0"', text, re.M)
    assert (run_dir / METRICS_FILE).exists()
