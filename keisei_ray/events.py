"""The event bus the driver fires and callbacks listen to.

Checkpointing, evaluation, W&B and the progress view all hang on these events. A callback's
exception is logged with its traceback and counted; it never stops training or the other
callbacks, and a callback that keeps failing is disabled with a warning.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GameStats:
    """Finished-game statistics of one batch or one update."""

    games: int = 0
    black_wins: int = 0
    white_wins: int = 0
    draws: int = 0  # sennichite and other draws, excluding the move cap
    cap_draws: int = 0  # games that hit max_moves (a draw for statistics)
    total_plies: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    # Games against the fixed training opponent (train.opponent_share), not counted above.
    opponent_games: int = 0
    opponent_wins: int = 0
    opponent_draws: int = 0

    def __add__(self, other: GameStats) -> GameStats:
        reasons = dict(self.reasons)
        for key, value in other.reasons.items():
            reasons[key] = reasons.get(key, 0) + value
        return GameStats(
            games=self.games + other.games,
            black_wins=self.black_wins + other.black_wins,
            white_wins=self.white_wins + other.white_wins,
            draws=self.draws + other.draws,
            cap_draws=self.cap_draws + other.cap_draws,
            total_plies=self.total_plies + other.total_plies,
            reasons=reasons,
            opponent_games=self.opponent_games + other.opponent_games,
            opponent_wins=self.opponent_wins + other.opponent_wins,
            opponent_draws=self.opponent_draws + other.opponent_draws,
        )

    @property
    def mean_length(self) -> float:
        return self.total_plies / self.games if self.games else 0.0

    def shares(self) -> dict[str, float]:
        """Decisive / draw / cap-draw shares of the finished games."""
        n = max(self.games, 1)
        return {
            "win_share": (self.black_wins + self.white_wins) / n,
            "black_win_share": self.black_wins / n,
            "draw_share": self.draws / n,
            "cap_draw_share": self.cap_draws / n,
            "opponent_win_share": self.opponent_wins / max(self.opponent_games, 1),
        }


@dataclass(frozen=True)
class TrainStart:
    run_dir: Path
    config: Any  # keisei_ray.config.Config (kept loose to avoid an import cycle for callbacks)
    timestep: int
    version: int
    resumed: bool
    bus: EventBus | None = None  # callbacks that produce events of their own emit them here


@dataclass(frozen=True)
class BatchCollected:
    worker_id: int
    transitions: int
    version: int
    bytes: int
    games: GameStats


@dataclass(frozen=True)
class UpdateDone:
    timestep: int  # the driver's counter, after this update's accepted transitions
    version: int  # the learner's policy version after this update
    accepted: int  # transitions the learner trained on in this update
    metrics: dict[str, float]
    games: GameStats  # games finished in the batches of this update
    totals: GameStats  # games finished since the run began
    policy_lag: int  # largest version lag among the accepted batches
    workers_alive: int
    steps_per_s: float
    worker_restarts: int
    wall_time: float  # seconds since training started (this session)
    weights: Any = None  # [ObjectRef] of this version's {name: ndarray} (boxed: not resolved)
    learner_busy: float = 0.0  # fraction of the wall time the learner spent updating
    worker_busy: float = 0.0  # fraction of the workers' wall time spent collecting
    bottleneck: str = ""  # one line: which side holds the run back (keisei_ray.training.waits)
    learner_restarts: int = 0  # learners restarted from a checkpoint (this session)
    # The material shaping in force now (reward.weight_at): what this version's value head has
    # learnt on top of the result, so a searching player can read its values (PolicyValueNet).
    value_material: float = 0.0
    # Captures the run at this update (a consistent cut: the learner is idle and no worker is
    # collecting while handlers run) and returns `fetch`; `fetch()` -> RunSnapshot (see
    # keisei_ray.store.checkpoint) completes it, blocking, from any thread. Capturing is cheap: the
    # actors' states are requested, not waited for. None: no consistent cut.
    snapshot: Callable[[], Callable[[], Any]] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CheckpointSaved:
    timestep: int
    version: int
    path: Path
    reason: str  # "interval", "end", "interrupt"; "best": this (existing) one is now the best


@dataclass(frozen=True)
class EvaluationDone:
    """A background evaluation of policy `version` (trained to `timestep`) finished."""

    timestep: int
    version: int
    opponent: str  # "random", "heuristic", or a checkpoint / model name
    games: int
    wins: int
    losses: int
    draws: int
    elo: float | None = None  # rating after this match, when an Elo store is kept
    elo_ci: float | None = None  # half-width of its 95% interval
    details: dict[str, Any] = field(default_factory=dict)  # e.g. results by reason, records

    @property
    def score(self) -> float:
        """(wins + draws / 2) / games."""
        return (self.wins + 0.5 * self.draws) / self.games if self.games else 0.0


@dataclass(frozen=True)
class LearnerLost:
    """The learner actor (or its node) is gone and will be restarted from the last good
    checkpoint. Handlers finish what they write now (the driver reads the checkpoints next)
    and drop work that used the lost learner's weights."""

    timestep: int  # the counter when the loss was seen (rolled back next)
    version: int
    error: str  # one line: what Ray reported


@dataclass(frozen=True)
class LearnerRestarted:
    """A new learner runs, restored from `checkpoint` (None: the run's start; no checkpoint
    was saved yet). The driver's counters, RNG and the stateful callbacks' states are the
    checkpoint's again: the transitions accepted after it are lost and no longer counted."""

    timestep: int  # the counter after the rollback (the checkpoint's)
    version: int  # the restored policy version
    checkpoint: Path | None
    transitions_lost: int  # accepted after the checkpoint, taken off the counter
    lost_timestep: int  # the counter before the rollback
    restarts: int  # learner restarts of this session, this one included
    down_s: float  # seconds from the loss being seen to the new learner's first weights
    error: str  # what Ray reported when the learner was lost
    weights: Any = None  # [ObjectRef] of the restored weights (boxed: not resolved)


@dataclass(frozen=True)
class TrainEnd:
    timestep: int
    version: int
    reason: str  # "completed", "interrupted", or "failed: <why>"
    # As UpdateDone.snapshot: set when training stopped at a consistent cut (completed, or
    # interrupted after finishing the in-flight update); None after a failure.
    snapshot: Callable[[], Callable[[], Any]] | None = field(default=None, repr=False)


class Callback:
    """Base class of callbacks: override the events you need. Exceptions are contained."""

    def on_train_start(self, event: TrainStart) -> None:
        """Training is about to start (or resume)."""

    def on_batch_collected(self, event: BatchCollected) -> None:
        """A worker delivered one batch (not yet trained on)."""

    def on_update_done(self, event: UpdateDone) -> None:
        """The learner finished an update; the timestep counter has advanced."""

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        """A checkpoint directory was written (renamed into place)."""

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        """A background evaluation finished."""

    def on_learner_lost(self, event: LearnerLost) -> None:
        """The learner is gone; it is about to be restored from the last good checkpoint."""

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        """A new learner took over from a checkpoint; the counters were rolled back to it."""

    def on_train_end(self, event: TrainEnd) -> None:
        """Training stopped; the reason says why."""


@runtime_checkable
class StatefulCallback(Protocol):
    """A callback whose state travels in checkpoints (e.g. the Elo table).

    Checkpoints save `state_dict()` (JSON-able values only) under `state_key` (unique per
    callback); a resumed run calls `load_state_dict` with it before TrainStart is emitted.
    """

    state_key: str

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


Event = (TrainStart | BatchCollected | UpdateDone | CheckpointSaved | EvaluationDone
         | LearnerLost | LearnerRestarted | TrainEnd)

_HANDLERS: dict[type, str] = {
    TrainStart: "on_train_start",
    BatchCollected: "on_batch_collected",
    UpdateDone: "on_update_done",
    CheckpointSaved: "on_checkpoint_saved",
    EvaluationDone: "on_evaluation_done",
    LearnerLost: "on_learner_lost",
    LearnerRestarted: "on_learner_restarted",
    TrainEnd: "on_train_end",
}


class EventBus:
    """Calls every registered callback for each event, containing their failures."""

    def __init__(self, max_failures: int = 3) -> None:
        self.max_failures = max_failures
        self._callbacks: list[Callback] = []
        # Consecutive failures per (callback, handler): a handler that keeps failing disables
        # its callback even when the callback's other handlers succeed in between.
        self._failures: dict[tuple[int, str], int] = {}
        self.errors = 0  # callback exceptions caught since the bus was created

    @property
    def callbacks(self) -> list[Callback]:
        return list(self._callbacks)

    def register(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def emit(self, event: Event) -> None:
        method = _HANDLERS[type(event)]
        for callback in list(self._callbacks):
            try:
                getattr(callback, method)(event)
            except Exception:
                # Contained on purpose: a callback must never stop training or other callbacks.
                self.errors += 1
                key = (id(callback), method)
                count = self._failures[key] = self._failures.get(key, 0) + 1
                log.exception("callback %s failed in %s (%d in a row)",
                              type(callback).__name__, method, count)
                if count >= self.max_failures:
                    log.warning("callback %s disabled after %d consecutive failures",
                                type(callback).__name__, count)
                    self._callbacks.remove(callback)
            else:
                self._failures.pop((id(callback), method), None)


class CallbackImportError(ValueError):
    """A callback named in the config cannot be imported or built."""


def load_callback(spec: str) -> Callback:
    """Build a callback from `package.module:ClassName` (instantiated without arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CallbackImportError(f"callback {spec!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CallbackImportError(
            f"callback {spec!r}: cannot import {module_name} ({exc})") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise CallbackImportError(f"callback {spec!r}: {module_name} has no {attr}") from None
    instance = factory()
    if not isinstance(instance, Callback):
        raise CallbackImportError(f"callback {spec!r}: {attr} is not a keisei_ray.events.Callback")
    return instance
