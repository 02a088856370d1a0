"""The driver: starts (or joins) Ray, runs the actor-learner loop, fires events.

One training round, pipelined (DESIGN.md "One training iteration"):

    workers collect round k+1 with weights v_k   ||   learner updates on round k -> v_k+1

so every batch is at most one policy version old (`train.max_policy_lag: 0` waits for each
update before collecting again: strictly synchronous PPO). Experience bytes travel from the
workers to the learner as object refs; the driver only reads the small batch summaries.
The driver owns the one timestep counter, and it advances only by transitions the learner
accepted: a batch lost with a dying worker, or dropped as too old, is never counted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
)

from actors.self_play import BatchSummary, SelfPlayActor
from keisei_ray.checkpoint import RunSnapshot
from keisei_ray.config import Config, ConfigError, dump
from keisei_ray.events import (
    BatchCollected,
    Callback,
    EventBus,
    GameStats,
    StatefulCallback,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.learner_actor import LearnerActor, Published, UpdateResult

log = logging.getLogger(__name__)

NAMESPACE = "keisei"


class TrainingError(RuntimeError):
    """Training cannot go on (the message says why and what to do)."""


# ----------------------------------------------------------------------------- Ray session


@dataclass(frozen=True)
class RaySession:
    started_here: bool  # True: this process owns the Ray instance and shuts it down
    address: str
    dashboard_url: str | None


def connect_ray(address: str | None, *, num_cpus: int | None = None,
                include_dashboard: bool = True) -> RaySession:
    """Join the running Ray of this process, a cluster at `address`, or start a local one."""
    if ray.is_initialized():
        return RaySession(started_here=False, address=ray.get_runtime_context().gcs_address,
                          dashboard_url=None)
    if address is None:
        # "local": a new embedded Ray, never silently a cluster someone started on this host.
        ctx = ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                       namespace=NAMESPACE, include_dashboard=include_dashboard,
                       log_to_driver=True)
    else:
        ctx = ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log.info("Ray dashboard: http://%s (token: `ray get-auth-token`)", url)
    return RaySession(started_here=True, address=address or "local",
                      dashboard_url=f"http://{url}" if url else None)


def resolve_device(config: Config) -> str:
    """The learner's device: cuda when asked for (or auto) and the cluster has a GPU."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    wanted = config.train.device
    if wanted == "cuda" and gpus < 1:
        raise ConfigError("train.device: cuda was asked for but the Ray cluster has no GPU "
                          "(use train.device=auto or cpu)")
    return "cuda" if wanted == "cuda" or (wanted == "auto" and gpus >= 1) else "cpu"


# ----------------------------------------------------------------------------- workers


@dataclass
class WorkerSlot:
    worker_id: int
    actor: Any  # ActorHandle of SelfPlayActor
    ready_ref: Any | None  # resolves to the node id once the actor is placed
    node_id: str | None = None
    pending: tuple[Any, Any] | None = None  # (summary ref, payload ref) of the running collect
    launched_at: float = 0.0
    failures: int = 0  # consecutive collect failures
    batches: int = 0
    incarnation: int = 0


@dataclass(frozen=True)
class Collected:
    summary: BatchSummary
    payload: Any  # ObjectRef to the encoded ExperienceBatch bytes


class WorkerPool:
    """The self-play actors: creation, placement, collect rounds, failures and elasticity."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots: dict[int, WorkerSlot] = {}
        self.next_id = 0
        self.restarts = 0  # worker actors Ray restarted (seen by a new incarnation)
        self.lost_batches = 0  # collects lost to a dying worker (never counted)
        self.removed = 0  # workers given up on (their node left, or out of restarts)
        self.busy_s = 0.0  # worker seconds spent collecting (from the summaries)
        resources = ray.cluster_resources()
        # On a cluster whose worker nodes advertise `selfplay`, workers go only there.
        self._custom = {"selfplay": 1.0} if resources.get("selfplay", 0) > 0 else {}

    # ---------------------------------------------------------------- membership
    def spawn(self, count: int) -> None:
        train = self.config.train
        for _ in range(count):
            worker_id = self.next_id
            self.next_id += 1
            actor = SelfPlayActor.options(
                name=f"keisei/worker-{worker_id}",
                num_cpus=train.worker_cpus,
                resources=self._custom or None,
                max_restarts=train.max_worker_restarts,
                max_task_retries=0,  # a lost batch is lost, never replayed and double counted
                scheduling_strategy="SPREAD",
            ).remote(self.config, worker_id)
            self.slots[worker_id] = WorkerSlot(worker_id, actor, actor.ready.remote())
        log.debug("spawned %d worker(s); pool size %d", count, len(self.slots))

    def remove(self, slot: WorkerSlot, why: str) -> None:
        log.warning("dropping worker-%d: %s", slot.worker_id, why)
        ray.kill(slot.actor, no_restart=True)
        del self.slots[slot.worker_id]
        self.removed += 1

    def poll_ready(self) -> None:
        """Mark workers whose actor has been placed (they join the next launch)."""
        starting = {slot.ready_ref: slot for slot in self.slots.values()
                    if slot.ready_ref is not None}
        if not starting:
            return
        done, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
        for ref in done:
            slot = starting[ref]
            slot.ready_ref = None
            try:
                slot.node_id = ray.get(ref)
            except ActorUnavailableError:
                slot.ready_ref = slot.actor.ready.remote()  # still restarting: ask again
            except RayActorError as exc:
                self.remove(slot, f"failed to start ({exc.__class__.__name__})")

    @property
    def ready_workers(self) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.ready_ref is None]

    @property
    def alive(self) -> int:
        return len(self.ready_workers)

    def wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(s.ready_ref is not None for s in self.slots.values()):
            refs = [s.ready_ref for s in self.slots.values() if s.ready_ref is not None]
            ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
            self.poll_ready()
            if time.monotonic() >= deadline:
                break
        if not self.ready_workers:
            raise TrainingError("no self-play worker could be placed: the cluster has no free "
                                f"CPU for train.worker_cpus={self.config.train.worker_cpus}")

    def grow_to_capacity(self) -> None:
        """`num_workers: auto`: add workers while the cluster has free CPUs for them."""
        if self.config.train.num_workers != "auto":
            target = int(self.config.train.num_workers)
            if len(self.slots) < target and all(s.ready_ref is None for s in self.slots.values()):
                self.spawn(target - len(self.slots))
            return
        if any(s.ready_ref is not None for s in self.slots.values()):
            return  # wait until the last spawned ones are placed before asking for more
        free = ray.available_resources().get("CPU", 0.0)
        if self._custom:
            free = min(free, ray.available_resources().get("selfplay", 0.0))
        extra = math.floor(free / self.config.train.worker_cpus + 1e-9)
        if extra > 0:
            log.info("cluster has room for %d more worker(s)", extra)
            self.spawn(extra)

    # ---------------------------------------------------------------- rounds
    def launch(self, published: Published) -> None:
        """Start a collect on every ready, idle worker with the given weights."""
        for slot in self.ready_workers:
            if slot.pending is None:
                refs = slot.actor.collect.options(num_returns=2).remote(
                    published.weights, published.version)
                slot.pending = (refs[0], refs[1])
                slot.launched_at = time.monotonic()

    def gather(self, timeout_s: float, on_batch: Any) -> list[Collected]:
        """Wait for every running collect (at most `timeout_s`), in worker order.

        A worker that dies mid-collect loses its batch (logged, counted). Stragglers keep
        running; their batch arrives in a later round (and may be dropped as too old).
        """
        running = {slot.pending[0]: slot for slot in self.slots.values()
                   if slot.pending is not None}
        collected: list[Collected] = []
        deadline = time.monotonic() + timeout_s
        while running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("round timeout: %d worker(s) still collecting (%s)", len(running),
                            ", ".join(f"worker-{s.worker_id}" for s in running.values()))
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=remaining)
            for ref in done:
                slot = running.pop(ref)
                assert slot.pending is not None
                payload = slot.pending[1]
                slot.pending = None
                try:
                    summary: BatchSummary = ray.get(ref)
                except RayActorError as exc:
                    self._on_worker_failure(slot, exc)
                    continue
                slot.failures = 0
                slot.batches += 1
                if summary.incarnation != slot.incarnation:
                    slot.incarnation = summary.incarnation
                    self.restarts += 1
                    log.info("worker-%d is back after a restart", slot.worker_id)
                slot.node_id = summary.node_id
                self.busy_s += summary.collect_s
                item = Collected(summary, payload)
                collected.append(item)
                on_batch(item)
        collected.sort(key=lambda c: c.summary.worker_id)
        return collected

    def _on_worker_failure(self, slot: WorkerSlot, exc: Exception) -> None:
        self.lost_batches += 1
        slot.failures += 1
        node_alive = slot.node_id is None or _node_alive(slot.node_id)
        log.warning("worker-%d died mid-collect; its batch is lost and not counted (%s)",
                    slot.worker_id, type(exc).__name__)
        limit = self.config.train.max_worker_restarts
        if not node_alive:
            self.remove(slot, "its node left the cluster")
        elif limit >= 0 and slot.failures > limit:
            self.remove(slot, f"failed {slot.failures} times in a row")
        else:
            # Ray restarts the actor (max_restarts); it is ready again once placed.
            slot.ready_ref = slot.actor.ready.remote()

    def shutdown(self) -> None:
        for slot in list(self.slots.values()):
            ray.kill(slot.actor, no_restart=True)
        self.slots.clear()


def game_stats(summary: BatchSummary) -> GameStats:
    return GameStats(games=summary.games, black_wins=summary.black_wins,
                     white_wins=summary.white_wins, draws=summary.draws,
                     cap_draws=summary.cap_draws, total_plies=summary.total_plies,
                     reasons=dict(summary.reasons))


def _node_alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainState:
    """Everything the driver counts; checkpoints save it and resume restores it."""

    timestep: int = 0
    updates: int = 0
    version: int = 0
    games: GameStats = field(default_factory=GameStats)
    dropped_batches: int = 0
    lost_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{**data, "games": GameStats(**data["games"])})


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    state: TrainState
    reason: str
    wall_s: float
    steps_per_s: float
    learner_busy: float  # fraction of the wall time the learner spent updating
    worker_busy: float  # fraction of worker time spent collecting
    worker_restarts: int
    callback_errors: int
    final_weights: dict[str, Any] | None = field(default=None, repr=False)


def new_run_dir(config: Config) -> Path:
    """runs_dir/<run_name or timestamp-shortid>, created (an existing one is refused)."""
    name = config.train.run_name or (
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    run_dir = Path(config.train.runs_dir) / name
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(f"train.run_name: run folder {run_dir} exists already (use --resume "
                          "to continue it, or another name)") from None
    return run_dir


class Trainer:
    """Owns the learner actor, the worker pool and the counters of one training session.

    `resume` (a checkpoint's RunSnapshot) restores everything of a consistent cut: counters,
    learner, workers' games, the batches gathered but not trained on, RNG and callback states;
    the run then continues exactly as it would have without the stop.
    """

    def __init__(self, config: Config, run_dir: Path, *, callbacks: Sequence[Callback] = (),
                 state: TrainState | None = None, learner_state: dict[str, Any] | None = None,
                 stop: threading.Event | None = None, resume: RunSnapshot | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.bus = EventBus()
        for callback in callbacks:
            self.bus.register(callback)
        self.resume = resume
        if resume is not None:
            state = TrainState.from_dict(resume.driver)
            learner_state = resume.learner
        self.state = state or TrainState()
        self.resumed = state is not None
        self._learner_state = learner_state
        self.stop = stop or threading.Event()
        self.learner: Any = None
        self.pool: WorkerPool | None = None
        self.learner_busy_s = 0.0
        self.published: Published | None = None
        self.final_weights: dict[str, Any] | None = None  # fetched before the learner goes
        self._started = 0.0
        self._steps_start = 0
        self._lost_base = self.state.lost_batches
        self.capacity = 0  # transitions the learner's buffer holds

    # ---------------------------------------------------------------- set-up
    def _start_actors(self) -> Published:
        train = self.config.train
        device = resolve_device(self.config)
        workers = (_auto_workers(self.config) if train.num_workers == "auto"
                   else int(train.num_workers))
        resources = ray.cluster_resources()
        # A batch holds at most E*(T+1) transitions (T plies plus the held-back ones).
        self.capacity = max(workers, _auto_workers(self.config)) * _batch_capacity(self.config)
        capacity = self.capacity
        custom = {"learner": 1.0} if resources.get("learner", 0) > 0 else None
        self.learner = ray.remote(LearnerActor).options(
            name="keisei/learner",
            num_cpus=train.learner_cpus,
            num_gpus=1 if device == "cuda" else 0,
            resources=custom,
            max_restarts=0,  # a lost learner ends the run; `--resume` recovers it
        ).remote(self.config, capacity, device)
        if self._learner_state is not None:
            ray.get(self.learner.load_state_dict.remote(self._learner_state))
        published: Published = ray.get(self.learner.publish.remote())
        log.info("learner on %s; policy version %d, %.1f MB of weights", device,
                 published.version, published.nbytes / 1e6)
        self.pool = WorkerPool(self.config)
        self.pool.spawn(workers)
        self.pool.wait_until_ready(timeout_s=train.round_timeout_s)
        if self.resume is not None:
            self._restore_workers(self.resume.workers)
        log.info("%d self-play worker(s) ready, %d games each", self.pool.alive,
                 train.games_per_worker)
        return published

    def _restore_workers(self, states: dict[int, dict[str, Any]]) -> None:
        """Put the saved games back into the workers of the same id (the others start anew)."""
        assert self.pool is not None
        refs = {slot.worker_id: slot.actor.set_state.remote(states[slot.worker_id])
                for slot in self.pool.ready_workers if slot.worker_id in states}
        for worker_id, ref in refs.items():
            try:
                ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                log.warning("worker-%d could not take its saved games and starts new ones (%s)",
                            worker_id, str(exc).splitlines()[-1] if str(exc) else type(exc))
        fresh = sorted(set(self.pool.slots) - set(refs))
        if fresh:
            log.info("worker(s) %s have no saved games: they start new ones", fresh)

    def _restore_process_state(self) -> None:
        """The driver's RNG states and the stateful callbacks' states of the resumed run."""
        assert self.resume is not None
        rng = self.resume.rng
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(torch.from_numpy(np.asarray(rng["torch"], dtype=np.uint8)))
        for callback in self.bus.callbacks:
            if isinstance(callback, StatefulCallback) and callback.state_key in (
                    self.resume.callbacks):
                try:
                    callback.load_state_dict(self.resume.callbacks[callback.state_key])
                except Exception:
                    # Contained like any callback failure: its state starts empty instead.
                    self.bus.errors += 1
                    log.exception("callback %s could not restore its saved state",
                                  type(callback).__name__)

    def snapshot(self, pending: Sequence[Any], games: GameStats) -> Callable[[], RunSnapshot]:
        """Capture the run at a consistent cut and return `fetch`, which completes it.

        Call only at a cut: the learner idle (between updates), no collect launched. The
        learner's and the workers' states are requested here and not waited for: an actor runs
        its calls in the order they were sent, so they are taken before the next update and
        collects whatever happens meanwhile. `fetch()` (blocking, from any thread, e.g. a
        checkpoint writer) waits for them. `pending`: payload refs gathered and not trained on
        yet (a resumed run feeds them to its first update), `games` their statistics.
        """
        assert self.pool is not None
        learner_ref = self.learner.state_dict.remote()
        # A straggler still collecting is skipped: on resume it starts new games.
        state_refs = {slot.worker_id: slot.actor.get_state.remote()
                      for slot in self.pool.ready_workers if slot.pending is None}
        pending = list(pending)
        # Copies of what the driver owns, as they are now (JSON round trip: callback states
        # must be JSON-able, and later changes must not leak into this snapshot).
        callbacks = json.loads(json.dumps({cb.state_key: cb.state_dict()
                                           for cb in self.bus.callbacks
                                           if isinstance(cb, StatefulCallback)}))
        rng = {"python": random.getstate(), "numpy": np.random.get_state(),
               "torch": torch.get_rng_state().numpy()}
        driver, timestep, version = self.state.to_dict(), self.state.timestep, self.state.version

        def fetch() -> RunSnapshot:
            try:
                learner_state = ray.get(learner_ref)
            except (RayActorError, RayTaskError) as exc:
                raise TrainingError(f"the learner failed: {exc.__class__.__name__}") from exc
            workers: dict[int, dict[str, Any]] = {}
            for worker_id, ref in state_refs.items():
                try:
                    workers[worker_id] = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    log.warning("worker-%d gave no state for the checkpoint (%s): it will start "
                                "new games on resume", worker_id, type(exc).__name__)
            payloads: list[bytes] = []
            for ref in pending:
                try:
                    payloads.append(ray.get(ref))
                except ObjectLostError:
                    log.warning("a pending batch was lost with its node; the checkpoint lacks "
                                "it")
            return RunSnapshot(config=self.config, timestep=timestep, version=version,
                               driver=driver, learner=learner_state, workers=workers,
                               pending=payloads, pending_games=dataclasses.asdict(games),
                               rng=rng, callbacks=callbacks)

        return fetch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.learner is not None:
            ray.kill(self.learner, no_restart=True)

    # ---------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train until `total_timesteps` accepted transitions, or until `stop` is set."""
        train = self.config.train
        reason = "completed"
        stopped_at: tuple[list[Any], GameStats] | None = None  # the cut the loop ended at
        self._started = time.monotonic()
        try:
            self.published = self._start_actors()
            assert self.pool is not None
            self.state.version = self.published.version
            self._steps_start = self.state.timestep
            if self.resume is not None:
                self._restore_process_state()
            self._started = time.monotonic()  # rates count from here, not from actor start-up
            self.bus.emit(TrainStart(self.run_dir, self.config, self.state.timestep,
                                     self.state.version, self.resumed, bus=self.bus))
            synchronous = self.config.ppo.max_policy_lag == 0
            in_flight: tuple[Any, GameStats] | None = None  # running update, its games
            # Payload refs gathered and not trained on yet; None: gather the next round. A
            # resumed run starts with the checkpoint's, so it trains exactly as it would have.
            batches: list[Any] | None = None
            games = GameStats()
            if self.resume is not None:
                batches = [ray.put(payload) for payload in self.resume.pending]
                games = GameStats(**self.resume.pending_games)
                self._reserve(len(batches) * _batch_capacity(self.config))
            else:
                self.pool.launch(self.published)
            # Every stop happens at a consistent cut: the learner idle, no collect running.
            while True:
                if batches is None:
                    collected = self.pool.gather(train.round_timeout_s, self._on_batch)
                    self._reserve(sum(c.summary.transitions for c in collected))
                    batches = [c.payload for c in collected]
                    games = sum((game_stats(c.summary) for c in collected), GameStats())
                    if in_flight is not None:  # pipelined: the previous update ran meanwhile
                        self._finish_update(*in_flight, cut=(batches, games))
                        in_flight = None
                if self._should_stop():
                    stopped_at = (batches, games)  # never trained on: not counted
                    break
                if batches:
                    in_flight = (self.learner.update.remote(*batches), games)
                    if synchronous:
                        self._finish_update(*in_flight, cut=([], GameStats()))
                        in_flight = None
                        if self._should_stop():
                            stopped_at = ([], GameStats())
                            break
                batches = None
                self.pool.poll_ready()
                self.pool.grow_to_capacity()
                if not self.pool.slots:
                    raise TrainingError("every self-play worker is gone")
                self.pool.launch(self.published)
            if self.stop.is_set() and self.state.timestep < train.total_timesteps:
                reason = "interrupted"
            self.final_weights = ray.get(self.published.weights[0])
        except KeyboardInterrupt:
            reason = "interrupted"
            stopped_at = None  # a second Ctrl-C: wherever the loop was, no consistent cut
            raise
        except TrainingError as exc:
            reason = f"failed: {exc}"
            stopped_at = None
            raise
        finally:
            snapshot = None if stopped_at is None else functools.partial(self.snapshot,
                                                                          *stopped_at)
            self.bus.emit(TrainEnd(self.state.timestep, self.state.version, reason,
                                   snapshot=snapshot))
            self.close()
        wall = time.monotonic() - self._started
        steps = self.state.timestep - self._steps_start
        alive = max(self.pool.alive if self.pool else 1, 1)
        return TrainResult(
            run_dir=self.run_dir, state=self.state, reason=reason, wall_s=wall,
            steps_per_s=steps / wall if wall > 0 else 0.0,
            learner_busy=self.learner_busy_s / wall if wall > 0 else 0.0,
            worker_busy=(self.pool.busy_s if self.pool else 0.0) / max(wall * alive, 1e-9),
            worker_restarts=self.pool.restarts if self.pool else 0,
            callback_errors=self.bus.errors, final_weights=self.final_weights)

    def _should_stop(self) -> bool:
        return self.state.timestep >= self.config.train.total_timesteps or self.stop.is_set()

    def _reserve(self, size: int) -> None:
        """Grow the learner's buffer when a round holds more than it (the pool grew: rare)."""
        if size > self.capacity:
            assert self.pool is not None
            self.capacity = max(size, len(self.pool.slots) * _batch_capacity(self.config))
            self.learner.reserve.remote(self.capacity)

    def _on_batch(self, item: Collected) -> None:
        s = item.summary
        self.bus.emit(BatchCollected(worker_id=s.worker_id, transitions=s.transitions,
                                     version=s.version, bytes=s.nbytes, games=game_stats(s)))

    def _finish_update(self, ref: Any, games: GameStats,
                       cut: tuple[list[Any], GameStats]) -> None:
        """Count a finished update and emit UpdateDone; `cut` is what a snapshot taken by its
        handlers holds as not-yet-trained batches (the next update's)."""
        try:
            result: UpdateResult = ray.get(ref)
        except (RayActorError, RayTaskError, GetTimeoutError) as exc:
            raise TrainingError(f"the learner failed: {exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        assert self.pool is not None
        st = self.state
        st.timestep += result.accepted
        st.updates += 1
        st.version = result.published.version
        st.dropped_batches += result.dropped
        st.lost_batches = self._lost_base + self.pool.lost_batches
        self.learner_busy_s += result.busy_s
        st.games = st.games + games
        self.published = result.published
        wall = time.monotonic() - self._started
        self.bus.emit(UpdateDone(
            timestep=st.timestep, version=st.version, accepted=result.accepted,
            metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)},
            games=games, totals=st.games, policy_lag=result.max_lag,
            workers_alive=self.pool.alive,
            steps_per_s=(st.timestep - self._steps_start) / wall if wall > 0 else 0.0,
            worker_restarts=self.pool.restarts, wall_time=wall, weights=result.published.weights,
            learner_busy=self.learner_busy_s / wall if wall > 0 else 0.0,
            snapshot=functools.partial(self.snapshot, *cut)))


def _batch_capacity(config: Config) -> int:
    return config.train.games_per_worker * (config.train.rollout_steps + 1)


def _auto_workers(config: Config) -> int:
    """Workers that fit the cluster's CPUs next to the learner (at least one)."""
    cpus = ray.cluster_resources().get("CPU", 1.0)
    free = cpus - config.train.learner_cpus
    return max(1, math.floor(free / config.train.worker_cpus + 1e-9))


def write_run_files(config: Config, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(dump(config), encoding="utf-8")
