"""Run metrics without W&B: `metrics.jsonl` in the run folder and Ray dashboard metrics.

`MetricsLog` writes one JSON object per line for every update, evaluation and checkpoint (plus
the start and end of each session) — a run's history, readable with any JSON tool. On resume
it first drops the lines past the resumed timestep: that work is redone, and its lines with it.

`RayMetrics` (driver) and `LearnerMetrics` (inside the learner actor; the workers' own are in
`actors/metrics.py`) record `ray.util.metrics` gauges and counters, named `keisei_*`. Ray's
metrics agent on each node exports them in Prometheus text (`ray_keisei_*`, counters with
`_total`) on the node's metrics export port, which the Ray dashboard's Grafana panels and any
Prometheus scrape read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import IO, Any

from ray.util import metrics as ray_metrics

from keisei_ray.events import (
    Callback,
    CheckpointSaved,
    EvaluationDone,
    LearnerRestarted,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.files import set_file_mode, write_text_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: they become null (e.g. explained variance of a constant return)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    return value


class MetricsLog(Callback):
    """Appends every update, evaluation and checkpoint to RUN_DIR/metrics.jsonl."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._file: IO[str] | None = None

    def on_train_start(self, event: TrainStart) -> None:
        self.path = Path(event.run_dir) / METRICS_FILE
        if event.resumed and self.path.exists():
            drop_lines_after(self.path, event.timestep)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open until the end)
        set_file_mode(self.path)
        self._write({"event": "start", "timestep": event.timestep, "version": event.version,
                     "resumed": event.resumed})

    def on_update_done(self, event: UpdateDone) -> None:
        self._write({
            "event": "update", "timestep": event.timestep, "version": event.version,
            "accepted": event.accepted, "policy_lag": event.policy_lag,
            "steps_per_s": event.steps_per_s, "learner_busy": event.learner_busy,
            "worker_busy": event.worker_busy, "learner_waiting": 1.0 - event.learner_busy,
            "workers_waiting": 1.0 - event.worker_busy, "bottleneck": event.bottleneck,
            "workers_alive": event.workers_alive, "worker_restarts": event.worker_restarts,
            "learner_restarts": event.learner_restarts,
            "wall_time": event.wall_time, "metrics": event.metrics,
            "games": dataclasses.asdict(event.games), "totals": dataclasses.asdict(event.totals),
        })

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        self._write({
            "event": "evaluation", "timestep": event.timestep, "version": event.version,
            "opponent": event.opponent, "games": event.games, "wins": event.wins,
            "losses": event.losses, "draws": event.draws, "score": event.score,
            "elo": event.elo, "elo_ci": event.elo_ci,
        })

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self._write({"event": "checkpoint", "timestep": event.timestep, "version": event.version,
                     "path": str(event.path), "reason": event.reason})

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        # The work after the checkpoint is redone, and its lines with it (as on resume).
        if self.path is not None and self._file is not None:
            self._file.close()
            drop_lines_after(self.path, event.timestep)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._write({"event": "learner_restart", "timestep": event.timestep,
                     "version": event.version,
                     "checkpoint": None if event.checkpoint is None else str(event.checkpoint),
                     "transitions_lost": event.transitions_lost,
                     "lost_timestep": event.lost_timestep, "restarts": event.restarts,
                     "down_s": event.down_s, "error": event.error})

    def on_train_end(self, event: TrainEnd) -> None:
        self._write({"event": "end", "timestep": event.timestep, "version": event.version,
                     "reason": event.reason})
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(_finite({"time": round(time.time(), 3), **record}), sort_keys=False)
        self._file.write(line + "\n")
        self._file.flush()  # one line per update: a killed run loses at most the line in flight


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a torn last line, from a killed run, is skipped)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: line %d is not JSON (torn by a kill?): skipped", path, number)
    return records


def drop_lines_after(path: Path, timestep: int) -> int:
    """Rewrite `path` without the records past `timestep`; how many were dropped."""
    records = read_metrics(path)
    kept = [r for r in records if int(r.get("timestep", 0)) <= timestep]
    dropped = len(records) - len(kept)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    if dropped:
        log.info("%s: dropped %d record(s) past the resumed timestep %d", path, dropped, timestep)
    return dropped


# ----------------------------------------------------------------------------- Ray metrics


class RayMetrics(Callback):
    """The driver's Ray dashboard metrics, tagged with the run folder's name."""

    def __init__(self) -> None:
        self._gauges: dict[str, Any] = {}
        self._counters: dict[str, Any] = {}
        self._last_checkpoint = 0.0

    def on_train_start(self, event: TrainStart) -> None:
        m = ray_metrics
        tags = {"run": Path(event.run_dir).name}
        gauges = {
            "timesteps": "accepted transitions (the driver's timestep counter)",
            "policy_version": "learner policy version",
            "steps_per_second": "accepted transitions per second (this session)",
            "policy_lag": "largest policy lag among the last update's batches",
            "learner_busy_fraction": "fraction of the wall time the learner spent updating",
            "workers_alive": "self-play workers delivering batches",
            "worker_restarts": "worker actors restarted by Ray (this session)",
            "checkpoint_age_seconds": "seconds since the newest checkpoint was saved",
            "eval_score": "evaluation score (wins + draws/2) / games, by opponent",
            "elo": "Elo of the last evaluated policy",
        }
        for name, description in gauges.items():
            keys = ("run", "opponent") if name == "eval_score" else ("run",)
            gauge = m.Gauge(f"keisei_{name}", description=description, tag_keys=keys)
            gauge.set_default_tags(tags)
            self._gauges[name] = gauge
        counters = {"updates": "learner updates", "games_finished": "self-play games finished",
                    "learner_restarts": "learners restarted from a checkpoint",
                    "transitions_lost": "accepted transitions lost with a learner (rolled "
                    "back to its checkpoint)"}
        for name, description in counters.items():
            counter = m.Counter(f"keisei_{name}", description=description, tag_keys=("run",))
            counter.set_default_tags(tags)
            self._counters[name] = counter
        manifests = (Path(event.run_dir) / "checkpoints").glob("ckpt-*/manifest.json")
        self._last_checkpoint = max((p.stat().st_mtime for p in manifests), default=time.time())

    def on_update_done(self, event: UpdateDone) -> None:
        if not self._gauges:
            return
        g = self._gauges
        g["timesteps"].set(event.timestep)
        g["policy_version"].set(event.version)
        g["steps_per_second"].set(event.steps_per_s)
        g["policy_lag"].set(event.policy_lag)
        g["learner_busy_fraction"].set(event.learner_busy)
        g["workers_alive"].set(event.workers_alive)
        g["worker_restarts"].set(event.worker_restarts)
        g["checkpoint_age_seconds"].set(time.time() - self._last_checkpoint)
        self._counters["updates"].inc(1.0)
        if event.games.games:
            self._counters["games_finished"].inc(float(event.games.games))

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        if not self._gauges:
            return
        self._gauges["timesteps"].set(event.timestep)
        self._gauges["policy_version"].set(event.version)
        self._counters["learner_restarts"].inc(1.0)
        if event.transitions_lost:
            self._counters["transitions_lost"].inc(float(event.transitions_lost))

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        if event.reason != "best":
            self._last_checkpoint = time.time()
            if self._gauges:
                self._gauges["checkpoint_age_seconds"].set(0.0)

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        if not self._gauges:
            return
        self._gauges["eval_score"].set(event.score, tags={"opponent": event.opponent})
        if event.elo is not None:
            self._gauges["elo"].set(event.elo)


class LearnerMetrics:
    """Recorded by the learner actor after each update."""

    def __init__(self) -> None:
        m = ray_metrics
        self.update_s = m.Gauge("keisei_learner_update_seconds",
                                description="seconds of the last update (decode + PPO)")
        self.samples_per_s = m.Gauge("keisei_learner_samples_per_second",
                                     description="PPO samples per second of the last update")
        self.transitions = m.Counter("keisei_learner_transitions",
                                     description="transitions the learner trained on")
        self.dropped = m.Counter("keisei_learner_dropped_batches",
                                 description="batches dropped as too old")

    def record(self, busy_s: float, accepted: int, dropped: int, samples_per_s: float) -> None:
        self.update_s.set(busy_s)
        self.samples_per_s.set(samples_per_s)
        if accepted:
            self.transitions.inc(float(accepted))
        if dropped:
            self.dropped.inc(float(dropped))
