"""Profiling on demand (`profile.updates=N`): the driver's side of it.

After `profile.skip_updates` updates, the learner and one self-play worker start torch.profiler
sessions (learner.profiling.ProfileSession); N updates later both stop and send their traces
back. Written to RUN_DIR/profile/:

    learner.pt.trace.json Chrome/Perfetto trace of the learner's N updates (TensorBoard
                          profiler plugin: `tensorboard --logdir RUN_DIR/profile`)
    worker-<id>.pt.trace.json  the same worker's collects in that window
    ray_timeline.json     Ray's task timeline (ray.timeline), cut to the same window
    summary.json          the table below, as data

and a summary table goes to the log: the time of each labelled group (decode, features, forward,
backward, optimizer, broadcast on the learner; collect and its parts on the worker) as a share
of the window, and the learner's top ops. Nothing of this runs when `profile.updates` is 0.
Starts and stops are sent while the learner and the workers are idle (between an update and
the next round), and an actor runs its calls in order, so the window is exactly N updates.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from keisei_ray.config import Config
from keisei_ray.files import make_dir, write_atomic, write_text_atomic
from learner.profiling import ProfileOutput

log = logging.getLogger(__name__)

LEARNER_GROUPS = ("decode", "features", "forward", "backward", "optimizer", "broadcast")
WORKER_GROUPS = ("collect", "load_weights", "features", "forward", "env_step", "encode")


class ProfileWindow:
    """Start and stop the profiles around N updates; call `after_update` after each one."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        self.config = config.profile
        self.folder = run_dir / "profile"
        self.enabled = self.config.updates > 0
        self.recording = False
        self.done = not self.enabled
        self._learner: Any = None
        self._worker: tuple[int, Any] | None = None
        self._started_at = 0.0  # wall clock, seconds since the epoch
        self._updates = 0

    def after_update(self, updates_done: int, learner: Any,
                     workers: list[tuple[int, Any]]) -> None:
        """`updates_done`: updates of this session so far; `workers`: (id, actor) ready now."""
        if self.done:
            return
        if not self.recording:
            if updates_done >= self.config.skip_updates:
                self._start(learner, workers)
            return
        self._updates += 1
        if self._updates >= self.config.updates:
            self.finish()

    def _start(self, learner: Any, workers: list[tuple[int, Any]]) -> None:
        cfg = self.config
        self._learner = learner
        self._worker = min(workers, key=lambda w: w[0]) if workers else None
        started = learner.profile_start.remote(cfg.memory, cfg.with_stack)
        if self._worker is not None:
            try:
                ray.get(self._worker[1].profile_start.remote(cfg.memory, cfg.with_stack))
            except (RayActorError, RayTaskError) as exc:  # a worker comes and goes
                log.warning("profile: worker-%d could not start its profile (%s): the "
                            "learner's alone", self._worker[0], type(exc).__name__)
                self._worker = None
        ray.get(started)  # a lost learner: the driver's to handle (it restarts it)
        self._started_at = time.time()
        self.recording = True
        log.info("profiling %d update(s)%s", cfg.updates,
                 f" and worker-{self._worker[0]}'s collects" if self._worker else "")

    def finish(self) -> dict[str, Any] | None:
        """Stop (also when the run ends inside the window), write the files, log the table."""
        if not self.recording:
            return None
        self.recording, self.done = False, True
        stopped_at = time.time()
        make_dir(self.folder)
        outputs: dict[str, ProfileOutput] = {}
        for role, actor in self._actors():
            try:
                outputs[role] = ray.get(actor.profile_stop.remote(self.config.top_ops))
            except (RayActorError, RayTaskError) as exc:
                log.warning("profile: %s gave no trace (%s)", role, type(exc).__name__)
        for role, output in outputs.items():
            write_atomic(self.folder / f"{role}.pt.trace.json", output.trace)
        timeline = write_timeline(self.folder / "ray_timeline.json", self._started_at,
                                  stopped_at)
        summary = summarize(outputs, stopped_at - self._started_at, self._updates,
                            timeline_events=timeline)
        write_text_atomic(self.folder / "summary.json", json.dumps(summary, indent=2))
        log.info("profile of %d update(s) in %s:\n%s", self._updates, self.folder,
                 format_summary(summary))
        return summary

    def _actors(self) -> list[tuple[str, Any]]:
        actors = [("learner", self._learner)]
        if self._worker is not None:
            actors.append((f"worker-{self._worker[0]}", self._worker[1]))
        return actors


def write_timeline(path: Path, start: float, stop: float) -> int:
    """Ray's timeline events that overlap [start, stop] (wall clock seconds) into `path`;
    how many. Events without a time are kept (process and thread names)."""
    events: list[dict[str, Any]] = ray.timeline() or []
    lo, hi = start * 1e6, stop * 1e6
    kept = [e for e in events if "ts" not in e
            or (lo <= float(e["ts"]) + float(e.get("dur", 0.0)) and float(e["ts"]) <= hi)]
    write_text_atomic(path, json.dumps(kept))
    return len(kept)


def summarize(outputs: dict[str, ProfileOutput], window_s: float, updates: int, *,
              timeline_events: int = 0) -> dict[str, Any]:
    """Group times (ms and share of the window) per role, and the learner's top ops."""
    window_ms = max(window_s * 1e3, 1e-9)
    roles: dict[str, Any] = {}
    for role, output in outputs.items():
        names = LEARNER_GROUPS if role == "learner" else WORKER_GROUPS
        roles[role] = {name: {"ms": output.groups_ms.get(name, 0.0),
                              "share": output.groups_ms.get(name, 0.0) / window_ms}
                       for name in names}
    learner = outputs.get("learner")
    return {"updates": updates, "window_s": window_s, "groups": roles,
            "device": learner.device if learner else "unknown",
            "top_ops": learner.top_ops if learner else [],
            "ray_timeline_events": timeline_events}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"  window {summary['window_s']:.1f} s, {summary['updates']} update(s), "
             f"learner on {summary['device']}"]
    for role, groups in summary["groups"].items():
        parts = [f"{name} {g['share']:.0%}" for name, g in groups.items()]
        lines.append(f"  {role:<10} " + " | ".join(parts))
    if summary["top_ops"]:
        lines.append(f"  {'top learner ops':<44} {'calls':>7} {'self CPU ms':>12} "
                     f"{'self CUDA ms':>12}")
        for op in summary["top_ops"]:
            lines.append(f"  {op['name'][:44]:<44} {op['calls']:>7} {op['self_cpu_ms']:>12.1f} "
                         f"{op['self_cuda_ms']:>12.1f}")
    return "\n".join(lines)
