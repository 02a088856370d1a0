"""The library entry points: `train(config)` and `evaluate(player, opponent)`.

`keisei-ray train` and `keisei-ray sweep-agent` are thin callers of `train`; a script or a test
calls it in-process:

    from keisei_ray import load_config, train
    result = train(load_config(preset="smoke"))
    print(result.reason, result.timestep, result.run_dir)

`train` owns the composition of a run: the run folder and its files, the callbacks in the order
they see each event, the Ray session (an embedded local Ray unless `train.address` names a
cluster; shut down again when it started one), graceful Ctrl-C and SIGTERM, and the resume
point of `resume=`. Failures raise: `ConfigError` / `CallbackImportError` for a bad config,
`CheckpointError` for a resume that cannot go on, `TrainingError` (naming the last good
checkpoint and the command to continue) when training itself fails.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import load_config, validate
from keisei_ray.events import Callback, load_callback
from keisei_ray.logs import run_log_file

if TYPE_CHECKING:
    from actors.evaluation import MatchResult
    from keisei_ray.store.checkpoint import RunSnapshot
    from keisei_ray.training.driver import TrainResult

log = logging.getLogger("keisei_ray")

ConfigLike = Config | Mapping[str, Any] | str | Path | None
"""A config: a `Config`, a nested mapping (validated), a YAML file, or None (the defaults)."""


@dataclass(frozen=True)
class RunResult:
    """How a training run ended."""

    run_dir: Path
    reason: str  # "completed" (total_timesteps or max_minutes reached) or "interrupted"
    timestep: int  # accepted transitions, the driver's counter
    updates: int
    games: int  # games finished
    wall_s: float
    steps_per_s: float
    learner_busy: float  # share of the wall time the learner spent updating
    worker_busy: float  # share of worker time spent collecting
    worker_restarts: int
    callback_errors: int
    learner_restarts: int = 0  # learners restarted from a checkpoint (train.learner_max_restarts)
    final_weights: dict[str, Any] | None = field(default=None, repr=False)  # {name: ndarray}

    @classmethod
    def of(cls, result: TrainResult) -> RunResult:
        return cls(run_dir=result.run_dir, reason=result.reason, timestep=result.state.timestep,
                   updates=result.state.updates, games=result.state.games.games,
                   wall_s=result.wall_s, steps_per_s=result.steps_per_s,
                   learner_busy=result.learner_busy, worker_busy=result.worker_busy,
                   worker_restarts=result.worker_restarts,
                   learner_restarts=result.learner_restarts,
                   callback_errors=result.callback_errors, final_weights=result.final_weights)


def as_config(config: ConfigLike, *, preset: str | None = None,
              overrides: Sequence[str] = ()) -> Config:
    """The effective config of `config` (see ConfigLike), with `preset` under it and dotted
    `overrides` on top."""
    if isinstance(config, Config):
        if preset is None and not overrides:
            return config
        return load_config(None, overrides, preset=preset, base=config.model_dump(mode="json"))
    if isinstance(config, Mapping):
        if preset is None and not overrides:
            return validate(config)
        return load_config(None, overrides, preset=preset, base=config)
    return load_config(config, overrides, preset=preset)


def train(config: ConfigLike = None, *, preset: str | None = None,
          overrides: Sequence[str] = (), resume: str | Path | None = None,
          allow_fresh: bool = False, callbacks: Sequence[Callback] = (),
          progress: bool = True, run_id: str | None = None,
          stop: threading.Event | None = None) -> RunResult:
    """Train by PPO self-play; returns how the run ended.

    `resume`: a run folder (its newest good checkpoint) or one checkpoint; the run's own config
    is used, `overrides` apply on top (`config` and `preset` must then be None); a run that has
    reached its `train.total_timesteps` is refused (ConfigError) unless an override raises it.
    `allow_fresh`: with `resume`, start the run over when it has no good checkpoint.
    `callbacks` see every event after the run's own ones and those named in `train.callbacks`.
    `progress`: the live view (terminal) or a progress log line every 10 s. `stop`: set it
    (from another thread) to end the run cleanly, as the first Ctrl-C does. `run_id`: the id
    of a new run (W&B sweeps).
    """
    from keisei_ray.store.run_dir import new_run_dir

    snapshot = None
    if resume is None:
        if allow_fresh:
            raise ConfigError("--allow-fresh only goes with --resume")
        cfg = as_config(config, preset=preset, overrides=overrides)
        user = [load_callback(spec) for spec in cfg.train.callbacks]  # before any I/O
        run_dir = new_run_dir(cfg)
    else:
        if config is not None or preset is not None:
            raise ConfigError("--resume continues a run with its own config: give changes as "
                              "dotted overrides, not --config/--preset")
        cfg, run_dir, snapshot = resume_point(Path(resume), list(overrides), allow_fresh)
        if snapshot is not None and snapshot.timestep >= cfg.train.total_timesteps:
            # Before Ray starts: there is nothing to train.
            raise ConfigError(
                f"train.total_timesteps: run {run_dir} has reached timestep "
                f"{snapshot.timestep:,} of its {cfg.train.total_timesteps:,} already; raise it "
                f"to go on, e.g. keisei-ray train --resume {run_dir} train.total_timesteps="
                f"{snapshot.timestep + cfg.train.total_timesteps}")
        user = [load_callback(spec) for spec in cfg.train.callbacks]
    return train_in(cfg, run_dir, snapshot, [*user, *callbacks], progress=progress,
                    run_id=run_id, stop=stop)


def resume_point(path: Path, overrides: Sequence[str],
                 allow_fresh: bool) -> tuple[Config, Path, RunSnapshot | None]:
    """(effective config, run folder, RunSnapshot or None) of resuming `path`; CheckpointError
    when it cannot be resumed (no good checkpoint, an incompatible override)."""
    from keisei_ray.store.resume import check_compatible, find_resume_point

    point = find_resume_point(path, allow_fresh=allow_fresh)
    snapshot = point.snapshot
    if snapshot is None:
        return load_config(point.run_dir / "config.yaml", overrides), point.run_dir, None
    cfg = load_config(None, overrides, base=snapshot.config.model_dump(mode="json"))
    stale = check_compatible(snapshot.config, cfg, point.path or path)
    if stale:
        log.warning("%s changed: the saved games are dropped and the workers start new ones",
                    ", ".join(stale))
        snapshot.workers = {}
    return cfg, point.run_dir, snapshot


def train_in(cfg: Config, run_dir: Path, snapshot: RunSnapshot | None,
             user_callbacks: Sequence[Callback], *, progress: bool = True,
             run_id: str | None = None, stop: threading.Event | None = None) -> RunResult:
    """Run training in `run_dir` (new, or resumed from `snapshot`) and log how it ended."""
    from keisei_ray.store.checkpoint import RUN_FILE, create_run_id
    from keisei_ray.store.run_dir import write_run_files
    from keisei_ray.training.driver import Trainer
    from keisei_ray.training.ray_cluster import TrainingError, connect_ray

    write_run_files(cfg, run_dir)
    if not (run_dir / RUN_FILE).exists():
        create_run_id(run_dir, run_id)
    stop = stop or threading.Event()
    with run_log_file(run_dir / "train.log"):
        log.info("run folder %s%s", run_dir, "" if snapshot is None else
                 f" (resumed at timestep {snapshot.timestep})")
        session = connect_ray(cfg.train.address)
        try:
            # After Ray is up: ray.init replaces the process's SIGTERM handler.
            with graceful_interrupt(stop):
                callbacks = train_callbacks(cfg, run_dir, list(user_callbacks),
                                            progress=progress)
                trainer = Trainer(cfg, run_dir, callbacks=callbacks, stop=stop, resume=snapshot)
                result = trainer.run()
        except TrainingError as exc:
            hint = resume_hint(run_dir)
            log.error("training failed: %s; %s", exc, hint)
            raise TrainingError(f"{exc}; {hint}") from exc
        finally:
            if session.started_here:
                import ray

                ray.shutdown()
        log.info("%s: %d timesteps, %d updates, %.0f steps/s, learner busy %.0f%%, workers "
                 "busy %.0f%%, %d worker restart(s), %d learner restart(s), run folder %s",
                 result.reason, result.state.timestep, result.state.updates,
                 result.steps_per_s, 100 * result.learner_busy, 100 * result.worker_busy,
                 result.worker_restarts, result.learner_restarts, run_dir)
        if result.reason == "interrupted":
            log.warning("interrupted at timestep %d; %s", result.state.timestep,
                        resume_hint(run_dir))
    return RunResult.of(result)


def resume_hint(run_dir: Path) -> str:
    """Where a failed run can go on from, as the exact command."""
    from keisei_ray.store.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint

    for path in list_checkpoints(run_dir):
        try:
            info = verify_checkpoint(path)
        except CheckpointError:
            continue
        return (f"the last good checkpoint is {path} (timestep {info.timestep:,}); continue "
                f"with: keisei-ray train --resume {run_dir}")
    return (f"no checkpoint was saved; start the run over with: keisei-ray train --resume "
            f"{run_dir} --allow-fresh")


def train_callbacks(cfg: Config, run_dir: Path, user: list[Callback], *,
                    progress: bool = True) -> list[Callback]:
    """The callbacks of a training run, in the order they see each event."""
    callbacks: list[Callback] = []
    if progress:
        from keisei_ray.training.progress import ProgressView

        callbacks.append(ProgressView(cfg.train.total_timesteps,
                                      max_minutes=cfg.train.max_minutes))
    if cfg.evaluation.enabled:
        # Before the checkpoint and metrics callbacks: evaluations that finish at the end of
        # training reach them before their own TrainEnd.
        from keisei_ray.arena.background import BackgroundEvaluation

        callbacks.append(BackgroundEvaluation(cfg, run_dir))
    from keisei_ray.store.saver import CheckpointCallback
    from keisei_ray.training.metrics import MetricsLog, RayMetrics

    # The checkpoint callback before the loggers: its final save reaches them before TrainEnd.
    callbacks += [CheckpointCallback(cfg), MetricsLog(), RayMetrics()]
    if cfg.wandb.mode != "disabled":
        from keisei_ray.training.tracking import WandbCallback

        callbacks.append(WandbCallback(cfg))
    return callbacks + user


@contextlib.contextmanager
def graceful_interrupt(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM (what a cloud scheduler or `ray job stop` sends first) asks
    the loop to finish the update, write a checkpoint and stop; a second one interrupts at
    once. Enter it after `ray.init`, which sets a SIGTERM handler of its own."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: finishing the current update, then stopping (%s again to abort)",
                    "SIGTERM" if signum == signal.SIGTERM else "interrupt",
                    "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # e.g. a W&B sweep agent's trial thread: signals only reach the main thread
        return
    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def evaluate(player: str | Path, opponent: str | Path, *, games: int | None = None,
             config: ConfigLike = None, workers: int = 1,
             seed: int | None = None) -> MatchResult:
    """A match of `player` vs `opponent` (model files, checkpoint directories, run folders:
    their best, else newest good, checkpoint; `random`, `heuristic`, `mate` or a USI engine),
    colours alternated:
    wins, draws, losses, score. `games` defaults to `evaluation.games`; with `workers` > 1 the
    games are split over Ray actors (an embedded local Ray is started, and shut down again,
    when none is running)."""
    from keisei_ray.arena.evaluation import load_contestant, run_match
    from keisei_ray.training.ray_cluster import connect_ray

    cfg = as_config(config)
    if games is not None and games < 1:
        raise ConfigError(f"games must be at least 1, got {games}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    a, b = load_contestant(str(player)), load_contestant(str(opponent))
    if a.name == b.name:
        raise ConfigError(f"a match needs two different players, got {a.name!r} twice")
    if workers == 1:
        return run_match(cfg, a, b, games or cfg.evaluation.games, seed=seed)
    session = connect_ray(None, num_cpus=workers, include_dashboard=False)
    try:
        return run_match(cfg, a, b, games or cfg.evaluation.games, workers=workers, seed=seed)
    finally:
        if session.started_here:
            import ray

            ray.shutdown()
