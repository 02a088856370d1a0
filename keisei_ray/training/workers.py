"""The self-play worker pool: creating actors, placing them, collect rounds, failures, and
growing or shrinking with the cluster."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import (
    ActorUnavailableError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
)

from actors.self_play import BatchSummary, SelfPlayActor
from keisei_ray.config import Config
from keisei_ray.events import (
    GameStats,
)
from keisei_ray.training.league import League, assignment
from keisei_ray.training.learner_actor import Published
from keisei_ray.training.ray_cluster import (
    TrainingError,
    _alive_nodes,
    resources_per_node,
    worker_resource,
    worker_room,
)

log = logging.getLogger(__name__)

_RESTART_GRACE_S = 5.0  # Ray re-places a crashed actor within this on a node with room




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
    lineage: int = 0  # of the learner whose weights the running collect was given


@dataclass(frozen=True)
class Collected:
    summary: BatchSummary
    payload: Any  # ObjectRef to the encoded ExperienceBatch bytes
    lineage: int = 0  # of the learner whose weights played it


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
        self.lineage = 0  # of the current learner (restarts.py)
        self.weights_lost = False  # the last gather found the current learner's weights gone
        self.resource = worker_resource(config)
        self.server: Any = None  # the inference actor's handle (inference.enabled), or None
        requested = config.cluster.request_workers
        if requested > 0:
            self.request_room()
            log.info("asked the autoscaler for room for %d self-play worker(s) (%s)",
                     requested, self._bundle())

    def request_room(self, extra: Sequence[dict[str, float]] = ()) -> None:
        """Ask the autoscaler for room for `cluster.request_workers` workers plus the `extra`
        bundles (a new learner's). Each call replaces the previous request, which persists
        until then: the autoscaler keeps this much room, so it also replaces lost nodes."""
        request_resources(bundles=[self._bundle()] * self.config.cluster.request_workers
                          + list(extra))

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
    def launch(self, published: Published, league: League | None = None,
               progress: float = 0.0) -> None:
        """Start a collect on every ready, idle worker with the given weights (and, with a
        league, the opponents of the league games that start in it) at training `progress`."""
        for slot in self.ready_workers:
            if slot.pending is None:
                refs = slot.actor.collect.options(num_returns=2).remote(
                    published.weights, published.version, assignment(league, self.config),
                    progress, published.lineage, self.server)
                slot.pending = (refs[0], refs[1])
                slot.lineage = published.lineage
                slot.launched_at = time.monotonic()

    def gather(self, timeout_s: float, on_batch: Any) -> list[Collected]:
        """Wait for every running collect (at most `timeout_s`), in worker order.

        A worker that dies mid-collect loses its batch (logged, counted). Stragglers keep
        running; their batch arrives in a later round (and may be dropped as too old).
        Weights that cannot be fetched mean the learner (their owner) is gone: that batch is
        lost and `weights_lost` set, unless they were a replaced learner's (a straggler's).
        """
        self.weights_lost = False
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
                    if not isinstance(exc.cause, ObjectLostError):
                        raise
                    self.lost_batches += 1
                    if slot.lineage == self.lineage:
                        self.weights_lost = True
                        log.warning("worker-%d could not fetch the policy weights (%s): the "
                                    "learner that published them is gone", slot.worker_id,
                                    type(exc.cause).__name__)
                    else:
                        log.info("worker-%d's collect with a replaced learner's weights is "
                                 "lost", slot.worker_id)
                    continue
                slot.failures = 0
                slot.batches += 1
                if summary.incarnation != slot.incarnation:
                    slot.incarnation = summary.incarnation
                    self.restarts += 1
                    log.info("worker-%d is back after a restart", slot.worker_id)
                slot.node_id = summary.node_id
                self.busy_s += summary.collect_s
                item = Collected(summary, payload, slot.lineage)
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


