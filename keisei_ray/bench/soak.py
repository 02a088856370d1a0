"""`keisei-ray bench soak`: a long training run under fault injection, watched for leaks,
stalls and lost steps.

It trains a preset (default `local`) with background evaluation and checkpoints on, for
`minutes`, while `SoakMonitor` (a Callback plus a sampling thread) records the resident memory
(RSS) of the driver, the learner, the self-play workers and the evaluation actors, the
steps/s of every interval, and the gap between consecutive updates; every `kill_every_s` it
SIGKILLs one self-play worker process (Ray restarts it: `train.max_worker_restarts` is made
unlimited), and every `kill_learner_every_s` the learner's (the driver restarts it from the
last checkpoint: `train.learner_max_restarts` is made unlimited). At every update it checks the
driver's timestep counter against the transitions the learner accepted, and at every learner
restart that the counter went back to a value it had at an update, by exactly the transitions
the restart reports lost. Only processes descended from this driver are watched or killed.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray

from keisei_ray.api import graceful_interrupt
from keisei_ray.arena.background import BackgroundEvaluation
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import (
    Callback,
    CheckpointSaved,
    EvaluationDone,
    LearnerRestarted,
    TrainStart,
    UpdateDone,
)
from keisei_ray.store.checkpoint import create_run_id
from keisei_ray.store.run_dir import write_run_files
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer
from keisei_ray.training.ray_cluster import connect_ray

# Ray ships psutil in ray/thirdparty_files and puts that folder on sys.path when imported.
psutil: Any = importlib.import_module("psutil")

log = logging.getLogger(__name__)

ROLES = ("driver", "learner", "workers", "evaluation")
# The targets of a 60-minute soak on a 2-core machine (docs/soak.md).
MAX_RSS_GROWTH = 0.05  # of each role, after warm-up
MAX_UPDATE_GAP_S = 30.0
_TITLES = {"learner": "ray::LearnerActor", "workers": "ray::SelfPlayActor",
           "evaluation": "ray::Evaluat"}


@dataclass
class Sample:
    """One look at the run: seconds since the start, RSS MB by role, steps/s since the last."""

    t: float
    rss_mb: dict[str, float]
    processes: dict[str, int]
    timestep: int
    steps_per_s: float


@dataclass
class SoakReport:
    minutes: float
    samples: list[Sample] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)  # seconds since the start
    worker_restarts: int = 0
    updates: int = 0
    timestep: int = 0
    accepted: int = 0
    counter_mismatches: int = 0
    max_update_gap_s: float = 0.0
    checkpoints: int = 0
    evaluations: int = 0
    reason: str = ""
    warmup_s: float = 0.0
    learner_kills: list[float] = field(default_factory=list)  # seconds since the start
    learner_restarts: int = 0
    transitions_lost: list[int] = field(default_factory=list)  # per learner restart
    loss_to_update_s: list[float] = field(default_factory=list)  # kill -> next update

    def rss_growth(self) -> dict[str, float | None]:
        """Per role: mean RSS of the last samples over the first after warm-up, minus 1; each
        window 5% of those samples, at least 3 (a learner's RSS swings by tens of MB within an
        update and a heap trim, so 3 samples of a long run would compare phases, not trends)."""
        after = [s for s in self.samples if s.t >= self.warmup_s]
        growth: dict[str, float | None] = {}
        for role in ROLES:
            values = [s.rss_mb.get(role, 0.0) for s in after if s.rss_mb.get(role)]
            if len(values) < 4:
                growth[role] = None
                continue
            k = min(max(3, len(values) // 20), len(values) // 2)
            first, last = sum(values[:k]) / k, sum(values[-k:]) / k
            growth[role] = last / first - 1.0
        return growth

    def missed_targets(self) -> list[str]:
        """The targets this run missed, each named (empty: all met)."""
        missed = [f"RSS {role} grew {100 * grew:+.1f}% (at most +{100 * MAX_RSS_GROWTH:.0f}%)"
                  for role, grew in self.rss_growth().items()
                  if grew is not None and grew > MAX_RSS_GROWTH]
        if self.timestep != self.accepted or self.counter_mismatches:
            missed.append(f"timestep counter {self.timestep} != accepted {self.accepted} "
                          f"({self.counter_mismatches} updates off)")
        if self.max_update_gap_s > MAX_UPDATE_GAP_S:
            missed.append(f"a gap of {self.max_update_gap_s:.1f} s between updates (at most "
                          f"{MAX_UPDATE_GAP_S:.0f} s)")
        return missed

    def figures(self) -> dict[str, Any]:
        rates = [s.steps_per_s for s in self.samples if s.t >= self.warmup_s and s.steps_per_s]
        growth = self.rss_growth()
        out: dict[str, Any] = {
            "minutes": self.minutes, "end": self.reason, "updates": self.updates,
            "timestep counter": self.timestep, "accepted transitions": self.accepted,
            "counter == accepted": self.timestep == self.accepted and not self.counter_mismatches,
            "workers killed": len(self.kills), "worker restarts": self.worker_restarts,
            "learners killed": len(self.learner_kills),
            "learner restarts": self.learner_restarts,
            "transitions lost per restart": list(self.transitions_lost),
            "loss to next update (s)": [round(s, 1) for s in self.loss_to_update_s],
            "longest gap between updates (s)": round(self.max_update_gap_s, 1),
            "checkpoints saved": self.checkpoints, "evaluations": self.evaluations,
            "steps/s min after warm-up": round(min(rates), 1) if rates else None,
            "steps/s mean after warm-up": round(sum(rates) / len(rates), 1) if rates else None,
        }
        for role in ROLES:
            grew = growth[role]
            last = next((s.rss_mb[role] for s in reversed(self.samples) if s.rss_mb.get(role)),
                        None)
            out[f"RSS {role} MB (last)"] = None if last is None else round(last, 1)
            out[f"RSS {role} growth after warm-up"] = (
                None if grew is None else f"{100 * grew:+.1f}%")
        out["targets"] = "; ".join(self.missed_targets()) or "all met"
        return out

    def to_json(self) -> dict[str, Any]:
        return {"figures": self.figures(), "samples": [asdict(s) for s in self.samples],
                "kills": self.kills, "learner_kills": self.learner_kills}


def _role(process: Any) -> str | None:
    try:
        title = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for role, prefix in _TITLES.items():
        if title.startswith(prefix):
            return role
    return None


def ray_processes() -> dict[str, list[Any]]:
    """This driver's actor processes by role (only its own descendants)."""
    found: dict[str, list[Any]] = {role: [] for role in ROLES}
    me = psutil.Process(os.getpid())
    found["driver"].append(me)
    for child in me.children(recursive=True):
        role = _role(child)
        if role is not None:
            found[role].append(child)
    return found


def _rss_mb(processes: list[Any]) -> float:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total / 2**20


class SoakMonitor(Callback):
    """Samples RSS and throughput every `sample_every_s`, kills a worker every `kill_every_s`
    and the learner every `kill_learner_every_s` (0: never), and checks the timestep counter
    at every update and learner restart."""

    def __init__(self, report: SoakReport, *, sample_every_s: float = 10.0,
                 kill_every_s: float = 120.0, kill_learner_every_s: float = 0.0) -> None:
        self.report = report
        self.sample_every_s = sample_every_s
        self.kill_every_s = kill_every_s
        self.kill_learner_every_s = kill_learner_every_s
        self._counters = {0}  # every value the timestep counter had at an update
        self._lost_at: list[float] = []  # monotonic times of learner kills not yet restarted
        self._restarted_at: float | None = None  # of the latest loss, until the next update
        self._started = time.monotonic()
        self._timestep = 0
        self._last_update: float | None = None
        self._last_sample = (0.0, 0)
        self._trained = 0  # accepted transitions, those later lost with a learner included
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-monitor", daemon=True)
        self._lock = threading.Lock()
        self._victim = 0

    def on_train_start(self, event: TrainStart) -> None:
        self._started = time.monotonic()
        self._timestep = event.timestep
        self.report.accepted = event.timestep
        self._counters = {event.timestep}
        self._thread.start()

    def on_update_done(self, event: UpdateDone) -> None:
        now = time.monotonic()
        with self._lock:
            report = self.report
            report.updates += 1
            report.accepted += event.accepted
            report.timestep = event.timestep
            report.worker_restarts = event.worker_restarts
            if event.timestep != report.accepted:
                report.counter_mismatches += 1
                log.error("timestep counter %d != accepted transitions %d", event.timestep,
                          report.accepted)
            if self._last_update is not None:
                report.max_update_gap_s = max(report.max_update_gap_s, now - self._last_update)
            self._last_update = now
            self._timestep = event.timestep
            self._trained += event.accepted
            self._counters.add(event.timestep)
            if self._restarted_at is not None:
                report.loss_to_update_s.append(now - self._restarted_at)
                self._restarted_at = None

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        with self._lock:
            report = self.report
            lost = report.accepted - event.timestep
            if event.timestep not in self._counters or lost != event.transitions_lost:
                report.counter_mismatches += 1
                log.error("learner restart: the counter went back from %d to %d, reporting %d "
                          "transitions lost (the accepted ones say %d)", event.lost_timestep,
                          event.timestep, event.transitions_lost, lost)
            report.accepted = event.timestep
            report.learner_restarts = event.restarts
            report.transitions_lost.append(event.transitions_lost)
            self._timestep = event.timestep
            # From the kill when this monitor made it, else from when the driver saw the loss.
            seen = time.monotonic() - event.down_s
            self._restarted_at = self._lost_at.pop(0) if self._lost_at else seen
            self._lost_at.clear()

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self.report.checkpoints += 1

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        self.report.evaluations += 1

    def on_train_end(self, event: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._sample()
        self.report.reason = event.reason
        self.report.timestep = event.timestep

    def _loop(self) -> None:
        next_kill = self.kill_every_s if self.kill_every_s > 0 else float("inf")
        every = self.kill_learner_every_s
        next_learner_kill = every if every > 0 else float("inf")
        while not self._stop.wait(self.sample_every_s):
            self._sample()
            if time.monotonic() - self._started >= next_kill:
                self._kill_one()
                next_kill += self.kill_every_s
            if time.monotonic() - self._started >= next_learner_kill:
                self._kill_learner()
                next_learner_kill += every

    def _sample(self) -> None:
        t = time.monotonic() - self._started
        processes = ray_processes()
        with self._lock:
            timestep, trained = self._timestep, self._trained
        last_t, last_trained = self._last_sample
        # The work done: a learner restart takes the counter back, not the rate below zero.
        rate = (trained - last_trained) / (t - last_t) if t > last_t else 0.0
        self._last_sample = (t, trained)
        self.report.samples.append(Sample(
            t=round(t, 1), rss_mb={role: round(_rss_mb(p), 1) for role, p in processes.items()},
            processes={role: len(p) for role, p in processes.items()}, timestep=timestep,
            steps_per_s=round(rate, 1)))

    def _kill_one(self) -> None:
        workers = sorted(ray_processes()["workers"], key=lambda p: p.pid)
        if not workers:
            log.warning("soak: no worker process to kill")
            return
        victim = workers[self._victim % len(workers)]
        self._victim += 1
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.report.kills.append(round(time.monotonic() - self._started, 1))
        log.warning("soak: killed worker process %d", victim.pid)

    def _kill_learner(self) -> None:
        learners = ray_processes()["learner"]
        if not learners:
            log.warning("soak: no learner process to kill (a restart still under way?)")
            return
        now = time.monotonic()
        for victim in learners:
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            log.warning("soak: killed learner process %d", victim.pid)
        with self._lock:
            self._lost_at.append(now)
        self.report.learner_kills.append(round(now - self._started, 1))


def soak_config(preset: str, minutes: float, overrides: tuple[str, ...] = ()) -> Config:
    """The preset trained for `minutes`, evaluation and checkpoints on, restarts unlimited."""
    return load_config(None, [
        "train.total_timesteps=1000000000000", f"train.max_minutes={minutes}",
        "train.max_worker_restarts=-1", "train.learner_max_restarts=-1", "evaluation.enabled=true",
        "evaluation.interval_timesteps=20000", "evaluation.games=16",
        "evaluation.final_wait_s=30", "checkpoint.interval_timesteps=20000", "wandb.mode=disabled",
        *overrides], preset=preset)


def bench_soak(minutes: float, *, preset: str = "local", kill_every_s: float = 120.0,
               kill_learner_every_s: float = 0.0, sample_every_s: float = 10.0,
               warmup_s: float | None = None, run_dir: Path | None = None,
               overrides: tuple[str, ...] = ()) -> SoakReport:
    """Train for `minutes` under the monitor; returns the report (see `SoakReport.figures`)."""
    config = soak_config(preset, minutes, overrides)
    report = SoakReport(minutes=minutes,
                        warmup_s=min(300.0, 15.0 * minutes) if warmup_s is None else warmup_s)
    with tempfile.TemporaryDirectory(prefix="keisei-soak-") as tmp:
        folder = run_dir or Path(tmp) / "run"
        folder.mkdir(parents=True, exist_ok=True)
        write_run_files(config, folder)
        create_run_id(folder)
        session = connect_ray(config.train.address)
        try:
            monitor = SoakMonitor(report, sample_every_s=sample_every_s,
                                  kill_every_s=kill_every_s,
                                  kill_learner_every_s=kill_learner_every_s)
            callbacks: list[Callback] = [BackgroundEvaluation(config, folder),
                                         CheckpointCallback(config), monitor]
            trainer = Trainer(config, folder, callbacks=callbacks)
            with graceful_interrupt(trainer.stop):  # Ctrl-C: stop cleanly, keep the report
                result = trainer.run()
            report.worker_restarts = result.worker_restarts
        finally:
            if session.started_here:
                ray.shutdown()
    return report
