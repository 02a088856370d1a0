"""`profile.updates=N` and `train.autotune` in a real smoke run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keisei_ray.store.checkpoint import list_checkpoints, read_checkpoint
from keisei_ray.training.metrics import read_metrics

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
LEARNER_LABELS = {"decode", "features", "forward", "backward", "optimizer", "broadcast"}
WORKER_LABELS = {"collect", "features", "forward", "env_step", "encode"}


def _event_names(path: Path) -> set[str]:
    trace = json.loads(path.read_text(encoding="utf-8"))
    return {event.get("name") for event in trace["traceEvents"]}


@pytest.mark.slow
def test_a_profiled_autotuned_smoke_run_writes_traces_and_records_its_choices(
        tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "train", "--preset", "smoke",
         f"train.runs_dir={tmp_path}", "train.run_name=prof", "evaluation.enabled=false",
         "profile.updates=2", "profile.with_stack=false", "train.autotune=true"],
        capture_output=True, text=True, timeout=600, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "prof"
    folder = run_dir / "profile"

    assert _event_names(folder / "learner.pt.trace.json") >= LEARNER_LABELS
    assert _event_names(folder / "worker-0.pt.trace.json") >= WORKER_LABELS
    timeline = json.loads((folder / "ray_timeline.json").read_text(encoding="utf-8"))
    assert isinstance(timeline, list) and any(
        str(e.get("name", "")).startswith("task") for e in timeline)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["updates"] == 2
    assert summary["groups"]["learner"]["backward"]["ms"] > 0
    assert summary["groups"]["worker-0"]["collect"]["ms"] > 0
    assert summary["top_ops"]
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "profile of 2 update(s)" in log

    # Where the run waits: each update line says it, with a hint.
    updates = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "update"]
    assert updates and all(0.0 <= r["learner_waiting"] <= 1.0 for r in updates)
    assert all(0.0 <= r["workers_waiting"] <= 1.0 and r["bottleneck"] for r in updates)

    # Autotune: its choices keep the transitions per collect and are in the checkpoint.
    assert "autotune: games_per_worker 16 x rollout_steps 32 ->" in log
    assert "autotune: ppo.micro_batch_size None ->" in log
    saved = read_checkpoint(list_checkpoints(run_dir)[-1]).config
    assert saved.train.games_per_worker * saved.train.rollout_steps == 16 * 32
    assert saved.ppo.micro_batch_size is not None
    assert saved.ppo.minibatch_size == 256 and saved.ppo.epochs == 2
