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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.autoscaler.sdk import request_resources
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
)

from actors.self_play import BatchSummary, SelfPlayActor
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
from keisei_ray.store.checkpoint import RunSnapshot
from keisei_ray.training.league import League, assignment, record_round
from keisei_ray.training.learner_actor import LearnerActor, Published, UpdateResult
from keisei_ray.training.profiling import ProfileWindow
from keisei_ray.training.tuning import LearnerTuner, tune_games
from keisei_ray.training.waits import wait_split

log = logging.getLogger(__name__)

NAMESPACE = "keisei"
_RESTART_GRACE_S = 5.0  # Ray re-places a crashed actor within this on a node with room


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
    failed_at: float = 0.0  # monotonic time of the last failure
    batches: int = 0
    incarnation: int = 0


@dataclass(frozen=True)
class Collected:
    summary: BatchSummary
    payload: Any  # ObjectRef to the encoded ExperienceBatch bytes


class WorkerPool:
    """The self-play actors: creation, placement, collect rounds, failures and elasticity.

    The pool follows the cluster. Between rounds the driver calls `poll_ready` (workers that
    came up join; workers whose node left are dropped, their running batch lost and never
    counted) and `grow_to_capacity` (new workers up to the target; with `num_workers: auto`,
    for whatever the free resources hold, so a node that joins gets workers). Workers take one
    unit of the cluster's worker resource when it has one (`cluster.worker_resource`), so they
    run only on self-play nodes, spread over them.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots: dict[int, WorkerSlot] = {}
        self.next_id = 0
        self.restarts = 0  # worker actors Ray restarted (seen by a new incarnation)
        self.lost_batches = 0  # collects lost to a dying worker or node (never counted)
        self.removed = 0  # workers given up on (their node left, or out of restarts)
        self.busy_s = 0.0  # worker seconds spent collecting (from the summaries)
        self.nodes: dict[str, str] = {}  # alive node id -> address, as of the last poll
        self.started = False  # a first worker came up
        self.resource = worker_resource(config)
        requested = config.cluster.request_workers
        if requested > 0:
            # Persistent until withdrawn (shutdown): the autoscaler keeps this much room,
            # so it also replaces self-play nodes that are lost.
            request_resources(bundles=[self._bundle()] * requested)
            log.info("asked the autoscaler for room for %d self-play worker(s) (%s)",
                     requested, self._bundle())

    def _bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.config.train.worker_cpus}
        if self.resource is not None:
            bundle[self.resource] = 1.0
        return bundle

    # ---------------------------------------------------------------- membership
    def spawn(self, count: int) -> None:
        train = self.config.train
        for _ in range(count):
            worker_id = self.next_id
            self.next_id += 1
            actor = SelfPlayActor.options(
                name=f"keisei/worker-{worker_id}",
                num_cpus=train.worker_cpus,
                resources={self.resource: 1.0} if self.resource else None,
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
        """Admit workers that came up; drop the ones whose node left the cluster."""
        starting = {slot.ready_ref: slot for slot in self.slots.values()
                    if slot.ready_ref is not None}
        done, _ = (ray.wait(list(starting), num_returns=len(starting), timeout=0)
                   if starting else ([], []))
        # The node list is read after the placements: a node that joined meanwhile is in it.
        self.nodes = _alive_nodes()
        for ref in done:
            slot = starting[ref]
            slot.ready_ref = None
            try:
                node_id = ray.get(ref)
            except ActorUnavailableError:
                slot.ready_ref = slot.actor.ready.remote()  # still restarting: ask again
                continue
            except RayActorError as exc:
                self.remove(slot, f"failed to start ({exc.__class__.__name__})")
                continue
            if node_id != slot.node_id:
                log.info("worker-%d is on node %s (%s)", slot.worker_id, node_id,
                         self.nodes.get(node_id, "address unknown"))
            slot.node_id = node_id
        # A worker whose node is gone (also one Ray is still trying to restart elsewhere)
        # is dropped at once: with `auto` its capacity went with the node; otherwise a
        # replacement is spawned and placed wherever there is room.
        for slot in list(self.slots.values()):
            if slot.node_id is not None and slot.node_id not in self.nodes:
                if slot.pending is not None:
                    self.lost_batches += 1
                self.remove(slot, f"its node {slot.node_id} left the cluster")

    @property
    def ready_workers(self) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.ready_ref is None]

    @property
    def alive(self) -> int:
        return len(self.ready_workers)

    def placement(self) -> dict[str, int]:
        """Ready workers per node id."""
        counts: dict[str, int] = {}
        for slot in self.ready_workers:
            if slot.node_id is not None:
                counts[slot.node_id] = counts.get(slot.node_id, 0) + 1
        return counts

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Wait for the spawned workers: all of them, or `cluster.join_wait_s` past the first
        one (the others join the round after they come up). Without any worker up within
        `timeout_s` (default `cluster.start_timeout_s`) training cannot start: TrainingError.
        """
        cluster = self.config.cluster
        if not self.started:
            self._check_feasible()
        timeout = cluster.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        first_up: float | None = None
        while True:
            self.poll_ready()
            starting = [s.ready_ref for s in self.slots.values() if s.ready_ref is not None]
            now = time.monotonic()
            if self.ready_workers and first_up is None:
                first_up = now
            limit = deadline if first_up is None else min(deadline, first_up + cluster.join_wait_s)
            if not starting or now >= limit:
                break
            ray.wait(starting, num_returns=1, timeout=min(limit - now, 1.0))
        if not self.ready_workers:
            raise TrainingError(self._unplaced_message(timeout))
        self.started = True
        log.info("pool: %d self-play worker(s) on %d node(s)", self.alive, len(self.placement()))

    def _check_feasible(self) -> None:
        """At the start, fail at once when no node can hold a worker (and no autoscaler was
        asked for nodes). Later a pool without workers waits: lost nodes may be replaced."""
        if self.config.cluster.request_workers > 0:
            return
        cpus = self.config.train.worker_cpus
        for resources in resources_per_node(available=False).values():
            if (resources.get("CPU", 0.0) + 1e-9 >= cpus
                    and (self.resource is None or resources.get(self.resource, 0.0) >= 1.0)):
                return
        where = f" and the {self.resource!r} resource" if self.resource else ""
        raise TrainingError(f"no node of the cluster can hold a self-play worker: none has "
                            f"train.worker_cpus={cpus} CPU(s){where}")

    def _unplaced_message(self, waited_s: float) -> str:
        if self.resource is not None and ray.cluster_resources().get(self.resource, 0) < 1:
            return (f"no self-play worker was placed in {waited_s:.0f} s: no node has the "
                    f"{self.resource!r} resource yet (cluster.request_workers="
                    f"{self.config.cluster.request_workers} asked the autoscaler for such "
                    "nodes; check `ray status` and that cluster.yaml gives them the resource)")
        return (f"no self-play worker was placed in {waited_s:.0f} s: no node has "
                f"train.worker_cpus={self.config.train.worker_cpus} free CPU(s)"
                + (f" and the {self.resource!r} resource" if self.resource else ""))

    def grow_to_capacity(self) -> None:
        """Spawn workers up to the target: `train.num_workers`, or with `auto` as many as the
        cluster's free resources hold (a node that joined gets workers). With no worker up at
        all, wait for one: an autoscaler may be replacing lost nodes."""
        if self.config.train.num_workers == "auto":
            # Spawned ones take room once placed; a crashed one takes its room back in well
            # under a second, so one still down after that is waiting for room (or its node
            # is gone and not yet declared dead) and must not hold back new workers.
            now = time.monotonic()
            starting = sum(s.ready_ref is not None and (
                s.node_id is None or now - s.failed_at < _RESTART_GRACE_S)
                for s in self.slots.values())
            free = worker_room(self.config, resources_per_node(available=True),
                               self.resource)
            missing = free - starting
            if not self.slots:
                missing = max(missing, 1)  # a pending worker is also a request for a node
        else:
            missing = int(self.config.train.num_workers) - len(self.slots)
        if missing > 0:
            log.info("adding %d self-play worker(s) (target: %s)", missing,
                     self.config.train.num_workers)
            self.spawn(missing)
        if not self.ready_workers:
            self.wait_until_ready()

    # ---------------------------------------------------------------- rounds
    def launch(self, published: Published, league: League | None = None) -> None:
        """Start a collect on every ready, idle worker with the given weights (and, with a
        league, the opponents of the league games that start in it)."""
        for slot in self.ready_workers:
            if slot.pending is None:
                refs = slot.actor.collect.options(num_returns=2).remote(
                    published.weights, published.version, assignment(league, self.config))
                slot.pending = (refs[0], refs[1])
                slot.launched_at = time.monotonic()

    def gather(self, timeout_s: float, on_batch: Any) -> list[Collected]:
        """Wait for every running collect (at most `timeout_s`), in worker order.

        A worker that dies mid-collect loses its batch (logged, counted). Stragglers keep
        running; their batch arrives in a later round (and may be dropped as too old).
        Weights that cannot be fetched mean the learner (their owner) is gone: TrainingError.
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
                except RayTaskError as exc:
                    if isinstance(exc.cause, ObjectLostError):
                        raise TrainingError(
                            "the learner failed: the policy weights it published are gone "
                            f"({type(exc.cause).__name__})") from exc
                    raise
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
        slot.failed_at = time.monotonic()
        log.warning("worker-%d died mid-collect; its batch is lost and not counted (%s)",
                    slot.worker_id, type(exc).__name__)
        limit = self.config.train.max_worker_restarts
        if slot.node_id is not None and slot.node_id not in _alive_nodes():
            self.remove(slot, f"its node {slot.node_id} left the cluster")
        elif limit >= 0 and slot.failures > limit:
            self.remove(slot, f"failed {slot.failures} times in a row")
        else:
            # Ray restarts the actor (max_restarts); it is ready again once placed. Should
            # its node turn out to be gone, the next poll drops it.
            slot.ready_ref = slot.actor.ready.remote()

    def shutdown(self) -> None:
        for slot in list(self.slots.values()):
            ray.kill(slot.actor, no_restart=True)
        self.slots.clear()
        if self.config.cluster.request_workers > 0:
            request_resources(bundles=[])  # withdraw: idle self-play nodes may now go


def game_stats(summary: BatchSummary) -> GameStats:
    return GameStats(games=summary.games, black_wins=summary.black_wins,
                     white_wins=summary.white_wins, draws=summary.draws,
                     cap_draws=summary.cap_draws, total_plies=summary.total_plies,
                     reasons=dict(summary.reasons), opponent_games=summary.opponent_games,
                     opponent_wins=summary.opponent_wins, opponent_draws=summary.opponent_draws)


def _alive_nodes() -> dict[str, str]:
    """Node id -> address of every node the cluster has alive."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


def _resources_here(available: bool) -> dict[str, dict[str, float]]:
    state = ray._private.state
    return dict(state.available_resources_per_node() if available
                else state.total_resources_per_node())


_resources_in_cluster = ray.remote(num_cpus=0)(_resources_here)


def resources_per_node(*, available: bool) -> dict[str, dict[str, float]]:
    """Node id -> available (or total) resources of every alive node. A Ray Client driver
    (`ray://`) cannot reach the state API, so a zero-CPU task asks from inside the cluster."""
    if ray.util.client.ray.is_connected():
        resources: dict[str, dict[str, float]] = ray.get(_resources_in_cluster.remote(available))
        return resources
    return _resources_here(available)


def worker_resource(config: Config) -> str | None:
    """The custom resource each self-play worker takes: `cluster.worker_resource` when the
    cluster advertises it or the autoscaler is asked for nodes with it; None: any node."""
    name = config.cluster.worker_resource
    if ray.cluster_resources().get(name, 0) > 0 or config.cluster.request_workers > 0:
        return name
    return None


def worker_room(config: Config, resources_per_node: Mapping[str, Mapping[str, float]],
                resource: str | None) -> int:
    """Self-play workers that `resources_per_node` hold: on every node with the worker
    resource (any node when it is None), as many as its CPUs hold."""
    cpus = config.train.worker_cpus
    room = 0
    for resources in resources_per_node.values():
        fit = resources.get("CPU", 0.0) / cpus
        if resource is not None:
            fit = min(fit, resources.get(resource, 0.0))
        room += math.floor(fit + 1e-9)
    return room


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
        self.profile = ProfileWindow(config, run_dir)
        self.tuner = LearnerTuner(config, resumed=resume is not None)
        self._updates_start = self.state.updates
        self.league = (League(config.league, config.train.seed) if config.league.enabled
                       else None)

    # ---------------------------------------------------------------- set-up
    def _start_actors(self) -> Published:
        train = self.config.train
        device = resolve_device(self.config)
        workers = (_auto_workers(self.config) if train.num_workers == "auto"
                   else int(train.num_workers))
        if train.autotune and self.resume is None:  # a resumed run keeps its saved values
            tune_games(self.config)
        resources = ray.cluster_resources()
        # A batch holds at most E*(T+1) transitions (T plies plus the held-back ones).
        self.capacity = max(workers, _auto_workers(self.config)) * _batch_capacity(self.config)
        capacity = self.capacity
        name = self.config.cluster.learner_resource  # only the learner lands on that node
        custom = {name: 1.0} if resources.get(name, 0) > 0 else None
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
        if self.league is not None:
            self._start_league(published)
        log.info("learner on %s; policy version %d, %.1f MB of weights", device,
                 published.version, published.nbytes / 1e6)
        self.pool = WorkerPool(self.config)
        self.pool.spawn(workers)
        self.pool.wait_until_ready()
        if self.resume is not None:
            self._restore_workers(self.resume.workers)
        log.info("%d self-play worker(s) ready, %d games each", self.pool.alive,
                 train.games_per_worker)
        return published

    def _start_league(self, published: Published) -> None:
        """The resumed run's pool (weights back into the object store), or a new pool whose
        first member is the starting policy."""
        assert self.league is not None
        saved = self.resume.league if self.resume is not None else {}
        if saved:
            assert self.resume is not None
            self.league.load_state_dict(saved, {member_id: [ray.put(weights)] for member_id,
                                                weights in self.resume.league_weights.items()})
        else:
            self.league.add(published.version, published.weights, self.state.updates)

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
        league = (json.loads(json.dumps(self.league.state_dict())) if self.league is not None
                  else {})
        league_boxes = dict(self.league.weights) if self.league is not None else {}

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
            league_weights = {member_id: ray.get(box[0])
                              for member_id, box in league_boxes.items()}
            return RunSnapshot(config=self.config, timestep=timestep, version=version,
                               driver=driver, learner=learner_state, workers=workers,
                               pending=payloads, pending_games=dataclasses.asdict(games),
                               rng=rng, callbacks=callbacks, league=league,
                               league_weights=league_weights)

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
            # The running update, its games and how many batches it was given.
            in_flight: tuple[Any, GameStats, int] | None = None
            # Payload refs gathered and not trained on yet; None: gather the next round. A
            # resumed run starts with the checkpoint's, so it trains exactly as it would have.
            batches: list[Any] | None = None
            games = GameStats()
            if self.resume is not None:
                batches = [ray.put(payload) for payload in self.resume.pending]
                games = GameStats(**self.resume.pending_games)
                self._reserve(len(batches) * _batch_capacity(self.config))
            else:
                self.pool.launch(self.published, self.league)
            # Every stop happens at a consistent cut: the learner idle, no collect running.
            while True:
                if batches is None:
                    collected = self.pool.gather(train.round_timeout_s, self._on_batch)
                    self._reserve(sum(c.summary.transitions for c in collected))
                    batches = [c.payload for c in collected]
                    record_round(self.league, (c.summary for c in collected), self.pool.slots)
                    games = sum((game_stats(c.summary) for c in collected), GameStats())
                    if in_flight is not None:  # pipelined: the previous update ran meanwhile
                        self._finish_update(*in_flight, cut=(batches, games))
                        in_flight = None
                if self._should_stop():
                    stopped_at = (batches, games)  # never trained on: not counted
                    break
                if batches:
                    in_flight = (self.learner.update.remote(*batches), games, len(batches))
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
                self.pool.launch(self.published, self.league)
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
            if self.profile.recording and stopped_at is not None:
                self.profile.finish()  # the run ended inside the window: what it recorded
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
        train = self.config.train
        if self.state.timestep >= train.total_timesteps or self.stop.is_set():
            return True
        if self._time_is_up():
            log.info("time limit: %.1f minutes of training, stopping at timestep %d",
                     train.max_minutes, self.state.timestep)
            return True
        return False

    def _time_is_up(self) -> bool:
        limit = self.config.train.max_minutes
        return limit is not None and time.monotonic() - self._started >= 60.0 * limit

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

    def _finish_update(self, ref: Any, games: GameStats, sent: int,
                       cut: tuple[list[Any], GameStats]) -> None:
        """Count a finished update and emit UpdateDone; `cut` is what a snapshot taken by its
        handlers holds as not-yet-trained batches (the next update's)."""
        assert self.pool is not None
        try:
            result: UpdateResult = ray.get(ref)
        except RayTaskError as exc:
            if not isinstance(exc.cause, ObjectLostError):
                raise TrainingError(f"the learner failed: {exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            # A batch's bytes went with their node before the learner fetched them: the update
            # never ran (the learner is unchanged), so its round is dropped and not counted.
            self.pool.lost_batches += sent
            self.state.lost_batches = self._lost_base + self.pool.lost_batches
            log.warning("an update's input was lost with a node (%s): its %d batch(es) are "
                        "dropped, not counted", type(exc.cause).__name__, sent)
            return
        except (RayActorError, GetTimeoutError) as exc:
            raise TrainingError(f"the learner failed: {exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        st = self.state
        st.timestep += result.accepted
        st.updates += 1
        st.version = result.published.version
        st.dropped_batches += result.dropped
        st.lost_batches = self._lost_base + self.pool.lost_batches
        self.learner_busy_s += result.busy_s
        st.games = st.games + games
        self.published = result.published
        self.profile.after_update(st.updates - self._updates_start, self.learner,
                                  [(s.worker_id, s.actor) for s in self.pool.ready_workers])
        self.tuner.after_update(self.learner)
        if self.league is not None:
            self.league.on_update(st.updates, st.version, result.published.weights)
        wall = time.monotonic() - self._started
        waits = wait_split(wall, self.learner_busy_s, self.pool.busy_s, self.pool.alive)
        self.bus.emit(UpdateDone(
            timestep=st.timestep, version=st.version, accepted=result.accepted,
            metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)},
            games=games, totals=st.games, policy_lag=result.max_lag,
            workers_alive=self.pool.alive,
            steps_per_s=(st.timestep - self._steps_start) / wall if wall > 0 else 0.0,
            worker_restarts=self.pool.restarts, wall_time=wall, weights=result.published.weights,
            learner_busy=self.learner_busy_s / wall if wall > 0 else 0.0,
            worker_busy=waits.worker_busy, bottleneck=waits.hint(),
            snapshot=functools.partial(self.snapshot, *cut)))


def _batch_capacity(config: Config) -> int:
    return config.train.games_per_worker * (config.train.rollout_steps + 1)


def _auto_workers(config: Config) -> int:
    """`num_workers: auto` at the start: the workers that fit the cluster (at least one).

    Counted on the nodes that take workers; when that is any node, the learner's CPUs are
    taken off (it shares them). Later rounds grow the pool into whatever is still free.
    """
    resource = worker_resource(config)
    room = worker_room(config, resources_per_node(available=False), resource)
    if resource is None:
        room -= math.ceil(config.train.learner_cpus / config.train.worker_cpus - 1e-9)
    return max(1, room)


def write_run_files(config: Config, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(dump(config), encoding="utf-8")
