"""Matches from the driver's side: a spec becomes a contestant (`load_contestant`), a match is
played on one or more evaluation actors (`run_match`), and its score and Elo get 95% intervals
(`MatchSummary`). Background evaluation (`background.py`), the ladder (`ladder.py`) and the
gauntlet (`gauntlet.py`) are built on these.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml

from actors.evaluation import (
    Contestant,
    EvaluationActor,
    Evaluator,
    MatchResult,
    search_settings,
)
from actors.players import SCRIPTED
from keisei_ray.arena.elo import Z95, EloStore, Rating
from keisei_ray.config import Config, SearchConfig
from keisei_ray.store.model_file import load_model
from keisei_ray.text import did_you_mean, signed
from learner.model import export_weights
from shogi.usi_engine import ENGINE_ALIASES, INSTALL_HINT, EngineSpec, is_engine_spec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- contestants


def load_contestant(spec: str, name: str | None = None) -> Contestant:
    """`random`, `heuristic`, `mate`, an engine (`usi:...` or an alias such as `sf-d1`, see
    `shogi.usi_engine`) or a model (a model file, a checkpoint directory, or a run folder: its
    best checkpoint; see `resolve_model`): the one place that turns a name into a contestant.

    A model's name defaults to the name given (its file or folder name); its `max_moves` (which
    scales an input plane) comes from the file's metadata when the file records it. A model spec
    may carry its own search settings after commas, `model.pt,sims=64` (`sims` is
    `search.simulations`; any other `search.*` field by its name, e.g.
    `model.pt,sims=256,gumbel=false,c_puct=2`); they apply over the config's, and the name keeps
    them. An engine whose program is not installed is refused here (ValueError naming the
    install command), and a name that is neither a player nor an existing path says which player
    names are close.
    """
    if spec in SCRIPTED:
        return Contestant.baseline(spec)
    if is_engine_spec(spec):
        engine = EngineSpec.parse(spec)
        if not engine.available():
            raise ValueError(f"engine {spec!r}: program {engine.command[0]!r} not found "
                             f"(install it with `{INSTALL_HINT}`)")
        return Contestant(name or engine.name, engine=spec)
    path, search = split_model_spec(spec)
    if not Path(path).exists():
        raise ValueError(f"player {spec!r}: not found (no model file, checkpoint or run folder "
                         f"at that path, and not a player name: {', '.join(SCRIPTED)}, or an "
                         f"engine, usi:... or an alias such as sf-d1)"
                         f"{did_you_mean(path, [*SCRIPTED, *ENGINE_ALIASES])}")
    loaded = load_model(path)
    max_moves = loaded.meta.get("max_moves")
    default = Path(path).name + spec[len(path):]
    return Contestant(name or default, loaded.config, export_weights(loaded.model),
                      int(max_moves) if isinstance(max_moves, int) else None, search=search,
                      value_material=loaded.model.value_material)


SEARCH_ALIASES = {"sims": "simulations"}
"""Short names of search settings in a model spec."""


def split_model_spec(spec: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """`PATH[,key=value...]` -> (PATH, search settings); values are YAML scalars. A spec that
    names an existing file or folder is a path whatever it holds. ValueError names a bad
    setting."""
    if "," not in spec or Path(spec).exists():
        return spec, ()
    path, *items = spec.split(",")
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = SEARCH_ALIASES.get(key.strip(), key.strip())
        if not sep or key not in SearchConfig.model_fields:
            raise ValueError(f"player spec {spec!r}: {item!r} is not a search setting (expected "
                             f"key=value with key sims or one of "
                             f"{', '.join(SearchConfig.model_fields)})")
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"player spec {spec!r}: {key} value {raw!r} is not a "
                             "scalar") from None
    try:
        search_settings(SearchConfig(), tuple(options.items()))
    except ValueError as exc:
        raise ValueError(f"player spec {spec!r}: {exc}") from None
    return path, tuple(options.items())


def boxed(contestant: Contestant) -> Contestant:
    """The contestant with its weights put in the object store once (for many Ray calls)."""
    if contestant.weights is None or isinstance(contestant.weights, list):
        return contestant
    return replace(contestant, weights=[ray.put(contestant.weights)])


# ----------------------------------------------------------------------------- intervals


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (draws may count as half successes), within
    [0, 1] and holding the proportion itself (at 0 or n successes the formula's end misses
    it by a rounding error: 2.8e-17 for 0 of 6)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


@dataclass(frozen=True)
class MatchSummary:
    """What a person reads about a match: score, win rate and Elo difference with 95% intervals."""

    result: MatchResult
    score_ci: tuple[float, float]
    win_rate_ci: tuple[float, float]
    elo: Rating  # the player's rating with the opponent pinned at 0

    @classmethod
    def of(cls, result: MatchResult) -> MatchSummary:
        store = EloStore(anchor=result.opponent)
        store.record(result.player, result.opponent, result.wins, result.draws, result.losses)
        return cls(result, wilson_interval(result.wins + 0.5 * result.draws, result.games),
                   wilson_interval(result.wins, result.games), store.rating(result.player))

    def document(self) -> dict[str, Any]:
        """The match as JSON-able data (`keisei-ray evaluate --json`)."""
        r = self.result
        return {
            "player": r.player, "opponent": r.opponent, "games": r.games, "wins": r.wins,
            "draws": r.draws, "losses": r.losses, "score": r.score,
            "score_ci95": list(self.score_ci), "win_rate": r.win_rate,
            "win_rate_ci95": list(self.win_rate_ci), "elo": self.elo.elo,
            "elo_ci95": self.elo.ci95, "reasons": r.reasons, "as_black": r.as_black,
            "as_white": r.as_white}

    def lines(self) -> list[str]:
        r = self.result
        reasons = ", ".join(f"{k.replace('_', ' ', 1)} {v}" for k, v in sorted(r.reasons.items()))
        return [
            f"{r.player} vs {r.opponent}: {r.games} games (colours alternated), "
            f"+{r.wins} ={r.draws} -{r.losses}",
            f"score {100 * r.score:.1f}% (95% interval {100 * self.score_ci[0]:.1f}-"
            f"{100 * self.score_ci[1]:.1f}%)",
            f"win rate {100 * r.win_rate:.1f}% (draws count as non-wins; 95% interval "
            f"{100 * self.win_rate_ci[0]:.1f}-{100 * self.win_rate_ci[1]:.1f}%)",
            f"Elo difference {signed(self.elo.elo)} ± {self.elo.ci95:.0f} (95%)",
            f"as Black +{r.as_black[0]} ={r.as_black[1]} -{r.as_black[2]}, "
            f"as White +{r.as_white[0]} ={r.as_white[1]} -{r.as_white[2]}",
            f"results by reason: {reasons or 'none'}",
            f"{r.plies / max(r.games, 1):.0f} plies per game, {r.games / max(r.seconds, 1e-9):.2f} "
            f"games/s",
        ]


# ----------------------------------------------------------------------------- one-off matches


def run_match(config: Config, player: Contestant, opponent: Contestant, games: int, *,
              workers: int = 1, seed: int | None = None,
              records: int | None = None) -> MatchResult:
    """`games` games of `player` vs `opponent`, in this process or split over Ray actors.

    With `workers` > 1 the games are split into contiguous blocks (colours still alternate by
    game number) played by that many evaluation actors; Ray must be initialised.
    """
    seed = config.evaluation.seed if seed is None else seed
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if workers == 1 or games < 2:
        return Evaluator(config).match(player, opponent, games, seed=seed, records=records)
    player, opponent = boxed(player), boxed(opponent)
    actors = [EvaluationActor.options(num_cpus=1).remote(config) for _ in range(workers)]
    try:
        bounds = np.linspace(0, games, workers + 1).round().astype(int)
        # Records are of the first `records` games by number, whichever actor plays them.
        wanted = config.evaluation.records if records is None else records
        refs = [actor.match.remote(player, opponent, int(hi - lo), seed, int(lo),
                                   int(max(0, min(hi - lo, wanted - lo))))
                for actor, lo, hi in zip(actors, bounds[:-1], bounds[1:], strict=True)
                if hi > lo]
        parts: list[MatchResult] = ray.get(refs)
    finally:
        for actor in actors:
            ray.kill(actor)
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


