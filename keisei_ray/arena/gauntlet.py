"""The gauntlet: a fixed ladder of opponents with stored ratings, so a model's Elo means the
same thing in every run (`keisei-ray gauntlet MODEL|RUN_DIR`).

The rungs (`RUNGS`) run from `random` through the scripted players to Fairy-Stockfish at rising
strength (limited by search depth and `Skill Level`, never by time, so results do not depend
on the machine's load). They were played against each other once (`rate_ladder`, the command
`keisei-ray gauntlet --rate-ladder`) and their Bradley-Terry ratings (random pinned at 0, as in
`keisei_ray.arena.elo`) are stored in `gauntlet_ratings.json` beside this module. A model's gauntlet
rating is then fitted with every rung held at its stored rating (`fit_fixed`): one parameter,
the model's own.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.table import Table

from actors.evaluation import Contestant, MatchResult
from keisei_ray.arena.elo import ANCHOR, ELO_PER_NAT, PRIOR_DRAWS, Z95, EloStore, Rating
from keisei_ray.arena.evaluation import load_contestant, run_match, wilson_interval
from keisei_ray.config import Config
from shogi.usi_engine import ENGINE_ALIASES

RUNGS: tuple[str, ...] = ("random", "sf-skill-20", "heuristic", "sf-skill-5", "mate",
                          "sf-skill-3", "sf-skill0", "sf-d1", "sf-d4")
"""The ladder, weakest first (engine rungs: `shogi.usi_engine.ENGINE_ALIASES`)."""
RATINGS_FILE = "gauntlet_ratings.json"
CHEAP_RUNGS = ("random", "heuristic", "mate")
"""Rungs without an engine process: what background evaluation can afford every time."""


class GauntletError(ValueError):
    """The stored ratings are missing or do not cover a rung (the message says which)."""


def ratings_path() -> Path:
    return Path(str(resources.files("keisei_ray.arena") / RATINGS_FILE))


def load_ratings(path: Path | None = None) -> dict[str, float]:
    """The stored rung ratings: rung -> Elo (random = 0)."""
    path = path or ratings_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GauntletError(f"{path}: no stored ladder ratings (make them with `keisei-ray "
                            "gauntlet --rate-ladder`)") from None
    return {name: float(entry["elo"]) for name, entry in data["ratings"].items()}


# ----------------------------------------------------------------------------- fitting


def fit_fixed(results: Sequence[MatchResult], ratings: dict[str, float],
              prior_draws: float = PRIOR_DRAWS) -> Rating:
    """The player's Bradley-Terry rating with every opponent held at `ratings[opponent]`.

    Each match gets `prior_draws` virtual draws (as in `EloStore`), so a perfect score stays
    finite; the 95% interval comes from the Fisher information of the one free rating.
    """
    if not results:
        raise ValueError("no matches to rate")
    player = results[0].player
    rows = []
    for r in results:
        if r.opponent not in ratings:
            raise GauntletError(f"opponent {r.opponent!r} has no stored rating")
        rows.append((ratings[r.opponent] / ELO_PER_NAT, r.wins + 0.5 * r.draws + 0.5 *
                     prior_draws, r.games + prior_draws))
    theta = sum(t for t, _, _ in rows) / len(rows)
    info = 0.0
    for _ in range(100):
        grad = info = 0.0
        for t, points, weight in rows:
            p = 1.0 / (1.0 + math.exp(t - theta))
            grad += points - weight * p
            info += weight * p * (1.0 - p)
        step = grad / info
        theta += max(-2.0, min(2.0, step))
        if abs(step) < 1e-10:
            break
    played = sum(r.games for r in results)
    scored = sum(r.wins + 0.5 * r.draws for r in results)
    return Rating(player, ELO_PER_NAT * theta, Z95 * ELO_PER_NAT / math.sqrt(info), played,
                  scored / played if played else math.nan)


# ----------------------------------------------------------------------------- the gauntlet


@dataclass(frozen=True)
class GauntletRow:
    rung: str
    rung_elo: float
    result: MatchResult

    @property
    def score_ci(self) -> tuple[float, float]:
        r = self.result
        return wilson_interval(r.wins + 0.5 * r.draws, r.games)

    @property
    def elo(self) -> Rating:
        """The player's rating from this rung's games alone (the rung held fixed)."""
        return fit_fixed([self.result], {self.rung: self.rung_elo})


@dataclass(frozen=True)
class GauntletResult:
    player: str
    rows: list[GauntletRow]
    rating: Rating  # from every rung's games at once
    seconds: float


def gauntlet(config: Config, player: Contestant, games: int, *,
             rungs: Sequence[str] = RUNGS, workers: int = 1,
             ratings: dict[str, float] | None = None,
             progress: Callable[[MatchResult], None] | None = None) -> GauntletResult:
    """`games` games (colours alternated) of `player` against each rung, and its rating."""
    import time  # noqa: PLC0415

    ratings = load_ratings() if ratings is None else ratings
    rungs = [r for r in rungs if r != player.name]  # a scripted player meets itself: no match
    missing = [r for r in rungs if r not in ratings]
    if missing:
        raise GauntletError(f"rungs without a stored rating: {', '.join(missing)} (rate them "
                            "with `keisei-ray gauntlet --rate-ladder`)")
    started = time.perf_counter()
    rows = []
    for k, rung in enumerate(rungs):
        result = run_match(config, player, load_contestant(rung), games, workers=workers,
                           seed=config.evaluation.seed + 1013 * k, records=0)
        rows.append(GauntletRow(rung, ratings[rung], result))
        if progress is not None:
            progress(result)
    rating = fit_fixed([row.result for row in rows], ratings)
    return GauntletResult(player.name, rows, rating, time.perf_counter() - started)


def plot_gauntlet(result: GauntletResult, path: Path) -> Path:
    """A PNG: score against each rung (95% bars) over the rung's rating, with the expected
    score of the fitted rating drawn as a curve."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(7, 4), dpi=120)
    axes = figure.add_subplot()
    xs = [row.rung_elo for row in result.rows]
    scores = [row.result.score for row in result.rows]
    low = [s - row.score_ci[0] for s, row in zip(scores, result.rows, strict=True)]
    high = [row.score_ci[1] - s for s, row in zip(scores, result.rows, strict=True)]
    axes.errorbar(xs, scores, yerr=[low, high], marker="o", linestyle="none", capsize=3,
                  label=f"{result.player}: score")
    for row in result.rows:
        axes.annotate(row.rung, (row.rung_elo, row.result.score), textcoords="offset points",
                      xytext=(4, 6), fontsize=7)
    lo, hi = min(xs) - 100, max(xs) + 100
    grid = [lo + (hi - lo) * i / 100 for i in range(101)]
    elo = result.rating.elo
    axes.plot(grid, [1 / (1 + 10 ** ((g - elo) / 400)) for g in grid], color="grey",
              linestyle="--", label=f"expected at Elo {elo:+.0f} ± {result.rating.ci95:.0f}")
    axes.set_xlabel(f"rung Elo ({ANCHOR} = 0, stored ladder ratings)")
    axes.set_ylabel("score")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title(f"Gauntlet of {result.player}")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


# ----------------------------------------------------------------------------- rating the ladder


def ladder_pairs(rungs: Sequence[str], reach: int = 2) -> list[tuple[str, str]]:
    """Every pair of rungs at most `reach` apart on the ladder (the stronger one first)."""
    return [(rungs[j], rungs[i]) for i in range(len(rungs))
            for j in range(i + 1, min(len(rungs), i + reach + 1))]


def rate_ladder(config: Config, games: int, *, rungs: Sequence[str] = RUNGS, reach: int = 2,
                workers: int = 1,
                progress: Callable[[MatchResult], None] | None = None) -> dict[str, Any]:
    """Play the rungs against each other (`ladder_pairs`), fit them in one Elo store (random
    at 0) and return the JSON document to store as `gauntlet_ratings.json`."""
    store = EloStore()
    matches = []
    for k, (a, b) in enumerate(ladder_pairs(rungs, reach)):
        result = run_match(config, load_contestant(a), load_contestant(b), games,
                           workers=workers, seed=config.evaluation.seed + 2027 * k, records=0)
        store.record(result.player, result.opponent, result.wins, result.draws, result.losses)
        matches.append({"player": a, "opponent": b, "wins": result.wins,
                        "draws": result.draws, "losses": result.losses})
        if progress is not None:
            progress(result)
    fitted = store.ratings()
    return {
        "how": (f"keisei-ray gauntlet --rate-ladder --games {games} --reach {reach}: every "
                f"pair of rungs at most {reach} apart played {games} games (colours "
                "alternated), one Bradley-Terry fit over all of them with random pinned at 0 "
                f"and {PRIOR_DRAWS:g} virtual draw per pair (keisei_ray/arena/elo.py)"),
        "made": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": platform.platform(),
        "env": {"max_moves": config.env.max_moves, "impasse": config.env.impasse},
        "engines": {r: ENGINE_ALIASES[r] for r in rungs if r in ENGINE_ALIASES},
        "ratings": {r: {"elo": round(fitted[r].elo, 1),
                        "ci95": round(fitted[r].ci95, 1) if math.isfinite(fitted[r].ci95)
                        else None,
                        "games": fitted[r].games} for r in rungs},
        "matches": matches,
    }


# ----------------------------------------------------------------------------- reports


def gauntlet_document(result: GauntletResult) -> dict[str, Any]:
    """The gauntlet as JSON-able data (`keisei-ray gauntlet --json`)."""
    return {
        "player": result.player, "elo": result.rating.elo, "elo_ci95": result.rating.ci95,
        "seconds": result.seconds,
        "rungs": [{"rung": row.rung, "rung_elo": row.rung_elo, "games": row.result.games,
                   "wins": row.result.wins, "draws": row.result.draws,
                   "losses": row.result.losses, "score": row.result.score,
                   "score_ci95": list(row.score_ci), "elo": row.elo.elo,
                   "elo_ci95": row.elo.ci95, "reasons": row.result.reasons}
                  for row in result.rows]}


def gauntlet_table(result: GauntletResult) -> Table:
    """One row per rung: its rating, the match, the score with its 95% interval, the Elo."""
    table = Table(title=f"Gauntlet of {result.player} (Elo: random = 0, rungs at their "
                  "stored ratings)", header_style="bold")
    for column in ("rung", "rung Elo", "games", "+/=/-", "score", "95%", "Elo", "±"):
        table.add_column(column, justify="left" if column == "rung" else "right")
    for row in result.rows:
        r = row.result
        table.add_row(row.rung, f"{row.rung_elo:+.0f}", str(r.games),
                      f"{r.wins}/{r.draws}/{r.losses}", f"{100 * r.score:.0f}%",
                      f"{100 * row.score_ci[0]:.0f}-{100 * row.score_ci[1]:.0f}%",
                      *_rung_elo(r.score, row.rung_elo, row.elo.elo, row.elo.ci95))
    return table


def _rung_elo(score: float, rung: float, elo: float, ci95: float) -> tuple[str, str]:
    """One rung's Elo cells: a score of 0% or 100% only says below / above the rung."""
    if score == 0.0:
        return f"< {rung:+.0f}", "-"
    if score == 1.0:
        return f"> {rung:+.0f}", "-"
    return f"{elo:+.0f}", f"{ci95:.0f}"
