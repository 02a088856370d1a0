"""Weights & Biases: a callback that never blocks or stops training, and sweep support.

Every W&B call (init, log, artifact upload, finish) is a job for `RetryQueue`: one background
thread runs the jobs in order and retries a failing one with exponential backoff. The driver
only enqueues, so a slow or unreachable server costs training nothing; `finish` waits a bounded
time (`wandb.finish_timeout_s`). The run id is the run folder's (RUN_DIR/run.json): a resumed
run continues the same W&B run. Metrics are logged against the driver's timestep
(`define_metric(..., step_metric="timestep")`), so a resumed run may log a timestep again.

Sweeps: `sweep_trial` starts the trial's run, THEN applies `wandb.config` to the base config
and validates it with the schema (a bad parameter is a ConfigError naming the field).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from keisei_ray.arena.records import wandb_media
from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import deep_merge, validate
from keisei_ray.events import (
    Callback,
    CheckpointSaved,
    EvaluationDone,
    LearnerRestarted,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.store.checkpoint import run_id_of

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- retry queue


@dataclass(frozen=True)
class _Job:
    what: str
    call: Callable[[], None]


class RetryQueue:
    """Runs calls in one background thread, in order; a failing call is retried with
    exponential backoff (`initial_s`, doubling, at most `max_s`) up to `max_attempts` tries,
    then dropped with an error log. `submit` never blocks: with the queue full the call is
    dropped (counted). `close(timeout_s)` waits at most that long for the queue to drain."""

    def __init__(self, *, initial_s: float, max_s: float, max_attempts: int,
                 maxsize: int = 10_000, name: str = "wandb-uploader") -> None:
        self.initial_s, self.max_s, self.max_attempts = initial_s, max_s, max_attempts
        self.done = self.retries = self.dropped = 0
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize)
        self._cond = threading.Condition()
        self._deadline: float | None = None  # set by close: nothing runs after it
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, call: Callable[[], None]) -> bool:
        if self._closed:
            self.dropped += 1
            return False
        try:
            self._jobs.put_nowait(_Job(what, call))
        except queue.Full:
            self.dropped += 1
            log.warning("W&B queue is full (%d calls waiting): dropped %s", self._jobs.maxsize,
                        what)
            return False
        return True

    def close(self, timeout_s: float) -> bool:
        """Stop taking calls; wait up to `timeout_s` for the queued ones. True: all ran."""
        with self._cond:
            self._closed = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        # With the queue full the thread drops the rest at the deadline (a daemon: no hang).
        with contextlib.suppress(queue.Full):
            self._jobs.put_nowait(None)
        self._thread.join(timeout_s + 0.1)
        left = self._jobs.qsize()
        if self._thread.is_alive() or left:
            log.warning("W&B: gave up after %.0f s with %d call(s) unfinished (the local run "
                        "files stay; `wandb sync` can upload them later)", timeout_s, left + 1)
            return False
        return self.dropped == 0

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                limit = end if self._deadline is None else min(end, self._deadline)
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: _Job) -> None:
        delay = self.initial_s
        for attempt in range(1, self.max_attempts + 1):
            if self._expired():
                self.dropped += 1
                return
            try:
                job.call()
            except Exception as exc:
                # Contained on purpose: W&B trouble must never reach training.
                if attempt == self.max_attempts:
                    self.dropped += 1
                    log.error("W&B %s failed %d times; dropped (%s: %s)", job.what, attempt,
                              type(exc).__name__, exc)
                    return
                self.retries += 1
                log.warning("W&B %s failed (%s: %s); retry %d of %d in %.1f s", job.what,
                            type(exc).__name__, exc, attempt, self.max_attempts - 1, delay)
                self._sleep(delay)
                delay = min(delay * 2, self.max_s)
            else:
                self.done += 1
                return


# ----------------------------------------------------------------------------- the client


class Client(Protocol):
    """What the callback needs of W&B (the real one is `WandbClient`; tests inject fakes)."""

    ready: bool

    def init(self, **kwargs: Any) -> None: ...

    def log(self, data: dict[str, Any]) -> None: ...

    def log_artifact(self, folder: Path, name: str, aliases: list[str],
                     metadata: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class WandbClient:
    """The real W&B calls. Reuses the active run when there is one (a sweep trial's)."""

    def __init__(self) -> None:
        self.run: Any = None
        self.ready = False

    def init(self, **kwargs: Any) -> None:
        import wandb  # noqa: PLC0415 (heavy; only W&B runs pay for it)

        if wandb.run is not None:
            self.run = wandb.run
            self.run.config.update(kwargs.get("config") or {}, allow_val_change=True)
        else:
            self.run = wandb.init(**kwargs, settings=wandb.Settings(console="off"))
        # Log against the driver's counter: a resumed run may repeat timesteps.
        self.run.define_metric("timestep")
        self.run.define_metric("*", step_metric="timestep")
        self.ready = True

    def log(self, data: dict[str, Any]) -> None:
        self.run.log(data)

    def log_artifact(self, folder: Path, name: str, aliases: list[str],
                     metadata: dict[str, Any]) -> None:
        import wandb  # noqa: PLC0415

        artifact = wandb.Artifact(name, type="model", metadata=metadata)
        artifact.add_dir(str(folder))
        self.run.log_artifact(artifact, aliases=aliases)

    def finish(self) -> None:
        self.run.finish()
        self.ready = False


# ----------------------------------------------------------------------------- the callback


class WandbCallback(Callback):
    """Logs config, update metrics, game statistics, evaluations and checkpoints to W&B."""

    def __init__(self, config: Config, *, client: Client | None = None) -> None:
        self.config = config
        self.settings = config.wandb
        self.client: Client = client or WandbClient()
        self.queue = RetryQueue(initial_s=self.settings.retry_initial_s,
                                max_s=self.settings.retry_max_s,
                                max_attempts=self.settings.max_attempts)
        self.run_dir: Path | None = None
        self.run_id = ""
        self._staged = 0

    def _submit(self, what: str, call: Callable[[], None]) -> None:
        def guarded() -> None:
            if self.client.ready:  # after a failed init the run's calls are skipped
                call()

        self.queue.submit(what, guarded)

    def on_train_start(self, event: TrainStart) -> None:
        self.run_dir = Path(event.run_dir)
        self.run_id = run_id_of(self.run_dir, create=True)
        s = self.settings
        kwargs = {"project": s.project, "entity": s.entity, "tags": list(s.tags),
                  "mode": s.mode, "id": self.run_id, "resume": "allow",
                  "name": self.run_dir.name, "dir": str(self.run_dir),
                  "config": self.config.model_dump(mode="json")}
        self.queue.submit("init", lambda: self.client.init(**kwargs))
        if event.resumed:
            self._submit("log", lambda: self.client.log({"timestep": event.timestep,
                                                         "resumed_at": event.timestep}))

    def on_update_done(self, event: UpdateDone) -> None:
        data: dict[str, Any] = {"timestep": event.timestep, "version": event.version}
        data.update({f"train/{k}": v for k, v in event.metrics.items()})
        games, totals = event.games, event.totals
        data.update({
            "perf/steps_per_s": event.steps_per_s, "perf/learner_busy": event.learner_busy,
            "perf/worker_busy": event.worker_busy,
            "perf/learner_waiting": 1.0 - event.learner_busy,
            "perf/workers_waiting": 1.0 - event.worker_busy,
            "perf/policy_lag": event.policy_lag, "perf/workers_alive": event.workers_alive,
            "perf/worker_restarts": event.worker_restarts,
            "perf/learner_restarts": event.learner_restarts, "perf/wall_time": event.wall_time,
            "games/finished": games.games, "games/total": totals.games,
        })
        if games.games:
            data["games/mean_length"] = games.mean_length
            data.update({f"games/{k}": v for k, v in games.shares().items()})
        self._submit("log", lambda: self.client.log(data))

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        prefix = f"eval/{event.opponent}"
        data: dict[str, Any] = {"timestep": event.timestep, f"{prefix}/score": event.score,
                                f"{prefix}/wins": event.wins, f"{prefix}/losses": event.losses,
                                f"{prefix}/draws": event.draws, f"{prefix}/games": event.games}
        if event.elo is not None:
            data["eval/elo"] = event.elo
            if event.elo_ci is not None:
                data["eval/elo_ci"] = event.elo_ci
        self._submit("log", lambda: self.client.log(data))
        records = list(event.details.get("records") or [])
        if records:  # game records (SVG board, KIF text), read in the background
            self._submit("records", lambda: self.client.log(
                {"timestep": event.timestep, **wandb_media(records)}))

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        # `timestep` is the restored checkpoint's (0 and no checkpoint: the run's start).
        data = {"timestep": event.timestep, "learner/restarts": event.restarts,
                "learner/transitions_lost": event.transitions_lost,
                "learner/lost_timestep": event.lost_timestep, "learner/down_s": event.down_s}
        self._submit("log", lambda: self.client.log(data))

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        if not self.settings.log_checkpoints or self.run_dir is None:
            return
        staged = self._stage(Path(event.path))
        if staged is None:
            return
        aliases = ["best"] if event.reason == "best" else ["latest", f"ts-{event.timestep}"]
        metadata = {"timestep": event.timestep, "version": event.version,
                    "reason": event.reason, "run_id": self.run_id,
                    "model": self.config.model.model_dump(mode="json")}
        name = f"checkpoint-{self.run_id}"

        def upload() -> None:
            self.client.log_artifact(staged, name, aliases, metadata)
            shutil.rmtree(staged, ignore_errors=True)

        self._submit(f"artifact {Path(event.path).name}", upload)

    def on_train_end(self, event: TrainEnd) -> None:
        self._submit("log", lambda: self.client.log({"timestep": event.timestep,
                                                     "end_reason": event.reason}))
        self._submit("finish", self.client.finish)
        started = time.monotonic()
        if self.queue.close(self.settings.finish_timeout_s):
            log.info("W&B run %s finished (%.1f s)", self.run_id, time.monotonic() - started)

    def _stage(self, checkpoint: Path) -> Path | None:
        """Hard links to the checkpoint's files (instant), so that the upload in the background
        never races the rotation that deletes old checkpoints."""
        assert self.run_dir is not None
        self._staged += 1
        staged = self.run_dir / ".wandb-staging" / f"{checkpoint.name}-{self._staged}"
        try:
            staged.mkdir(parents=True)
            for file in checkpoint.iterdir():
                try:
                    os.link(file, staged / file.name)
                except OSError:  # no hard links here (another filesystem): copy
                    shutil.copy2(file, staged / file.name)
        except OSError as exc:
            log.warning("W&B: cannot stage checkpoint %s for upload (%s)", checkpoint, exc)
            shutil.rmtree(staged, ignore_errors=True)
            return None
        return staged


# ----------------------------------------------------------------------------- sweeps


def apply_sweep(config: Config, params: Mapping[str, Any]) -> Config:
    """`config` with a sweep's parameters, validated by the schema.

    Keys are dotted field paths (`ppo.learning_rate`) or whole sections (`{"ppo": {...}}`);
    W&B's own keys (leading underscore) are ignored. Unknown fields and bad values raise
    ConfigError naming the field.
    """
    data = config.model_dump(mode="json")
    for key, value in params.items():
        if key.startswith("_"):
            continue
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"sweep parameter {key!r}: {'.'.join(parts[:i + 1])} is a "
                                  "value, not a section")
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    try:
        return validate(data)
    except ConfigError as exc:
        raise ConfigError(f"sweep parameters: {exc}") from None


def sweep_trial(base: Config, train: Callable[[Config, str], Any], *,
                init: Callable[..., Any] | None = None) -> Any:
    """One trial of a W&B sweep agent: start the trial's run, then apply its `wandb.config`
    to `base` (validated), then `train(config, run_id)`: a run whose W&B logging goes into
    that same run (the run folder takes its id, so `--resume` continues it)."""
    if init is None:
        import wandb  # noqa: PLC0415

        init = wandb.init
    mode = base.wandb.mode if base.wandb.mode != "disabled" else "online"
    run = init(project=base.wandb.project, entity=base.wandb.entity,
               tags=list(base.wandb.tags), mode=mode)
    try:
        config = apply_sweep(base, dict(run.config))
    except ConfigError:
        run.finish(exit_code=2)
        raise
    config = config.model_copy(update={"wandb": config.wandb.model_copy(update={"mode": mode})})
    log.info("sweep trial %s: %s", run.id, {k: v for k, v in dict(run.config).items()
                                            if not k.startswith("_")})
    return train(config, str(run.id))
