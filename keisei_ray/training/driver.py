"""The driver: starts (or joins) Ray, runs the actor-learner loop, fires events.

One training round, pipelined (DESIGN.md "One training iteration"):

    workers collect round k+1 with weights v_k   ||   learner updates on round k -> v_k+1

so every batch is at most one policy version old (`train.max_policy_lag: 0` waits for each
update before collecting again: strictly synchronous PPO). Experience bytes travel from the
workers to the learner as object refs; the driver only reads the small batch summaries.
The driver owns the one timestep counter, and it advances only by transitions the learner
accepted: a batch lost with a dying worker, or dropped as too old, is never counted.

A lost learner (its actor or its node) is replaced by one restored from the newest good
checkpoint, within `train.learner_max_restarts` (restarts.py): the driver's state goes back to
that checkpoint as a resume would set it (the transitions accepted after it are lost), the
workers keep their games and get the restored weights, and batches played by versions the new
learner never made are dropped.

`Trainer` keeps set-up, the loop, snapshot and restore together: they share the consistent-
cut invariant (a snapshot is only taken with the learner idle and no collect running). The
worker pool is in `workers.py`, Ray set-up in `ray_cluster.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import (
    ActorAlreadyExistsError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
)

from keisei_ray.config import Config, TrainConfig
from keisei_ray.events import (
    BatchCollected,
    Callback,
    EventBus,
    GameStats,
    LearnerLost,
    LearnerRestarted,
    StatefulCallback,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.store.checkpoint import RunSnapshot
from keisei_ray.training.inference import InferenceService, learner_gpus
from keisei_ray.training.league import League, record_round
from keisei_ray.training.learner_actor import LearnerActor, Published, UpdateResult
from keisei_ray.training.profiling import ProfileWindow
from keisei_ray.training.ray_cluster import (
    TrainingError,
    resolve_device,
    resources_per_node,
    worker_resource,
    worker_room,
)
from keisei_ray.training.restarts import (
    LearnerGone,
    RestartBudget,
    await_learner,
    learner_bundle,
    restore_point,
)
from keisei_ray.training.tuning import LearnerTuner, tune_games
from keisei_ray.training.waits import learner_remedies, wait_split
from keisei_ray.training.workers import Collected, WorkerPool, game_stats

log = logging.getLogger(__name__)

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
    learner_restarts: int = 0
    final_weights: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Batch:
    """A gathered batch the learner has not trained on yet."""

    payload: Any  # ObjectRef of the encoded bytes
    games: GameStats  # the games it finished
    version: int | None  # the policy version that played it; None: from a checkpoint
    lineage: int  # of the learner whose weights played it (restarts.py)
    updates: int  # the driver's update count when it was gathered


def _payloads(batches: Sequence[Batch]) -> list[Any]:
    return [b.payload for b in batches]


def _games(batches: Sequence[Batch]) -> GameStats:
    return sum((b.games for b in batches), GameStats())


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
        self.inference: InferenceService | None = None  # inference.enabled
        self.learner_busy_s = 0.0
        self.published: Published | None = None
        self.final_weights: dict[str, Any] | None = None  # fetched before the learner goes
        self._started = 0.0
        self._steps_start = 0
        self._lost_base = self.state.lost_batches
        self.capacity = 0  # transitions the learner's buffer holds
        self.remedies: list[str] = []  # what the bottleneck hint may advise a slow learner
        self.profile = ProfileWindow(config, run_dir)
        self.tuner = LearnerTuner(config, resumed=resume is not None)
        self._updates_start = self.state.updates
        self.league = (League(config.league, config.train.seed) if config.league.enabled
                       else None)
        # Learner restarts (restarts.py): the budget, the learner's placement, the lineage of
        # policy versions and, per replaced lineage, the newest version still valid.
        self.budget = RestartBudget(config.train.learner_max_restarts,
                                    config.train.learner_restart_window_s)
        self.device = "cpu"
        self.lineage = 0
        self._valid_upto: dict[int, int] = {}
        self._learner_options: dict[str, Any] = {}
        self._origin: RunSnapshot | None = None  # the run's start (a new run's only)
        self._lost_at: float | None = None  # when the newest loss was seen, until an update

    # ---------------------------------------------------------------- set-up
    def _start_actors(self) -> Published:
        train = self.config.train
        self.device = device = resolve_device(self.config)
        self.remedies = learner_remedies(self.config, device)
        workers = (_auto_workers(self.config) if train.num_workers == "auto"
                   else int(train.num_workers))
        if train.autotune and self.resume is None:  # a resumed run keeps its saved values
            tune_games(self.config)
        resources = ray.cluster_resources()
        # A batch holds E*T transitions (T plies of E games).
        self.capacity = max(workers, _auto_workers(self.config)) * _batch_capacity(self.config)
        name = self.config.cluster.learner_resource  # only the learner lands on that node
        custom = {name: 1.0} if resources.get(name, 0) > 0 else None
        self._learner_options = {
            "name": "keisei/learner", "num_cpus": train.learner_cpus,
            "num_gpus": learner_gpus(self.config, device), "resources": custom,
            "max_restarts": 0,  # the driver restarts it from a checkpoint (restarts.py)
        }
        loaded, publishing = self._new_learner(self._learner_state)
        if loaded is not None:
            ray.get(loaded)
        published: Published = ray.get(publishing)
        if self.league is not None:
            self._start_league(published, self.resume)
        log.info("learner on %s; policy version %d, %.1f MB of weights", device,
                 published.version, published.nbytes / 1e6)
        self.pool = WorkerPool(self.config)
        if self.config.inference.enabled:
            self.inference = InferenceService(self.config, self.learner)
            self.inference.start()
            self.pool.server = self.inference.handle
        self.pool.spawn(workers)
        self.pool.wait_until_ready()
        if self.resume is not None:
            self._restore_workers(self.resume.workers)
        log.info("%d self-play worker(s) ready, %d games each", self.pool.alive,
                 train.games_per_worker)
        return published

    def _new_learner(self, state: dict[str, Any] | None) -> tuple[Any, Any]:
        """Create the learner actor (restored from `state` when given); returns the refs of
        the restore (None without a state) and of its first weights, not waited for."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self.learner = ray.remote(LearnerActor).options(**self._learner_options).remote(
                    self.config, self.capacity, self.device, self.lineage)
                break
            except ActorAlreadyExistsError:  # a lost one's name is released a moment after
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        loaded = None if state is None else self.learner.load_state_dict.remote(state)
        return loaded, self.learner.publish.remote()

    def _start_league(self, published: Published, snapshot: RunSnapshot | None) -> None:
        """The snapshot's pool (weights back into the object store), or a new pool whose
        first member is the starting policy."""
        assert self.league is not None
        saved = snapshot.league if snapshot is not None else {}
        if saved:
            assert snapshot is not None
            self.league.load_state_dict(saved, {member_id: [ray.put(weights)] for member_id,
                                                weights in snapshot.league_weights.items()})
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

    def _restore_process_state(self, snapshot: RunSnapshot) -> None:
        """The driver's RNG states and the stateful callbacks' states of `snapshot`."""
        rng = snapshot.rng
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(torch.from_numpy(np.asarray(rng["torch"], dtype=np.uint8)))
        for callback in self.bus.callbacks:
            if isinstance(callback, StatefulCallback) and callback.state_key in (
                    snapshot.callbacks):
                try:
                    callback.load_state_dict(snapshot.callbacks[callback.state_key])
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
        callbacks, rng = self._callback_states(), _rng_states()
        driver, timestep, version = self.state.to_dict(), self.state.timestep, self.state.version
        value_material = self.config.reward.weight_at(self.progress())
        league = (json.loads(json.dumps(self.league.state_dict())) if self.league is not None
                  else {})
        league_boxes = dict(self.league.weights) if self.league is not None else {}

        def fetch() -> RunSnapshot:
            try:
                learner_state = ray.get(learner_ref)
            except RayActorError as exc:  # a loss the driver can heal (a TrainingError too)
                raise LearnerGone(f"the learner failed: {exc.__class__.__name__}") from exc
            except RayTaskError as exc:
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
                               league_weights=league_weights, value_material=value_material)

        return fetch

    def _callback_states(self) -> dict[str, Any]:
        """Copies of the stateful callbacks' states as they are now (JSON round trip: they
        must be JSON-able, and later changes must not leak into the copy)."""
        states = json.loads(json.dumps({cb.state_key: cb.state_dict()
                                        for cb in self.bus.callbacks
                                        if isinstance(cb, StatefulCallback)}))
        return dict(states)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.inference is not None:
            self.inference.shutdown()
        if self.learner is not None:
            ray.kill(self.learner, no_restart=True)

    # ---------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train until `total_timesteps` accepted transitions, or until `stop` is set."""
        reason = "completed"
        stopped_at: list[Batch] | None = None  # the cut the loop ended at
        final: RunSnapshot | None = None  # the run's end, taken at that cut
        self._started = time.monotonic()
        try:
            batches = self._begin()
            while True:
                try:
                    stopped_at = self._loop(batches)
                    final = self._final_state(stopped_at)
                    break
                except LearnerGone as lost:
                    batches = self._recover(lost)
            if self.stop.is_set() and self.state.timestep < self.config.train.total_timesteps:
                reason = "interrupted"
        except KeyboardInterrupt:
            reason = "interrupted"
            stopped_at = None  # a second Ctrl-C: wherever the loop was, no consistent cut
            raise
        except TrainingError as exc:
            reason = f"failed: {exc}"
            stopped_at = None
            raise
        finally:
            self._end(reason, None if stopped_at is None else final)
        return self._result(reason)

    def _final_state(self, stopped_at: list[Batch]) -> RunSnapshot:
        """The end of the run, taken from the learner while a lost one can still be replaced:
        its last weights and the final cut's snapshot (what the end checkpoint holds). A
        learner lost here, after its last update, heals like any other loss: the driver goes
        back to the last good checkpoint and trains to the end again; afterwards the learner is
        no longer needed."""
        assert self.published is not None
        try:
            self.final_weights = ray.get(self.published.weights[0])
            return self.snapshot(_payloads(stopped_at), _games(stopped_at))()
        except (RayActorError, OutOfMemoryError, NodeDiedError, ObjectLostError) as exc:
            raise LearnerGone(f"the learner failed after its last update: {_first_line(exc)}",
                              in_hand=stopped_at) from exc

    def _end_snapshot(self, final: RunSnapshot) -> Callable[[], RunSnapshot]:
        """TrainEnd's snapshot: the end as `_final_state` took it, with the callbacks' states
        as they are when a handler asks (the final evaluation, which finishes in an earlier
        TrainEnd handler, is in them, as it was before the end was taken early)."""
        snapshot = dataclasses.replace(final, callbacks=self._callback_states())
        return lambda: snapshot

    def _loop(self, batches: list[Batch] | None) -> list[Batch]:
        """Collect, update, count, fire events, until a stop; return the cut it stopped at
        (the batches gathered and never trained on: not counted).

        Pipelined: round k+1 is collected while the learner updates on round k, and the
        update is counted once that round is in. Every stop happens at a consistent cut: the
        learner idle, no collect running. A lost learner raises LearnerGone with the batches
        in hand.
        """
        assert self.pool is not None and self.published is not None
        synchronous = self.config.ppo.max_policy_lag == 0
        in_flight: tuple[Any, list[Batch]] | None = None  # the running update and its input
        while True:
            if batches is None:
                batches = self._collect()
                if self.pool.weights_lost:
                    sent = in_flight[1] if in_flight is not None else []
                    raise LearnerGone("the learner failed: the policy weights it published "
                                      "are gone", in_hand=[*sent, *batches])
                if in_flight is not None:  # pipelined: the previous update ran meanwhile
                    self._finish_update(*in_flight, cut=batches)
                    in_flight = None
            if self._should_stop():
                return batches
            if batches:
                in_flight = (self.learner.update.remote(*_payloads(batches)), batches)
                if synchronous:
                    self._finish_update(*in_flight, cut=[])
                    in_flight = None
                    if self._should_stop():
                        return []
            batches = None
            self.pool.poll_ready()
            self.pool.grow_to_capacity()
            if not self.pool.slots:
                raise TrainingError("every self-play worker is gone")
            self.pool.launch(self.published, self.league, self.progress())

    def _begin(self) -> list[Batch] | None:
        """Start the actors, restore a resumed run, fire TrainStart, launch the first round.

        Returns the batches gathered and not trained on yet (None: gather the next round);
        a resumed run starts with the checkpoint's, so it trains exactly as it would have.
        """
        self.published = self._start_actors()
        assert self.pool is not None
        self.state.version = self.published.version
        self._steps_start = self.state.timestep
        if self.resume is not None:
            self._restore_process_state(self.resume)
        else:  # what a learner lost before the first checkpoint restarts from
            self._origin = RunSnapshot(
                config=self.config, timestep=self.state.timestep, version=self.state.version,
                driver=self.state.to_dict(), learner={}, workers={}, rng=_rng_states(),
                callbacks=self._callback_states())
        self._started = time.monotonic()  # rates count from here, not from actor start-up
        self.bus.emit(TrainStart(self.run_dir, self.config, self.state.timestep,
                                 self.state.version, self.resumed, bus=self.bus))
        if self.resume is None:
            self.pool.launch(self.published, self.league, self.progress())
            return None
        return self._pending_of(self.resume)

    def _pending_of(self, snapshot: RunSnapshot) -> list[Batch]:
        """A snapshot's batches gathered and not trained on, back in the object store (their
        games all on the first)."""
        games = GameStats(**snapshot.pending_games) if snapshot.pending_games else GameStats()
        batches = [Batch(ray.put(payload), games if i == 0 else GameStats(), None, self.lineage,
                         self.state.updates) for i, payload in enumerate(snapshot.pending)]
        # Batches saved by versions that held a row per game back hold up to E*(T+1) rows.
        held = self.config.train.games_per_worker
        self._reserve(len(batches) * (_batch_capacity(self.config) + held))
        return batches

    def _collect(self) -> list[Batch]:
        """Gather the running round: its batches (those of a replaced learner's versions that
        the current one never made are dropped)."""
        assert self.pool is not None
        collected = self.pool.gather(self.config.train.round_timeout_s, self._on_batch)
        if self.inference is not None:  # a worker lost it: replaced if it is gone for good
            self.inference.after_round(c.summary for c in collected)
            self.pool.server = self.inference.handle
        record_round(self.league, (c.summary for c in collected), self.pool.slots)
        batches = [Batch(c.payload, game_stats(c.summary), c.summary.version, c.lineage,
                         self.state.updates) for c in collected]
        kept = [b for b in batches if self._usable(b)]
        if len(kept) < len(batches):
            self.state.dropped_batches += len(batches) - len(kept)
            log.info("dropped %d batch(es) played by a replaced learner's weights",
                     len(batches) - len(kept))
        self._reserve(sum(c.summary.transitions for c in collected))
        return kept

    def _usable(self, batch: Batch) -> bool:
        """Played by the current learner's weights, or by a version the current one shares."""
        return batch.lineage == self.lineage or (
            batch.version is not None and batch.version <= self._valid_upto.get(batch.lineage,
                                                                               -1))

    def _end(self, reason: str, final: RunSnapshot | None) -> None:
        """Fire TrainEnd (with the final snapshot when the loop stopped at a cut) and stop the
        actors."""
        snapshot = None if final is None else functools.partial(self._end_snapshot, final)
        if self.profile.recording and final is not None:
            self.profile.finish()  # the run ended inside the window: what it recorded
        self.bus.emit(TrainEnd(self.state.timestep, self.state.version, reason,
                               snapshot=snapshot))
        self.close()

    # ---------------------------------------------------------------- learner restarts
    def _recover(self, lost: LearnerGone) -> list[Batch]:
        """A new learner from the last good checkpoint, within the restart budget (else the
        loss ends the run: TrainingError); returns the batches its first update trains on."""
        while True:
            if not self.budget.take(time.monotonic()):
                raise TrainingError(f"{lost}{self.budget.refusal()}") from lost
            try:
                return self._restart_learner(lost)
            except LearnerGone as again:  # the new one was lost too: another restart
                again.in_hand = lost.in_hand
                lost = again

    def _restart_learner(self, lost: LearnerGone) -> list[Batch]:
        """Replace the lost learner by one restored from the newest good checkpoint (or the
        run's start), as `--resume` restores it; roll the driver back to that checkpoint and
        keep the workers' games (they get the restored weights with their next collect).
        Returns the batches the new learner's first update trains on."""
        error = str(lost)
        log.warning("%s; restarting it from the last good checkpoint (restart %d of this "
                    "session)", error, self.budget.total)
        # Checkpoint writers finish now: the newest good checkpoint is read next.
        self.bus.emit(LearnerLost(self.state.timestep, self.state.version, error))
        ray.kill(self.learner, no_restart=True)  # should it linger (unreachable, not dead)
        if self.profile.recording:  # the window ends with the learner: what survived of it
            self.profile.finish()
        point = restore_point(self.run_dir)
        snapshot = point.snapshot or self._origin
        if snapshot is None:  # a resumed session whose checkpoints are all gone or bad
            raise TrainingError(f"{error}; no good checkpoint to restart the learner from")
        published = self._place_learner(snapshot, point.path, error)
        return self._roll_back(snapshot, point.path, published, lost)

    def _place_learner(self, snapshot: RunSnapshot, path: Path | None, error: str) -> Published:
        """A new learner (a new lineage) restored from `snapshot`, once there is room for it;
        LearnerGone when it is lost too, TrainingError when it finds no room in time."""
        assert self.pool is not None
        # The versions after the checkpoint will be made again, by other weights.
        for lineage in self._valid_upto:
            self._valid_upto[lineage] = min(self._valid_upto[lineage], snapshot.version)
        self._valid_upto[self.lineage] = snapshot.version
        self.lineage += 1
        loaded, publishing = self._new_learner(snapshot.learner or None)
        bundle = learner_bundle(self.config, self._learner_options)
        on_cluster = bool(self._learner_options.get("resources"))
        if on_cluster:  # ask the autoscaler for a node for it, as for workers
            self.pool.request_room([bundle])
        try:
            published: Published = await_learner(
                publishing, self.config.train.learner_restart_timeout_s, self.stop, bundle)
            if loaded is not None:
                ray.get(loaded)
        except (RayActorError, OutOfMemoryError, NodeDiedError) as exc:
            raise LearnerGone(f"the learner failed: {_first_line(exc)}") from exc
        except TrainingError as exc:  # no room in time, or asked to stop meanwhile
            ray.kill(self.learner, no_restart=True)
            raise TrainingError(f"{error}; {exc}") from exc
        except RayTaskError as exc:
            raise TrainingError(f"{error}; the new learner could not load "
                                f"{path or 'the initial state'}: {_first_line(exc)}") from exc
        finally:
            if on_cluster:
                self.pool.request_room()
        return published

    def _roll_back(self, snapshot: RunSnapshot, path: Path | None, published: Published,
                   lost: LearnerGone) -> list[Batch]:
        """The driver's side of `snapshot`, as a resume restores it (the workers keep their
        games); the batches in hand that the new learner can use; LearnerRestarted."""
        assert self.pool is not None
        lost_timestep = self.state.timestep
        self.state = TrainState.from_dict(snapshot.driver)
        self._lost_base = self.state.lost_batches - self.pool.lost_batches
        self._restore_process_state(snapshot)
        if self.league is not None:
            next_id = self.league.next_id
            self.league = League(self.config.league, self.config.train.seed)
            self._start_league(published, snapshot if snapshot.league else None)
            # Workers may still hold the lost members' networks: never reuse their ids.
            self.league.next_id = max(self.league.next_id, next_id)
        self.published = published
        self.state.version = published.version
        self.pool.lineage = self.lineage
        # Gathered after the checkpoint's cut (its own are in its pending) and played by a
        # version the new learner shares: trained on; the others are dropped.
        restored = int(snapshot.driver.get("updates", 0))
        kept = [b for b in lost.in_hand if self._usable(b) and b.updates >= restored]
        self.state.dropped_batches += len(lost.in_hand) - len(kept)
        batches = self._pending_of(snapshot) + kept
        self._reserve(len(batches) * _batch_capacity(self.config))
        self._lost_at = lost.at
        down = time.monotonic() - lost.at
        lost_steps = lost_timestep - self.state.timestep
        log.warning("learner restarted from %s: timestep %d -> %d (%d transitions lost), "
                    "policy version %d; %d batch(es) in hand kept, %d dropped; %.1f s down",
                    path or "the run's start (no checkpoint yet)", lost_timestep,
                    self.state.timestep, lost_steps, published.version, len(kept),
                    len(lost.in_hand) - len(kept), down)
        self.bus.emit(LearnerRestarted(
            timestep=self.state.timestep, version=published.version, checkpoint=path,
            transitions_lost=lost_steps, lost_timestep=lost_timestep,
            restarts=self.budget.total, down_s=down, error=str(lost),
            weights=published.weights))
        return batches

    def _result(self, reason: str) -> TrainResult:
        wall = time.monotonic() - self._started
        steps = self.state.timestep - self._steps_start
        alive = max(self.pool.alive if self.pool else 1, 1)
        return TrainResult(
            run_dir=self.run_dir, state=self.state, reason=reason, wall_s=wall,
            steps_per_s=steps / wall if wall > 0 else 0.0,
            learner_busy=self.learner_busy_s / wall if wall > 0 else 0.0,
            worker_busy=(self.pool.busy_s if self.pool else 0.0) / max(wall * alive, 1e-9),
            worker_restarts=self.pool.restarts if self.pool else 0,
            callback_errors=self.bus.errors, learner_restarts=self.budget.total,
            final_weights=self.final_weights)

    def _should_stop(self) -> bool:
        train = self.config.train
        if self.state.timestep >= train.total_timesteps or self.stop.is_set():
            return True
        if self._time_is_up():
            log.info("time limit: %.1f minutes of training, stopping at timestep %d",
                     train.max_minutes, self.state.timestep)
            return True
        return False

    def progress(self) -> float:
        """How far training is, in [0, 1] (`training_progress` of this run, now)."""
        return training_progress(self.config.train, self.state.timestep,
                                 time.monotonic() - self._started)

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

    def _finish_update(self, ref: Any, sent: list[Batch], cut: list[Batch]) -> None:
        """Count a finished update of the batches `sent` and emit UpdateDone; `cut` is what a
        snapshot taken by its handlers holds as not-yet-trained batches (the next update's)."""
        assert self.pool is not None
        try:
            result: UpdateResult = ray.get(ref)
        except (RayActorError, OutOfMemoryError, NodeDiedError) as exc:
            raise LearnerGone(f"the learner failed: {_first_line(exc)}",
                              in_hand=[*sent, *cut]) from exc
        except RayTaskError as exc:
            if not isinstance(exc.cause, ObjectLostError):
                raise TrainingError(f"the learner failed: {exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            # A batch's bytes went with their node before the learner fetched them: the update
            # never ran (the learner is unchanged), so its round is dropped and not counted.
            self.pool.lost_batches += len(sent)
            self.state.lost_batches = self._lost_base + self.pool.lost_batches
            log.warning("an update's input was lost with a node (%s): its %d batch(es) are "
                        "dropped, not counted", type(exc.cause).__name__, len(sent))
            return
        except GetTimeoutError as exc:
            raise TrainingError(f"the learner failed: {_first_line(exc)}") from exc
        st = self.state
        # The profile window and the autotune call the idle learner: lost there, it is lost
        # before this update counts (its batches are in hand for the restored learner).
        try:
            self.profile.after_update(st.updates + 1 - self._updates_start, self.learner,
                                      [(s.worker_id, s.actor) for s in self.pool.ready_workers])
            self.tuner.after_update(self.learner)
        except (RayActorError, OutOfMemoryError, NodeDiedError) as exc:
            raise LearnerGone(f"the learner failed: {_first_line(exc)}",
                              in_hand=[*sent, *cut]) from exc
        st.timestep += result.accepted
        st.updates += 1
        st.version = result.published.version
        st.dropped_batches += result.dropped
        st.lost_batches = self._lost_base + self.pool.lost_batches
        self.learner_busy_s += result.busy_s
        st.games = st.games + _games(sent)
        self.published = result.published
        if self.league is not None:
            self.league.on_update(st.updates, st.version, result.published.weights)
        if self._lost_at is not None:
            log.info("first update after the learner restart: %.1f s after the loss was seen",
                     time.monotonic() - self._lost_at)
            self._lost_at = None
        wall = time.monotonic() - self._started
        waits = wait_split(wall, self.learner_busy_s, self.pool.busy_s, self.pool.alive,
                           self.remedies)
        self.bus.emit(UpdateDone(
            timestep=st.timestep, version=st.version, accepted=result.accepted,
            metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)},
            games=_games(sent), totals=st.games, policy_lag=result.max_lag,
            workers_alive=self.pool.alive,
            steps_per_s=(st.timestep - self._steps_start) / wall if wall > 0 else 0.0,
            worker_restarts=self.pool.restarts, wall_time=wall, weights=result.published.weights,
            learner_busy=self.learner_busy_s / wall if wall > 0 else 0.0,
            worker_busy=waits.worker_busy, bottleneck=waits.hint(),
            learner_restarts=self.budget.total,
            value_material=self.config.reward.weight_at(self.progress()),
            snapshot=functools.partial(self.snapshot, _payloads(cut), _games(cut))))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _rng_states() -> dict[str, Any]:
    """The driver process's RNG states (what a snapshot saves and a restore sets)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state().numpy()}


def training_progress(train: TrainConfig, timestep: int, elapsed_s: float) -> float:
    """How far training is, in [0, 1]: the larger of the timestep share and (with
    train.max_minutes) the share of the time limit, whichever budget ends the run first."""
    done = timestep / train.total_timesteps
    if train.max_minutes is not None:
        done = max(done, elapsed_s / (60.0 * train.max_minutes))
    return min(max(done, 0.0), 1.0)


def _batch_capacity(config: Config) -> int:
    return config.train.games_per_worker * config.train.rollout_steps


def _auto_workers(config: Config) -> int:
    """`num_workers: auto` at the start: the workers that fit the cluster (at least one).

    Counted on the nodes that take workers; when that is any node, the learner's CPUs are
    taken off (it shares them). Later rounds grow the pool into whatever is still free.
    """
    resource = worker_resource(config)
    room = worker_room(config, resources_per_node(available=False), resource)
    if resource is None:
        room -= math.ceil(config.train.learner_cpus / config.train.worker_cpus - 1e-9)
        if config.inference.enabled:  # the inference actor's CPUs too
            room -= math.ceil(config.inference.num_cpus / config.train.worker_cpus - 1e-9)
    return max(1, room)


