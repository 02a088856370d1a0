"""Evaluation workers: matches between a policy and an opponent, many games at once.

A *player* chooses one move for each of a batch of positions (an external engine may instead
end a game: an Outcome in place of the move, e.g. it resigned or crashed; see
`shogi.usi_engine`). Network players run one batched
forward over every game in which it is their turn (so a match costs about one forward per ply,
whatever the number of games); `random` and `heuristic` choose per game. `play_match` keeps up
to `games_at_once` games going, alternates colours (even games: the player is Black), and
returns wins / losses / draws by reason plus a few game records.

`Evaluator` is plain Python (tests, `keisei-ray evaluate`); `EvaluationActor` is its thin Ray
wrapper, started at low priority beside training. Models arrive as weights (a dict of arrays,
or a boxed ObjectRef to one): files are read by the caller, never here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray
import torch
from pydantic import ValidationError
from torch import nn

from actors.players import SCRIPTED, BaselinePlayer, Player, PolicyPlayer
from keisei_ray.config import Config, ModelConfig, SearchConfig
from shogi import (
    Color,
    Outcome,
    Position,
)
from shogi.usi_engine import EnginePlayer

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GameRecord:
    """One finished game, small enough to ship: replay it with `position()`."""

    black: str
    white: str
    start_sfen: str
    moves: list[str]  # USI
    winner: int | None  # Color value, None for a draw
    reason: str  # shogi.Termination value

    @property
    def result(self) -> str:
        """"1-0", "0-1" or "1/2-1/2" (Black's score first)."""
        if self.winner is None:
            return "1/2-1/2"
        return "1-0" if self.winner == Color.BLACK else "0-1"

    def position(self, max_moves: int | None = None, impasse: bool = False) -> Position:
        """The game replayed (its final position, with the whole history)."""
        position = Position(self.start_sfen, max_moves=max_moves, impasse=impasse)
        for usi in self.moves:
            position.push_usi(usi)
        return position


@dataclass
class MatchResult:
    """Games of `player` against `opponent`, counted from `player`'s side."""

    player: str
    opponent: str
    wins: int = 0
    draws: int = 0
    losses: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # "win_checkmate", "draw_max_moves"..
    as_black: list[int] = field(default_factory=lambda: [0, 0, 0])  # wins, draws, losses
    as_white: list[int] = field(default_factory=lambda: [0, 0, 0])
    plies: int = 0
    seconds: float = 0.0
    records: list[GameRecord] = field(default_factory=list)

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def score(self) -> float:
        """(wins + draws / 2) / games."""
        return (self.wins + 0.5 * self.draws) / self.games if self.games else math.nan

    @property
    def win_rate(self) -> float:
        """wins / games: draws count as non-wins."""
        return self.wins / self.games if self.games else math.nan

    def add_game(self, player_color: Color, outcome: Outcome, plies: int) -> None:
        if outcome.winner is None:
            slot, word = 1, "draw"
            self.draws += 1
        elif outcome.winner == player_color:
            slot, word = 0, "win"
            self.wins += 1
        else:
            slot, word = 2, "loss"
            self.losses += 1
        (self.as_black if player_color == Color.BLACK else self.as_white)[slot] += 1
        key = f"{word}_{outcome.reason.value}"
        self.reasons[key] = self.reasons.get(key, 0) + 1
        self.plies += plies

    def merge(self, other: MatchResult) -> MatchResult:
        """Both parts of one match played in pieces (same player and opponent)."""
        if (other.player, other.opponent) != (self.player, self.opponent):
            raise ValueError(f"cannot merge {other.player!r} vs {other.opponent!r} into "
                             f"{self.player!r} vs {self.opponent!r}")
        reasons = Counter(self.reasons)
        reasons.update(other.reasons)
        return MatchResult(
            self.player, self.opponent, self.wins + other.wins, self.draws + other.draws,
            self.losses + other.losses, dict(reasons),
            [a + b for a, b in zip(self.as_black, other.as_black, strict=True)],
            [a + b for a, b in zip(self.as_white, other.as_white, strict=True)],
            self.plies + other.plies, max(self.seconds, other.seconds),
            self.records + other.records)


def play_match(player: Player, opponent: Player, games: int, *, max_moves: int,
               impasse: bool = False, games_at_once: int = 64, records: int = 0,
               start_sfen: str | None = None, first_game: int = 0) -> MatchResult:
    """Play `games` games, up to `games_at_once` at a time; colours alternate by game number.

    Game k (counting from `first_game`) has `player` as Black when k is even. The first
    `records` games (by number) come back as records.
    """
    if games < 0 or games_at_once < 1:
        raise ValueError(f"need games >= 0 and games_at_once >= 1, got {games!r}, "
                         f"{games_at_once!r}")
    start = time.perf_counter()
    result = MatchResult(player.name, opponent.name)
    numbers = iter(range(first_game, first_game + games))
    active: dict[int, Position] = {}
    ended: dict[int, Outcome] = {}  # games a player ended instead of moving (engines)
    kept: dict[int, GameRecord] = {}

    def start_next() -> None:
        number = next(numbers, None)
        if number is not None:
            active[number] = Position(start_sfen, max_moves=max_moves, impasse=impasse)

    def player_color(number: int) -> Color:
        return Color.BLACK if number % 2 == 0 else Color.WHITE

    for _ in range(min(games, games_at_once)):
        start_next()
    while active:
        # Finished games leave; their slot takes the next game.
        for number, position in list(active.items()):
            outcome = ended.pop(number, None) or position.outcome()
            if outcome is None:
                continue
            color = player_color(number)
            result.add_game(color, outcome, position.ply)
            if number - first_game < records:
                names = ((player.name, opponent.name) if color == Color.BLACK
                         else (opponent.name, player.name))
                kept[number] = GameRecord(
                    names[0], names[1], position.start_sfen, [m.usi() for m in position.moves],
                    None if outcome.winner is None else int(outcome.winner),
                    outcome.reason.value)
            del active[number]
            start_next()
        if not active:
            break
        mine = [n for n, p in active.items() if p.turn == player_color(n)]
        theirs = [n for n, p in active.items() if p.turn != player_color(n)]
        for who, numbers_to_move in ((player, mine), (opponent, theirs)):
            if numbers_to_move:
                moves = who.choose([active[n] for n in numbers_to_move])
                for n, move in zip(numbers_to_move, moves, strict=True):
                    if isinstance(move, Outcome):
                        ended[n] = move
                    else:
                        active[n].push(move)
    result.records = [kept[n] for n in sorted(kept)]
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- evaluator


@dataclass(frozen=True)
class Contestant:
    """Who plays: a scripted player (`random`, `heuristic`, `mate`), a network, or an external
    USI engine.

    A network has its model config and weights: a dict of arrays, or (through Ray) a list
    holding one ObjectRef to such a dict, resolved by the evaluation actor. `max_moves` is the
    ply cap the network was trained with (it scales an input plane); None: the env's. An
    engine has its spec (`usi:...` or an alias, see `shogi.usi_engine`); its process is
    started by the player, where the games are played.
    """

    name: str
    model: ModelConfig | None = None
    weights: Any = None
    max_moves: int | None = None
    engine: str | None = None
    search: tuple[tuple[str, Any], ...] = ()  # a network's own `search.*` settings, over the
    # config's (from a player spec such as `model.pt,sims=64`)
    value_material: float = 0.0  # the shaping its value learnt (learner.model.PolicyValueNet)

    @property
    def is_baseline(self) -> bool:
        return self.model is None and self.engine is None

    @classmethod
    def baseline(cls, kind: str) -> Contestant:
        if kind not in SCRIPTED:
            raise ValueError(f"unknown scripted player {kind!r} (expected one of {SCRIPTED})")
        return cls(kind)


def make_player(contestant: Contestant, config: Config, *, seed: int | None = None,
                model: nn.Module | None = None) -> Player:
    """The one place a contestant becomes a player (evaluation, gauntlet, `usi`, `play`).

    Every setting comes from `config`: a network plays with `evaluation.greedy`,
    `temperature`, `sample_plies` and `avoid_repetition`, searches with `search.*` (the
    contestant's own search settings over those; `search.simulations` 0: the raw policy), and
    scales its ply plane by the contestant's `max_moves` or else `env.max_moves`; `seed`
    defaults to `evaluation.seed`. `model` is an already built network for the contestant
    (saves rebuilding it).
    """
    seed = config.evaluation.seed if seed is None else seed
    if contestant.engine is not None:
        return EnginePlayer(contestant.engine, name=contestant.name)
    if contestant.model is None:
        return BaselinePlayer(contestant.name, seed)
    s = config.evaluation
    max_moves = contestant.max_moves or config.env.max_moves
    options: dict[str, Any] = {"greedy": s.greedy, "temperature": s.temperature,
                               "sample_plies": s.sample_plies, "seed": seed,
                               "avoid_repetition": s.avoid_repetition,
                               "search": search_settings(config.search, contestant.search)}
    if model is not None:
        return PolicyPlayer(contestant.name, model, max_moves, **options)
    if contestant.weights is None:
        raise ValueError(f"network player {contestant.name!r} has no weights")
    return PolicyPlayer.from_weights(contestant.name, contestant.model, contestant.weights,
                                     max_moves, value_material=contestant.value_material,
                                     **options)


def search_settings(base: SearchConfig, options: Sequence[tuple[str, Any]]) -> SearchConfig:
    """`base` with a contestant's own search settings over it (validated: ValueError naming
    the setting)."""
    if not options:
        return base
    try:
        return SearchConfig.model_validate({**base.model_dump(), **dict(options)})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"search settings: {problems}") from None


def close_player(player: Player) -> None:
    """Stop what a player runs (an engine's process); nothing for the others."""
    close = getattr(player, "close", None)
    if callable(close):
        close()


class Evaluator:
    """Plays matches with the evaluation settings and game rules of a config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.evaluation

    def player(self, contestant: Contestant, seed: int) -> Player:
        return make_player(contestant, self.config, seed=seed)

    def match(self, player: Contestant, opponent: Contestant, games: int, *, seed: int,
              first_game: int = 0, records: int | None = None) -> MatchResult:
        """`games` games of `player` against `opponent`; seeds are drawn from `seed`."""
        if player.name == opponent.name:
            raise ValueError(f"a match needs two different players, got {player.name!r} twice")
        player_seed, opponent_seed = np.random.SeedSequence([seed, first_game]).generate_state(2)
        env = self.config.env
        players = (self.player(player, int(player_seed)),
                   self.player(opponent, int(opponent_seed)))
        try:
            result = play_match(
                *players, games, max_moves=env.max_moves, impasse=env.impasse == "27",
                games_at_once=self.settings.games_at_once,
                records=self.settings.records if records is None else records,
                first_game=first_game)
        finally:
            for p in players:
                close_player(p)
        log.debug("%s vs %s: +%d =%d -%d in %.1f s", result.player, result.opponent,
                  result.wins, result.draws, result.losses, result.seconds)
        return result

    def evaluate(self, policy: Contestant, opponents: Sequence[Contestant], games: int, *,
                 seed: int) -> list[MatchResult]:
        """One match of `policy` against each opponent, in order."""
        return [self.match(policy, opponent, games, seed=seed + 7919 * k)
                for k, opponent in enumerate(opponents)]


# ----------------------------------------------------------------------------- Ray actor


def resolve(contestant: Contestant) -> Contestant:
    """The contestant with boxed weights ([ObjectRef]) fetched from the object store."""
    if isinstance(contestant.weights, list):
        return replace(contestant, weights=ray.get(contestant.weights[0]))
    return contestant


def lower_priority(priority: str) -> None:
    """Lower this process's CPU priority: "idle" (Linux SCHED_IDLE: runs only on CPU time
    nothing else wants; nice 19 where unsupported), "low" (nice 10) or "normal" (unchanged)."""
    if priority == "normal":
        return
    if priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError) as exc:  # not Linux, or not permitted
            log.debug("SCHED_IDLE unavailable (%s); using nice 19", exc)
        os.nice(19 - os.nice(0))
        return
    if priority == "low":
        os.nice(max(0, 10 - os.nice(0)))
        return
    raise ValueError(f"unknown priority {priority!r} (expected idle, low or normal)")


class EvaluationActorImpl:
    """Ray actor around `Evaluator`: one torch thread, lowered CPU priority."""

    def __init__(self, config: Config, priority: str = "normal") -> None:
        torch.set_num_threads(1)
        # Evaluation shares the machine with training: let the scheduler favour training.
        lower_priority(priority)
        self.evaluator = Evaluator(config)

    def ready(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def evaluate(self, policy: Contestant, opponents: list[Contestant], games: int,
                 seed: int) -> list[MatchResult]:
        return self.evaluator.evaluate(resolve(policy), [resolve(o) for o in opponents], games,
                                       seed=seed)

    def match(self, player: Contestant, opponent: Contestant, games: int, seed: int,
              first_game: int = 0, records: int | None = None) -> MatchResult:
        return self.evaluator.match(resolve(player), resolve(opponent), games, seed=seed,
                                    first_game=first_game, records=records)


EvaluationActor: Any = ray.remote(EvaluationActorImpl)
