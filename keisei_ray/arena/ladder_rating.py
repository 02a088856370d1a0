"""Rating the gauntlet's rungs against each other (`keisei-ray gauntlet --rate-ladder`).

First every pair of rungs at most `reach` apart on the ladder plays `games` games. Then, with
a target interval, the scheduler keeps choosing the next games where they shrink the rungs'
95% intervals most per second of play, until every rung's interval is within the target (or a
total of `max_games` is reached): a rung's rating rests on the chain of matches down to the
anchor, so the pairs that are close in strength (informative games) and cheap get most
games, slow pairs few, and lopsided ones (`LOPSIDED`) none past their first. The value of a
candidate batch of games is computed from the fit's Fisher information: the information
those games would add at the fitted expected score, the rungs' variances from the inverse,
and the sum of the squared amounts by which the intervals exceed the target.

Games start from random openings (`OPENING_PLIES` uniformly random plies from the usual
start), each opening played once with each colour: the engines at a fixed depth are
deterministic, and from the same start two of them would replay the same few games. Games
an engine crashed, timed out or answered no move in say nothing about strength: they are left
out (and others scheduled; `keisei_ray.arena.gauntlet.without_failures`).

The games run as Ray tasks, one CPU each, `workers` at a time (in this process with one
worker); after every task the whole document is handed to `checkpoint`, and a later run can
continue from such a document (`start`): its matches count, and new games use new openings.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import math
import platform
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from actors.evaluation import Contestant, MatchResult, close_player, make_player, play_match
from keisei_ray.arena.elo import ANCHOR, ELO_PER_NAT, PRIOR_DRAWS, Z95, EloStore, Rating
from keisei_ray.arena.evaluation import load_contestant
from keisei_ray.arena.gauntlet import RUNGS, GauntletError, without_failures
from keisei_ray.config import Config
from shogi import Position
from shogi.usi_engine import ENGINE_ALIASES

log = logging.getLogger(__name__)

OPENING_PLIES = 4
"""Random plies before a rating game starts (each opening is played with both colours)."""
LOPSIDED = 0.95
"""Pairs whose fitted expected score is beyond this (or below 1 - this) get no games past
their first: each game tells little, and leans hardest on the model's assumption that
strength differences add up along the ladder. (Left to the cost per second alone, the
scheduler poured thousands of 0.02-second games into 94-98% pairs of scripted players.)"""
TASK_SECONDS = 240.0
"""What one task should take on one CPU, once a pair's time per game is known."""
FIRST_TASK_GAMES = 10
"""Games of a pair's first task (its time per game is not known yet)."""
PLAN_LIMIT = 10_000_000
"""Games after which a plan gives up (the target out of reach at any sensible cost)."""


def ladder_pairs(rungs: Sequence[str], reach: int = 2) -> list[tuple[str, str]]:
    """Every pair of rungs at most `reach` apart on the ladder (the stronger one first)."""
    if reach < 1:
        raise ValueError(f"reach must be at least 1, got {reach}")
    return [(rungs[j], rungs[i]) for i in range(len(rungs))
            for j in range(i + 1, min(len(rungs), i + reach + 1))]


def random_opening(seed: int, plies: int = OPENING_PLIES) -> str:
    """The SFEN after `plies` uniformly random legal moves from the usual start."""
    rng = np.random.default_rng(seed)
    while True:
        position = Position()
        for _ in range(plies):
            moves = position.legal_moves()
            if not moves or position.outcome() is not None:
                break
            position.push(moves[int(rng.integers(len(moves)))])
        else:
            if position.outcome() is None:
                return position.sfen()


def pair_seed(config: Config, a: str, b: str) -> int:
    """A pair's seed: from the names, so that it does not depend on the ladder's order."""
    return config.evaluation.seed + zlib.crc32(f"{a}|{b}".encode())


def play_openings(config: Config, a: Contestant, b: Contestant, games: int, seed: int,
                  first_game: int) -> MatchResult:
    """`games` (even) games of `a` against `b`: game k (from `first_game`, even) starts from
    opening (seed, k // 2), with `a` Black when k is even; a record is kept of every game."""
    if games < 2 or games % 2 or first_game % 2:
        raise ValueError(f"games and first_game must be even (games >= 2), got {games}, "
                         f"{first_game}")
    a_seed, b_seed = np.random.SeedSequence([seed, first_game]).generate_state(2)
    players = (make_player(a, config, seed=int(a_seed)), make_player(b, config, seed=int(b_seed)))
    env = config.env
    total = MatchResult(a.name, b.name)
    started = time.monotonic()
    try:
        for k in range(first_game, first_game + games, 2):
            opening_seed = np.random.SeedSequence([seed, k // 2]).generate_state(1)[0]
            opening = random_opening(int(opening_seed))
            part = play_match(*players, 2, max_moves=env.max_moves, impasse=env.impasse == "27",
                              games_at_once=2, records=2, start_sfen=opening, first_game=k)
            total = total.merge(part) if total.games else part
    finally:
        for player in players:
            close_player(player)
    total.seconds = time.monotonic() - started
    return total


_remote_play_openings: Any = ray.remote(num_cpus=1)(play_openings)


@dataclass
class PairTally:
    """The clean games of one pair so far, from the stronger rung's side."""

    wins: int = 0
    draws: int = 0
    losses: int = 0
    excluded: int = 0  # games an engine failed in (gauntlet.FAILED_REASONS)
    seconds: float = 0.0  # task time spent on the pair (one CPU)
    pending: int = 0  # games running now

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def next_game(self) -> int:
        """The number of the pair's next game (every game ever started counts)."""
        return self.games + self.excluded + self.pending

    def seconds_per_game(self) -> float | None:
        played = self.games + self.excluded
        return self.seconds / played if played else None


@dataclass
class LadderPlan:
    """What the scheduler would still play to reach the target (`LadderRating.plan`)."""

    games: dict[tuple[str, str], int]  # more games per pair, in the ladder's order
    seconds: dict[tuple[str, str], float]  # task time (one CPU) at the pair's time per game
    unpriced: int  # games of pairs with no measured time per game yet (not in `seconds`)
    ci95: dict[str, float]  # the rungs' projected 95% half-widths, Elo
    reached: bool  # every rung within the target at the end of the plan

    @property
    def total(self) -> int:
        return sum(self.games.values())

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class LadderRating:
    """The state of one `rate_ladder` run: tallies per pair, the fit, the next games."""

    def __init__(self, config: Config, rungs: Sequence[str], reach: int, games: int,
                 target_ci: float | None, max_games: int | None) -> None:
        if len(set(rungs)) != len(rungs) or len(rungs) < 2 or ANCHOR not in rungs:
            raise ValueError(f"the ladder needs two or more distinct rungs, {ANCHOR!r} among "
                             f"them, got {list(rungs)}")
        if games < 2:
            raise ValueError(f"--games must be at least 2 per pair, got {games}")
        if target_ci is not None and not target_ci > 0:
            raise ValueError(f"the target interval must be positive, got {target_ci}")
        self.config = config
        self.rungs = list(rungs)
        self.reach = reach
        self.games = games + games % 2  # whole colour-swapped pairs
        self.target_ci = target_ci
        self.max_games = max_games
        self.pairs = ladder_pairs(self.rungs, reach)
        self.tally = {pair: PairTally() for pair in self.pairs}
        self.started = time.monotonic()
        self._held: dict[str, Rating] | None = None  # a plan's fit, held fixed

    # ---------------------------------------------------------------- results
    def resume(self, document: Mapping[str, Any]) -> None:
        """Count the matches of an earlier document between rungs of this ladder (a pair
        further apart than `reach` counts in the fit; only the ladder's pairs get more)."""
        for match in document.get("matches", []):
            pair = (str(match["player"]), str(match["opponent"]))
            if not set(pair) <= set(self.rungs):
                continue
            tally = self.tally.setdefault(pair, PairTally())
            tally.wins += int(match["wins"])
            tally.draws += int(match["draws"])
            tally.losses += int(match["losses"])
            tally.excluded += int(match.get("excluded", 0))
            tally.seconds += float(match.get("seconds", 0.0))

    def record(self, pair: tuple[str, str], result: MatchResult, seconds: float,
               scheduled: int) -> MatchResult:
        """Add a finished task's games (its failed games left out)."""
        clean = without_failures(result)
        tally = self.tally[pair]
        tally.pending -= scheduled
        tally.wins += clean.wins
        tally.draws += clean.draws
        tally.losses += clean.losses
        tally.excluded += result.games - clean.games
        tally.seconds += seconds
        if clean.games < result.games:
            log.warning("%s vs %s: %d game(s) ended by an engine failure, left out",
                        pair[0], pair[1], result.games - clean.games)
        return clean

    def store(self) -> EloStore:
        store = EloStore()
        for (a, b), tally in self.tally.items():
            store.record(a, b, tally.wins, tally.draws, tally.losses)
        return store

    def total_games(self) -> int:
        return sum(t.games + t.pending for t in self.tally.values())

    # ---------------------------------------------------------------- scheduling
    def chunk(self, pair: tuple[str, str]) -> int:
        """Games for the pair's next task: about `TASK_SECONDS` of play, even."""
        per_game = self.tally[pair].seconds_per_game()
        if per_game is None:
            return FIRST_TASK_GAMES
        games = int(TASK_SECONDS / max(per_game, 1e-3))
        return max(2, min(200, games - games % 2))

    def next_task(self) -> tuple[tuple[str, str], int] | None:
        """The pair and number of games to start next, or None (wait, or done)."""
        # First every pair's `games`, the pairs whose first games are still unplayed first.
        short = [(pair, self.games - t.games - t.pending) for pair in self.pairs
                 if (t := self.tally[pair]).games + t.pending < self.games]
        if short:
            pair, missing = min(short, key=lambda item: self.tally[item[0]].next_game)
            return pair, min(missing + missing % 2, self.chunk(pair))
        if self.target_ci is None or (self.max_games is not None
                                      and self.total_games() >= self.max_games):
            return None
        return self._most_useful()

    def _most_useful(self) -> tuple[tuple[str, str], int] | None:
        """The candidate batch that cuts the intervals' excess over the target most per
        second of play (None when no batch would: every interval, counting the games
        running now, is within the target)."""
        assert self.target_ci is not None
        index = {r: i for i, r in enumerate(self.rungs)}
        theta = self._theta()
        if theta is None:  # not all linked yet: wait
            return None
        info = self._information(theta)
        base = self._excess(info)
        if base <= 0.0:
            return None
        best: tuple[float, tuple[str, str], int] | None = None
        for pair in self.pairs:
            i, j = index[pair[0]], index[pair[1]]
            if not 1.0 - LOPSIDED <= _expected(theta[i], theta[j]) <= LOPSIDED:
                continue
            games = self.chunk(pair)
            trial = info.copy()
            _add(trial, i, j, games * _variance(theta[i], theta[j]))
            gain = base - self._excess(trial)
            cost = games * (self.tally[pair].seconds_per_game() or 1.0)
            if gain > 0 and (best is None or gain / cost > best[0]):
                best = (gain / cost, pair, games)
        return None if best is None else (best[1], best[2])

    def _theta(self) -> np.ndarray | None:
        """The rungs' fitted ratings in nats, ladder order (None while some are unlinked)."""
        ratings = self._held if self._held is not None else self.store().ratings()
        if any(r not in ratings for r in self.rungs):
            return None
        return np.array([ratings[r].elo / ELO_PER_NAT for r in self.rungs])

    def _information(self, theta: np.ndarray) -> np.ndarray:
        """The fit's Fisher information at `theta`, the games running now counted."""
        index = {r: i for i, r in enumerate(self.rungs)}
        info = np.zeros((len(self.rungs), len(self.rungs)))
        for (a, b), tally in self.tally.items():
            i, j = index[a], index[b]
            games = tally.games + tally.pending + PRIOR_DRAWS
            _add(info, i, j, games * _variance(theta[i], theta[j]))
        return info

    def _half_widths(self, info: np.ndarray) -> dict[str, float]:
        """Every rung's 95% half-width from `info`, Elo (the anchor is pinned)."""
        keep = [i for i, r in enumerate(self.rungs) if r != ANCHOR]
        inner = info[np.ix_(keep, keep)]
        covariance = np.linalg.pinv(inner + 1e-12 * np.eye(len(inner)))
        ci = Z95 * ELO_PER_NAT * np.sqrt(np.maximum(np.diag(covariance), 0.0))
        return {self.rungs[i]: float(c) for i, c in zip(keep, ci, strict=True)}

    def _excess(self, info: np.ndarray) -> float:
        """Sum over rungs of (95% half-width - target)^2 where above the target, Elo^2."""
        assert self.target_ci is not None
        ci = np.array(list(self._half_widths(info).values()))
        return float(np.sum(np.maximum(ci - self.target_ci, 0.0) ** 2))

    def plan(self) -> LadderPlan:
        """The games the scheduler would still play to reach the target, if every game came
        out at the fitted expected score (the fit held fixed; each game adds its Fisher
        information), at each pair's measured time per game. A forecast for budgeting the
        run (how many CPU-hours, which pairs), not a promise: real results move the fit."""
        state = copy.copy(self)
        state.tally = {pair: dataclasses.replace(t) for pair, t in self.tally.items()}
        state._held = self.store().ratings()
        added: dict[tuple[str, str], int] = {}
        seconds: dict[tuple[str, str], float] = {}
        unpriced = 0
        while sum(added.values()) < PLAN_LIMIT and (task := state.next_task()) is not None:
            pair, games = task
            tally = state.tally[pair]
            per_game = tally.seconds_per_game()
            if per_game is None:
                unpriced += games
            else:
                seconds[pair] = seconds.get(pair, 0.0) + games * per_game
            tally.pending += games
            added[pair] = added.get(pair, 0) + games
        theta = state._theta()
        ci = {} if theta is None else state._half_widths(state._information(theta))
        reached = (self.target_ci is not None and len(ci) == len(self.rungs) - 1
                   and max(ci.values(), default=0.0) <= self.target_ci + 1e-9)
        ordered = {pair: added[pair] for pair in state.tally if pair in added}
        return LadderPlan(ordered, seconds, unpriced, ci, reached)

    # ---------------------------------------------------------------- report
    def document(self, *, finished: bool) -> dict[str, Any]:
        """The JSON document to store as `gauntlet_ratings.json`."""
        fitted = self.store().ratings()
        target = (f", then games where they shrink the intervals most per second until every "
                  f"rung's 95% interval is within ±{self.target_ci:g} Elo"
                  if self.target_ci is not None else "")
        how = (f"keisei-ray gauntlet --rate-ladder --games {self.games} --reach {self.reach}"
               + (f" --target-ci {self.target_ci:g}" if self.target_ci is not None else "")
               + (f" --max-games {self.max_games}" if self.max_games is not None else "")
               + f": every pair of rungs at most {self.reach} apart played {self.games} games"
               f"{target}; each game from {OPENING_PLIES} random opening plies, each opening "
               "with both colours; games an engine crashed, timed out or answered no move in "
               "left out; one "
               f"Bradley-Terry fit over all of them with random pinned at 0 and "
               f"{PRIOR_DRAWS:g} virtual draw per pair (keisei_ray/arena/ladder_rating.py)")
        return {
            "how": how,
            "made": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "finished": finished,
            "machine": platform.platform(),
            "env": {"max_moves": self.config.env.max_moves, "impasse": self.config.env.impasse},
            "engines": {r: ENGINE_ALIASES[r] for r in self.rungs if r in ENGINE_ALIASES},
            "ratings": {r: {"elo": round(fitted[r].elo, 1),
                            "ci95": round(fitted[r].ci95, 1) if math.isfinite(fitted[r].ci95)
                            else None,
                            "games": fitted[r].games} for r in self.rungs if r in fitted},
            "matches": [{"player": a, "opponent": b, "wins": t.wins, "draws": t.draws,
                         "losses": t.losses, "excluded": t.excluded,
                         "seconds": round(t.seconds, 1)}
                        for (a, b), t in self.tally.items() if t.games or t.excluded],
        }


def _expected(a: float, b: float) -> float:
    """The expected score of ratings `a` against `b` (nats)."""
    return 1.0 / (1.0 + math.exp(b - a))


def _variance(a: float, b: float) -> float:
    """One game's Fisher information about a - b: p (1 - p) at the expected score."""
    p = _expected(a, b)
    return p * (1.0 - p)


def _add(info: np.ndarray, i: int, j: int, weight: float) -> None:
    info[i, i] += weight
    info[j, j] += weight
    info[i, j] -= weight
    info[j, i] -= weight


def plan_ladder(config: Config, games: int, *, rungs: Sequence[str] = RUNGS, reach: int = 2,
                target_ci: float, max_games: int | None = None,
                start: Mapping[str, Any] | None = None) -> LadderPlan:
    """What `rate_ladder` with these arguments would still play (`LadderRating.plan`),
    without playing anything."""
    state = LadderRating(config, rungs, reach, games, target_ci, max_games)
    if start is not None:
        state.resume(start)
    return state.plan()


def rate_ladder(config: Config, games: int, *, rungs: Sequence[str] = RUNGS, reach: int = 2,
                workers: int = 1, target_ci: float | None = None, max_games: int | None = None,
                start: Mapping[str, Any] | None = None,
                checkpoint: Callable[[dict[str, Any]], None] | None = None,
                progress: Callable[[MatchResult], None] | None = None) -> dict[str, Any]:
    """Play the rungs against each other (module docstring) and return the JSON document to
    store as `gauntlet_ratings.json`. With `workers` > 1 Ray must be initialised."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    state = LadderRating(config, rungs, reach, games, target_ci, max_games)
    if start is not None:
        state.resume(start)
    contestants = {r: load_contestant(r) for r in state.rungs}
    if any(c.weights is not None for c in contestants.values()):
        raise GauntletError("ladder rungs are scripted players and engines, not models")
    running: dict[Any, tuple[tuple[str, str], int, float]] = {}

    def launch(pair: tuple[str, str], count: int) -> Any:
        tally = state.tally[pair]
        args = (config, contestants[pair[0]], contestants[pair[1]], count,
                pair_seed(config, *pair), tally.next_game)
        tally.pending += count
        log.info("rate-ladder: %s vs %s, %d games (games %d-%d)", pair[0], pair[1], count,
                 args[-1], args[-1] + count - 1)
        return _remote_play_openings.remote(*args) if workers > 1 else args

    def finish(pair: tuple[str, str], count: int, result: MatchResult, seconds: float) -> None:
        clean = state.record(pair, result, seconds, count)
        if progress is not None:
            progress(clean)
        if checkpoint is not None:
            checkpoint(state.document(finished=False))
        fitted = state.store().ratings()
        widest = max((fitted[r] for r in state.rungs if r in fitted and r != ANCHOR),
                     key=lambda rating: rating.ci95)
        log.info("rate-ladder: %d games, widest ±%.0f (%s)", state.total_games(), widest.ci95,
                 widest.player)

    while True:
        while len(running) < workers:
            task = state.next_task()
            if task is None:
                break
            pair, count = task
            started = time.monotonic()
            handle = launch(pair, count)
            if workers == 1:
                result = play_openings(*handle)
                finish(pair, count, result, time.monotonic() - started)
                continue
            running[handle] = (pair, count, started)
        if not running:
            if state.next_task() is None:
                break
            continue
        # A timeout keeps Ctrl-C prompt while long engine games run.
        done, _ = ray.wait(list(running), num_returns=1, timeout=2.0)
        if not done:
            continue
        pair, count, started = running.pop(done[0])
        finish(pair, count, ray.get(done[0]), time.monotonic() - started)
    return state.document(finished=True)
