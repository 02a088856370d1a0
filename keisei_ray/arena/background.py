"""Background evaluation during training, which never blocks collection or updates.

`BackgroundEvaluation` is a callback. Every `evaluation.interval_timesteps` it hands the
update's weights (a boxed ObjectRef: never copied through the driver) to an evaluation actor
and returns at once; finished evaluations are picked up on later events, rated in the run's one
Elo store, written as game records, logged, and emitted as `EvaluationDone` on the bus. At most
one evaluation runs at a time; if the next one comes due meanwhile it waits, and a newer one
replaces it (training never waits for evaluation, except for a bounded final wait).

Each match of an evaluation is one `EvaluationDone`: `opponent` is `random`, `heuristic`, a
model file's name, or `previous` for the earlier policy of the run (a stable metric name; its
real name is `details["opponent_name"]`); `elo`/`elo_ci` are the policy's rating once all of
the evaluation's games are in the store, so they are the same for each match of it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from actors.evaluation import Contestant, EvaluationActor, MatchResult
from keisei_ray.arena.elo import EloStore
from keisei_ray.arena.evaluation import (
    boxed,
    load_contestant,
)
from keisei_ray.arena.records import write_record
from keisei_ray.config import Config, ConfigError
from keisei_ray.events import (
    Callback,
    EvaluationDone,
    EventBus,
    LearnerLost,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.files import make_dir, write_text_atomic
from keisei_ray.text import signed

log = logging.getLogger(__name__)

ELO_FILE = "elo.json"  # in RUN_DIR/evaluation: the run's evaluations, ratings and games


# ----------------------------------------------------------------------------- background


@dataclass(frozen=True)
class _Request:
    name: str
    timestep: int
    version: int
    weights: list[Any]  # [ObjectRef] of the policy's weights
    value_material: float = 0.0  # the shaping its value head learnt (UpdateDone)


@dataclass
class _Running:
    request: _Request
    ref: Any
    opponents: list[str]
    previous: str | None  # the earlier policy among the opponents, if any
    started: float = field(default_factory=time.monotonic)


class BackgroundEvaluation(Callback):
    """Evaluates the policy in the background every `evaluation.interval_timesteps`.

    Each evaluation plays `evaluation.games` games against every fixed opponent and, with
    `evaluation.previous`, against the previously evaluated policy; all games go into the run's
    Elo store (`state_dict` keeps it for checkpoints, `load_state_dict` restores it on resume).
    """

    state_key = "evaluation"

    def __init__(self, config: Config, run_dir: Path | None = None, *,
                 actor_factory: Callable[[Config], Any] | None = None) -> None:
        self.config = config
        self.settings = config.evaluation
        self.run_dir = run_dir
        # Bad opponent files fail here, before the run starts, as a config error.
        try:
            self.opponents = [load_contestant(spec) for spec in self.settings.opponents]
        except ValueError as exc:
            raise ConfigError(f"evaluation.opponents: {exc}") from None
        self.elo = EloStore()
        self.history: list[dict[str, Any]] = []
        self.bus: EventBus | None = None
        self._actor_factory = actor_factory or self._default_actor
        self._actor: Any = None
        self._running: _Running | None = None
        self._pending: _Request | None = None
        self._previous: Contestant | None = None
        self._last_bucket: int | None = None
        self._latest: _Request | None = None  # the newest policy, evaluated at the end
        self._submitted_version: int | None = None
        self.skipped = 0  # evaluations replaced by a newer one before they could start
        self.failed = 0

    # ---------------------------------------------------------------- events
    def on_train_start(self, event: TrainStart) -> None:
        self.bus = event.bus
        self.run_dir = event.run_dir
        if self._last_bucket is None:
            self._last_bucket = event.timestep // self.settings.interval_timesteps
        self.opponents = [boxed(o) for o in self.opponents]
        if event.resumed:
            self._restore_from_disk(event.timestep)

    def on_update_done(self, event: UpdateDone) -> None:
        self.poll()
        bucket = event.timestep // self.settings.interval_timesteps
        if self._last_bucket is None:
            self._last_bucket = 0
        if event.weights is None:
            return
        self._latest = _Request(f"ts-{event.timestep}", event.timestep, event.version,
                                event.weights, event.value_material)
        if bucket > self._last_bucket:
            self._last_bucket = bucket
            self.submit(self._latest)

    def on_learner_lost(self, event: LearnerLost) -> None:
        # Its evaluations play the lost learner's weights (gone with it, or of versions that
        # will be made again): dropped. The Elo table goes back to the checkpoint's with the
        # driver's restore, and the previous policy, as on resume, is none.
        if self._running is not None or self._pending is not None:
            log.info("evaluations of the lost learner's policies dropped")
        self._running = self._pending = self._latest = self._previous = None
        self._submitted_version = None
        self._drop_actor()

    def on_train_end(self, event: TrainEnd) -> None:
        try:
            completed = event.reason == "completed"
            if (completed and self._latest is not None
                    and self._latest.version != self._submitted_version):
                # The final policy too (it may be the best), queued behind a running one.
                self.submit(self._latest)
            if self._running is not None and completed:
                # The running evaluation, then the newest one that was waiting, within budget.
                log.info("waiting up to %.0f s for the running evaluation of %s",
                         self.settings.final_wait_s, self._running.request.name)
                deadline = time.monotonic() + self.settings.final_wait_s
                while self._running is not None and time.monotonic() < deadline:
                    self.poll(timeout_s=max(0.0, deadline - time.monotonic()))
            if self._running is not None:
                log.warning("evaluation of %s did not finish before the end of training; "
                            "dropped", self._running.request.name)
                self._running = None
            if self._pending is not None:
                log.info("evaluation of %s was due but not started before the end of training",
                         self._pending.name)
                self._pending = None
        finally:
            self.close()

    # ---------------------------------------------------------------- work
    def submit(self, request: _Request) -> None:
        """Start an evaluation now, or queue it behind the running one (newest wins)."""
        self._submitted_version = request.version
        if self._running is None:
            self._launch(request)
            return
        if self._pending is not None:
            self.skipped += 1
            log.info("evaluation of %s skipped: %s is still running and %s is newer",
                     self._pending.name, self._running.request.name, request.name)
        self._pending = request

    def poll(self, timeout_s: float = 0.0) -> bool:
        """Collect a finished evaluation (waiting at most `timeout_s`); True if one finished."""
        running = self._running
        if running is None:
            return False
        done, _ = ray.wait([running.ref], timeout=timeout_s)
        if not done:
            return False
        self._running = None
        try:
            results: list[MatchResult] = ray.get(running.ref)
        except RayError as exc:
            self.failed += 1
            log.error("evaluation of %s failed after %.0f s: %s", running.request.name,
                      time.monotonic() - running.started,
                      str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc))
            self._drop_actor()
        else:
            self._finish(running, results)
        if self._pending is not None:
            request, self._pending = self._pending, None
            self._launch(request)
        return True

    def close(self) -> None:
        self._drop_actor()

    def _default_actor(self, config: Config) -> Any:
        return EvaluationActor.options(num_cpus=self.settings.num_cpus, max_restarts=0,
                                       max_task_retries=0).remote(config, self.settings.priority)

    def _drop_actor(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None

    def _launch(self, request: _Request) -> None:
        if self._actor is None:
            self._actor = self._actor_factory(self.config)
        policy = Contestant(request.name, self.config.model, request.weights,
                            value_material=request.value_material)
        opponents = list(self.opponents)
        previous = self._previous if self.settings.previous else None
        if previous is not None:
            opponents.append(previous)
        seed = int(np.random.SeedSequence([self.settings.seed, request.timestep])
                   .generate_state(1)[0])
        ref = self._actor.evaluate.remote(policy, opponents, self.settings.games, seed)
        self._running = _Running(request, ref, [o.name for o in opponents],
                                 previous.name if previous is not None else None)
        log.debug("evaluation of %s launched against %s", request.name,
                  ", ".join(self._running.opponents))

    def _finish(self, running: _Running, results: list[MatchResult]) -> None:
        request = running.request
        for r in results:
            self.elo.record(r.player, r.opponent, r.wins, r.draws, r.losses)
        ratings = self.elo.ratings()
        own = ratings.get(request.name)
        folder = self.run_dir / "evaluation" if self.run_dir is not None else None
        env = self.config.env
        row: dict[str, Any] = {"name": request.name, "timestep": request.timestep,
                               "version": request.version,
                               "elo": own.elo if own else None,
                               "elo_ci": own.ci95 if own else None, "matches": {}}
        for r in results:
            paths: list[str] = []
            if folder is not None:
                for k, record in enumerate(r.records):
                    stem = f"{request.name}-vs-{_safe(r.opponent)}-{k + 1}"
                    paths += [str(p) for p in write_record(
                        record, folder / request.name, stem, max_moves=env.max_moves,
                        impasse=env.impasse == "27")]
            opponent_rating = ratings.get(r.opponent)
            # The earlier policy is reported as "previous" (a stable metric name), its real
            # name in the details.
            role = "previous" if r.opponent == running.previous else r.opponent
            details = {
                "name": request.name, "opponent_name": r.opponent, "score": r.score,
                "win_rate": r.win_rate,
                "reasons": dict(r.reasons), "as_black": list(r.as_black),
                "as_white": list(r.as_white), "plies": r.plies, "seconds": r.seconds,
                "opponent_elo": opponent_rating.elo if opponent_rating else None,
                "records": paths,
            }
            row["matches"][r.opponent] = {"wins": r.wins, "draws": r.draws, "losses": r.losses,
                                          "score": r.score}
            if self.bus is not None:
                self.bus.emit(EvaluationDone(
                    timestep=request.timestep, version=request.version, opponent=role,
                    games=r.games, wins=r.wins, losses=r.losses, draws=r.draws,
                    elo=own.elo if own else None, elo_ci=own.ci95 if own else None,
                    details=details))
        self.history.append(row)
        self._previous = Contestant(request.name, self.config.model, request.weights,
                                    value_material=request.value_material)
        matches = ", ".join(f"vs {r.opponent} +{r.wins} ={r.draws} -{r.losses} "
                            f"({100 * r.score:.0f}%)" for r in results)
        elo_text = f"Elo {signed(own.elo)} ± {own.ci95:.0f}" if own else "no Elo"
        log.info("evaluation %s (v%d): %s; %s (%.0f s)", request.name, request.version, matches,
                 elo_text, time.monotonic() - running.started)
        self._write_elo()

    def _write_elo(self) -> None:
        """RUN_DIR/evaluation/elo.json: the history, the ratings table and the whole store."""
        if self.run_dir is None:
            return
        folder = self.run_dir / "evaluation"
        make_dir(folder)
        write_text_atomic(folder / ELO_FILE, json.dumps(
            {"history": self.history, "ratings": _ratings_table(self.elo),
             "store": self.elo.state_dict()}, indent=1) + "\n")

    def _restore_from_disk(self, timestep: int) -> None:
        """Fold back the evaluations elo.json holds and the resumed state lacks.

        A checkpoint's state is a cut: an evaluation that finishes after it (the final one of
        a run, or any before a crash) is only in elo.json. Those of policies up to the resumed
        `timestep` are recorded again (history row and games); those of a later, abandoned
        future (policies the resumed run trains anew) are kept aside in
        `elo.json.abandoned-<time>`, as the checkpoints of that future are.
        """
        assert self.run_dir is not None
        path = self.run_dir / "evaluation" / ELO_FILE
        if not path.is_file():
            return
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["history"]
            if not isinstance(rows, list):
                raise TypeError(f"history is a {type(rows).__name__}, not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s): the Elo history is the resumed checkpoint's",
                        path, exc)
            return
        known = {row.get("name") for row in self.history}
        restored, later = [], 0
        for row in rows:
            try:
                name, at, matches = row["name"], int(row["timestep"]), row["matches"]
                if at > timestep:
                    later += 1
                    continue
                if name in known:
                    continue
                games = [(str(opponent), int(m["wins"]), int(m["draws"]), int(m["losses"]))
                         for opponent, m in matches.items()]
                if not isinstance(name, str) or any(
                        o == name or min(counts) < 0 for o, *counts in games):
                    raise ValueError(f"bad name or game counts in row {str(name)[:40]!r}")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("%s: skipping a malformed history row (%s)", path, exc)
                continue
            for opponent, wins, draws, losses in games:
                self.elo.record(name, opponent, wins, draws, losses)
            self.history.append(row)
            restored.append(name)
        self.history.sort(key=lambda r: int(r["timestep"]))
        if restored:
            log.info("restored %d evaluation(s) the resumed checkpoint predates from %s: %s",
                     len(restored), path, ", ".join(restored))
        if later:
            aside = path.with_name(f"{ELO_FILE}.abandoned-{int(time.time())}")
            path.replace(aside)
            log.warning("%s held %d evaluation(s) after the resumed timestep %d (policies "
                        "trained anew now); the file is kept as %s", path, later, timestep,
                        aside.name)
        if restored or later:
            self._write_elo()

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"elo": self.elo.state_dict(), "last_bucket": self._last_bucket,
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        elo = EloStore()
        elo.load_state_dict(state["elo"])
        last = state.get("last_bucket")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int)):
            raise ValueError(f"evaluation state: last_bucket must be an integer, got {last!r}")
        self.elo = elo
        self._last_bucket = last
        self.history = list(state.get("history", []))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _ratings_table(store: EloStore) -> list[dict[str, Any]]:
    return [{"player": r.player, "elo": r.elo, "ci95": r.ci95 if math.isfinite(r.ci95) else None,
             "games": r.games, "score": r.score if math.isfinite(r.score) else None}
            for r in store.ratings().values()]


