"""The learner's restarts: when one is allowed, the checkpoint a new learner starts from, and
waiting for room to place it.

The driver (driver.py) raises `LearnerGone` where Ray reports the learner actor gone (its
process killed, its node removed, an out-of-memory kill) and restarts it within
`train.learner_max_restarts` per `train.learner_restart_window_s`: a new actor, restored from
the newest good checkpoint (read and verified as `--resume` reads it), or from the run's start
when none was saved yet. Each restart begins a new *lineage* of policy versions: the version
numbers after the checkpoint are made again, by other weights, so workers and batches carry the
lineage with the version.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from keisei_ray.config import Config
from keisei_ray.store.checkpoint import (
    RUN_FILE,
    CheckpointError,
    RunSnapshot,
    list_checkpoints,
    read_checkpoint,
    run_id_of,
)
from keisei_ray.training.ray_cluster import TrainingError

log = logging.getLogger(__name__)

_WAIT_NOTICE_S = 3.0  # a new learner not placed by then is waiting for room: say so


class LearnerGone(TrainingError):
    """The learner actor is gone. `in_hand`: the batches the driver held, gathered and not
    trained on by a surviving learner (some may still be usable by the restored one)."""

    def __init__(self, message: str, in_hand: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.in_hand = list(in_hand)
        self.at = time.monotonic()  # when the driver saw the loss


class RestartBudget:
    """At most `limit` restarts within any `window_s` seconds (-1: unlimited, 0: none)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.times: deque[float] = deque()
        self.total = 0

    def take(self, now: float) -> bool:
        """Count a restart at `now` when the budget allows one; False: it does not."""
        while self.times and now - self.times[0] >= self.window_s:
            self.times.popleft()
        if self.limit >= 0 and len(self.times) >= self.limit:
            return False
        self.times.append(now)
        self.total += 1
        return True

    def refusal(self) -> str:
        """Why no restart was made, for the error message ('' when restarts are off)."""
        if self.limit == 0:
            return ""
        return (f" (the learner was restarted {len(self.times)} time(s) in the last "
                f"{self.window_s:.0f} s: train.learner_max_restarts={self.limit})")


@dataclass(frozen=True)
class RestorePoint:
    snapshot: RunSnapshot | None  # None: no good checkpoint, the run's start
    path: Path | None


def restore_point(run_dir: Path) -> RestorePoint:
    """The newest good checkpoint of the run, read and verified as `--resume` reads it; a bad
    one is reported in one line and the previous one tried."""
    if not (run_dir / RUN_FILE).is_file():  # nothing ever saved (no checkpoint callback)
        return RestorePoint(None, None)
    run_id = run_id_of(run_dir)
    for path in list_checkpoints(run_dir):
        try:
            return RestorePoint(read_checkpoint(path, run_id=run_id), path)
        except CheckpointError as exc:
            log.warning("%s; trying the previous one", exc)
    return RestorePoint(None, None)


def learner_bundle(config: Config, options: dict[str, Any]) -> dict[str, float]:
    """The resources a learner actor takes (what the autoscaler is asked for)."""
    bundle: dict[str, float] = dict(options.get("resources") or {})
    if config.train.learner_cpus > 0:
        bundle["CPU"] = config.train.learner_cpus
    if options.get("num_gpus"):
        bundle["GPU"] = float(options["num_gpus"])
    return bundle


def await_learner(published_ref: Any, timeout_s: float, stop: Any,
                  bundle: dict[str, float]) -> Any:
    """The new learner's first `Published`, once it is placed and restored; TrainingError when
    there is no room for it within `timeout_s` or the run is asked to stop meanwhile (Ray
    errors of the actor itself propagate)."""
    started = time.monotonic()
    noticed = False
    while True:
        done, _ = ray.wait([published_ref], timeout=1.0)
        if done:
            return ray.get(published_ref)
        waited = time.monotonic() - started
        if stop.is_set():
            raise TrainingError("stopped while waiting for room for a new learner")
        if waited >= timeout_s:
            raise TrainingError(f"no room for a new learner within {timeout_s:.0f} s (it "
                                f"needs {bundle}; train.learner_restart_timeout_s)")
        if not noticed and waited >= _WAIT_NOTICE_S:
            noticed = True
            log.warning("the new learner is not up yet: waiting up to %.0f s for room for it "
                        "(it needs %s)", timeout_s,
                        ", ".join(f"{v:g} {k}" for k, v in bundle.items()) or "no resources")
