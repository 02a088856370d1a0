"""The gauntlet: a fixed ladder of opponents with stored ratings, so a model's Elo means the
same thing in every run (`keisei-ray gauntlet MODEL|RUN_DIR`).

The rungs (`RUNGS`) run from `random` through mixtures of random and heuristic moves, the
scripted players and Fairy-Stockfish to GPSShogi, at rising strength (engines limited by search
depth and `Skill Level`, never by time, so results do not depend on the machine's load). They
were played against each other (`keisei_ray.arena.ladder_rating`, the command
`keisei-ray gauntlet --rate-ladder`) and their Bradley-Terry ratings (random pinned at 0, as in
`keisei_ray.arena.elo`) are stored in `gauntlet_ratings.json` beside this module. A model's
gauntlet rating is then fitted with every rung held at its stored rating (`fit_fixed`): one
parameter, the model's own. Games an engine crashed, timed out or answered no move in say
nothing about strength and are replayed (`play_clean`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from actors.evaluation import Contestant, MatchResult
from keisei_ray.arena.elo import ANCHOR, ELO_PER_NAT, PRIOR_DRAWS, Z95, Rating
from keisei_ray.arena.evaluation import load_contestant, run_match, wilson_interval
from keisei_ray.config import Config
from keisei_ray.text import signed
from shogi import Color, Outcome, Termination

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

RUNGS: tuple[str, ...] = ("random", "mix10", "mix20", "mix30", "mix40", "sf-skill-20",
                          "sf-skill-5", "heuristic", "mate", "sf-skill-4-d2", "sf-skill-3",
                          "sf-skill-2", "sf-skill0", "sf-d1", "sf-d4", "sf-d6", "gps-d4-r10",
                          "gps-d4-r05", "gps-d4")
"""The ladder, weakest first (engine rungs: `shogi.usi_engine.ENGINE_ALIASES`; the mixtures:
`actors.players.MIXES`)."""
RATINGS_FILE = "gauntlet_ratings.json"
CHEAP_RUNGS = ("random", "mix10", "mix20", "mix30", "mix40", "heuristic", "mate")
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


@dataclass(frozen=True)
class FixedRating(Rating):
    """A rating fitted against fixed opponents; `bound` is "below" when every game was lost
    and "above" when every game was won (the games then only bound the rating, see
    `fit_fixed`), else None."""

    bound: str | None = None


def fit_fixed(results: Sequence[MatchResult], ratings: dict[str, float]) -> FixedRating:
    """The player's Bradley-Terry rating with every opponent held at `ratings[opponent]`.

    The prior: none while the games pin the rating down, that is while the player's total
    score is strictly between 0 and 1 (then the log-likelihood has a finite maximum); the
    rating is the maximum-likelihood one. A virtual draw per rung, as the ladder's own fit
    uses, would not do here: the gauntlet's rungs span thousands of Elo, and a draw against
    each one drags a weak model toward the strong rungs it lost every game to (a model that
    went 0/1/3 against random and lost the rest was put at +280). Only a score of exactly 0
    or 1 has no finite maximum; then one virtual draw against the nearest rung it played,
    the lowest for all losses and the highest for all wins, gives the finite value, and
    `bound` says that it is a bound ("below" / "above"): it lies below every rung when all
    was lost, above every rung when all was won, so it never claims more than the games.
    The 95% interval comes from the Fisher information of the one free rating.
    """
    if not results:
        raise ValueError("no matches to rate")
    player = results[0].player
    rows = []
    for r in results:
        if r.opponent not in ratings:
            raise GauntletError(f"opponent {r.opponent!r} has no stored rating")
        if r.games:
            rows.append((ratings[r.opponent] / ELO_PER_NAT, r.wins + 0.5 * r.draws,
                         float(r.games)))
    played = sum(r.games for r in results)
    if not played:
        raise ValueError(f"{player}: no games to rate")
    scored = sum(points for _, points, _ in rows)
    bound = None
    if scored in (0.0, played):
        bound = "below" if scored == 0.0 else "above"
        nearest = (min if bound == "below" else max)(t for t, _, _ in rows)
        rows.append((nearest, 0.5 * PRIOR_DRAWS, PRIOR_DRAWS))
    theta = _solve_score(rows)
    info = sum(weight * p * (1.0 - p) for t, _, weight in rows
               for p in (1.0 / (1.0 + math.exp(t - theta)),))
    ci = Z95 * ELO_PER_NAT / math.sqrt(info) if info > 0 else math.inf
    return FixedRating(player, ELO_PER_NAT * theta, ci, played, scored / played, bound)


def _solve_score(rows: Sequence[tuple[float, float, float]]) -> float:
    """The log-strength at which the expected points equal the points scored (rows of
    opponent log-strength, points, games); the expected points rise with it, so bisection
    on a bracket that holds the answer finds it exactly."""
    def surplus(theta: float) -> float:
        return sum(points - weight / (1.0 + math.exp(t - theta)) for t, points, weight in rows)

    low = min(t for t, _, _ in rows) - 60.0
    high = max(t for t, _, _ in rows) + 60.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if surplus(middle) > 0.0:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


# ----------------------------------------------------------------------------- failed games

FAILED_REASONS = (Termination.ENGINE_CRASH.value, Termination.ENGINE_TIMEOUT.value,
                  Termination.MALFORMED_MOVE.value)
"""Game ends that say nothing about strength: an engine crashed, ran past its timeout (a
loaded machine, a hung process) or answered something that is not a move (a broken
protocol). Ratings leave these games out and play others instead; a well-formed illegal move
stays a loss."""
REPLAYS = 3
"""Rounds of replacement games for failed ones before a match is left short."""


def failed_games(result: MatchResult) -> int:
    """How many of the match's games ended by an engine failure (`FAILED_REASONS`)."""
    return sum(count for key, count in result.reasons.items()
               if key.partition("_")[2] in FAILED_REASONS)


def without_failures(result: MatchResult) -> MatchResult:
    """The match without the games an engine failed in (`FAILED_REASONS`), rebuilt from its
    records (which must cover every game when there are such games)."""
    if not failed_games(result):
        return result
    if len(result.records) != result.games:
        raise ValueError(f"{result.player} vs {result.opponent}: {failed_games(result)} "
                         f"failed game(s) but records of only {len(result.records)} of "
                         f"{result.games} games; play it with records for every game")
    clean = MatchResult(result.player, result.opponent, seconds=result.seconds)
    for record in result.records:
        if record.reason in FAILED_REASONS:
            continue
        color = Color.BLACK if record.black == result.player else Color.WHITE
        winner = None if record.winner is None else Color(record.winner)
        clean.add_game(color, Outcome(winner, Termination(record.reason)), len(record.moves))
        clean.records.append(record)
    return clean


def play_clean(config: Config, player: Contestant, opponent: Contestant, games: int, *,
               workers: int = 1, seed: int) -> tuple[MatchResult, int]:
    """`games` games without engine failures: failed games are left out and replaced (up to
    `REPLAYS` rounds; a match still short after that is logged and kept short). Returns the
    clean match and how many games were left out."""
    result = MatchResult(player.name, opponent.name)
    excluded = 0
    for attempt in range(REPLAYS + 1):
        wanted = games - result.games
        if wanted <= 0:
            break
        played = run_match(config, player, opponent, wanted, workers=workers,
                           seed=seed + 7919 * attempt, records=wanted)
        clean = without_failures(played)
        excluded += played.games - clean.games
        clean.records = []
        result = clean if not result.games else result.merge(clean)
        if clean.games < played.games:
            log.warning("%s vs %s: %d game(s) ended by an engine failure (%s) are left out "
                        "and replayed", player.name, opponent.name, played.games - clean.games,
                        ", ".join(f"{k} {v}" for k, v in sorted(played.reasons.items())
                                  if k.partition("_")[2] in FAILED_REASONS))
    if result.games < games:
        log.warning("%s vs %s: only %d clean game(s) of %d after %d replays", player.name,
                    opponent.name, result.games, games, REPLAYS)
    return result, excluded


# ----------------------------------------------------------------------------- the gauntlet


@dataclass(frozen=True)
class GauntletRow:
    rung: str
    rung_elo: float
    result: MatchResult
    excluded: int = 0  # games left out for an engine failure (and replayed)

    @property
    def score_ci(self) -> tuple[float, float]:
        r = self.result
        return wilson_interval(r.wins + 0.5 * r.draws, r.games)

    @property
    def elo(self) -> FixedRating:
        """The player's rating from this rung's games alone (the rung held fixed)."""
        return fit_fixed([self.result], {self.rung: self.rung_elo})


@dataclass(frozen=True)
class GauntletResult:
    player: str
    rows: list[GauntletRow]
    rating: FixedRating  # from every rung's games at once
    seconds: float
    skipped: tuple[str, ...] = ()  # rungs above the climb's end, not played


CLIMB = 2
"""The gauntlet stops climbing after this many rungs in a row scored 0 (see `gauntlet`)."""


def gauntlet(config: Config, player: Contestant, games: int, *,
             rungs: Sequence[str] = RUNGS, workers: int = 1,
             ratings: dict[str, float] | None = None, climb: int | None = CLIMB,
             progress: Callable[[MatchResult], None] | None = None) -> GauntletResult:
    """`games` games (colours alternated) of `player` against each rung, and its rating.

    With `climb`, the rungs above `climb` rungs in a row against which the player scored
    nothing are skipped: more zeros against still stronger rungs would barely move the fit
    and cost the most time (the top rungs search deepest). Games an engine lost by a crash
    or timeout are left out and replayed (`play_clean`).
    """
    import time  # noqa: PLC0415

    ratings = load_ratings() if ratings is None else ratings
    rungs = [r for r in rungs if r != player.name]  # a scripted player meets itself: no match
    missing = [r for r in rungs if r not in ratings]
    if missing:
        raise GauntletError(f"rungs without a stored rating: {', '.join(missing)} (rate them "
                            "with `keisei-ray gauntlet --rate-ladder`)")
    started = time.perf_counter()
    rows: list[GauntletRow] = []
    zeros = 0
    for k, rung in enumerate(rungs):
        if climb is not None and zeros >= climb:
            log.info("%s scored 0 against %d rungs in a row: %s skipped", player.name, zeros,
                     ", ".join(rungs[k:]))
            skipped = tuple(rungs[k:])
            break
        result, excluded = play_clean(config, player, load_contestant(rung), games,
                                      workers=workers, seed=config.evaluation.seed + 1013 * k)
        rows.append(GauntletRow(rung, ratings[rung], result, excluded))
        zeros = zeros + 1 if result.games and result.score == 0.0 else 0
        if progress is not None:
            progress(result)
    else:
        skipped = ()
    rating = fit_fixed([row.result for row in rows], ratings)
    return GauntletResult(player.name, rows, rating, time.perf_counter() - started, skipped)


def _error_bars(row: GauntletRow) -> tuple[float, float]:
    """The distances from the score down and up to its interval's ends, never negative (a
    0% score's Wilson bound is 0 only up to rounding)."""
    low, high = row.score_ci
    score = row.result.score
    return max(0.0, score - low), max(0.0, high - score)


def plot_gauntlet(results: GauntletResult | Sequence[GauntletResult], path: Path) -> Path:
    """A PNG of `gauntlet_figure`."""
    figure = gauntlet_figure(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def gauntlet_figure(results: GauntletResult | Sequence[GauntletResult]) -> Figure:
    """Score against each rung (95% bars) over the rung's rating, with the expected score of
    the fitted rating drawn as a curve, for one player or several side by side (e.g. the raw
    policy and its search); rung names stand above the plot, spread so that they never
    overlap, each with a thin line down to its point."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    results = [results] if isinstance(results, GauntletResult) else list(results)
    if not results or not all(r.rows for r in results):
        raise ValueError("gauntlet plot: a player without a played rung, nothing to plot")
    figure = Figure(figsize=(9, 5.2), dpi=120)
    axes = figure.add_subplot()
    rungs = {row.rung: row.rung_elo for r in results for row in r.rows}
    lo, hi = min(rungs.values()) - 150, max(rungs.values()) + 150
    grid = [lo + (hi - lo) * i / 200 for i in range(201)]
    # The label's leader line goes to the first player's point at that rung.
    anchor: dict[str, float] = {}
    for k, result in enumerate(results):
        colour = f"C{k}"
        dodge = (k - (len(results) - 1) / 2) * 0.01 * (hi - lo)  # side by side, not on top
        xs = [row.rung_elo + dodge for row in result.rows]
        scores = [row.result.score for row in result.rows]
        bars = [_error_bars(row) for row in result.rows]
        axes.errorbar(xs, scores, yerr=[[b[0] for b in bars], [b[1] for b in bars]],
                      marker="o", linestyle="none", capsize=3, color=colour,
                      label=f"{result.player}: score (95%)")
        rating = result.rating
        elo = rating.elo
        label = (f"expected at Elo {signed(elo)} ± {rating.ci95:.0f}" if rating.bound is None
                 else f"all {'lost' if rating.bound == 'below' else 'won'}: Elo "
                 f"{'<' if rating.bound == 'below' else '>'} {signed(elo)}")
        axes.plot(grid, [1 / (1 + 10 ** ((g - elo) / 400)) for g in grid],
                  color="grey" if len(results) == 1 else colour, linestyle="--", alpha=0.8,
                  label=label)
        for row in result.rows:
            anchor.setdefault(row.rung, row.result.score)
    axes.set_xlim(lo, hi)
    axes.set_ylim(-0.05, 1.05)
    order = sorted(rungs, key=lambda r: rungs[r])
    spots = spread([(rungs[r] - lo) / (hi - lo) for r in order], gap=0.9 / len(order))
    for rung, spot in zip(order, spots, strict=True):
        axes.annotate(rung, xy=(rungs[rung], anchor[rung]), xycoords="data",
                      xytext=(spot, 1.02), textcoords="axes fraction", rotation=90,
                      ha="left", va="bottom", fontsize=7, rotation_mode="anchor",
                      arrowprops={"arrowstyle": "-", "color": "0.75", "linewidth": 0.5,
                                  "shrinkA": 0, "shrinkB": 3})
    axes.set_xlabel(f"rung Elo ({ANCHOR} = 0, stored ladder ratings)")
    axes.set_ylabel("score")
    figure.suptitle("Gauntlet of " + " and ".join(r.player for r in results), y=0.985)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.subplots_adjust(top=0.77, bottom=0.11, left=0.08, right=0.93)
    return figure


def spread(positions: Sequence[float], gap: float) -> list[float]:
    """Sorted label positions in [0, 1] moved apart to at least `gap` (or as far as fits),
    each staying as close to its own position as the others allow."""
    n = len(positions)
    if n == 0:
        return []
    gap = min(gap, 1.0 / max(n - 1, 1))
    # Shift to the space where the constraint is plain ordering, average runs that collide
    # (pool adjacent violators: the least-squares placement), clamp into [0, 1 - (n-1) gap].
    shifted = [p - k * gap for k, p in enumerate(positions)]
    blocks: list[list[float]] = []  # [mean, size]
    for value in shifted:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, size = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * size) / (blocks[-1][1] + size),
                          blocks[-1][1] + size]
    fitted = [mean for mean, size in blocks for _ in range(int(size))]
    top = 1.0 - (n - 1) * gap
    return [min(max(value, 0.0), top) + k * gap for k, value in enumerate(fitted)]


# ----------------------------------------------------------------------------- reports


def gauntlet_document(result: GauntletResult) -> dict[str, Any]:
    """The gauntlet as JSON-able data (`keisei-ray gauntlet --json`, `gauntlet.json`).

    `elo_bound` is "below" / "above" when every game was lost / won (the Elo is then a bound,
    see `fit_fixed`); `excluded` counts games an engine failed in (`FAILED_REASONS`), left out
    and replayed; `skipped` names the rungs above the climb's end.
    """
    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "player": result.player, "elo": result.rating.elo,
        "elo_ci95": finite(result.rating.ci95), "elo_bound": result.rating.bound,
        "seconds": result.seconds, "skipped": list(result.skipped),
        "rungs": [{"rung": row.rung, "rung_elo": row.rung_elo, "games": row.result.games,
                   "wins": row.result.wins, "draws": row.result.draws,
                   "losses": row.result.losses, "score": row.result.score,
                   "score_ci95": list(row.score_ci), "elo": row.elo.elo,
                   "elo_ci95": finite(row.elo.ci95), "elo_bound": row.elo.bound,
                   "excluded": row.excluded, "reasons": row.result.reasons}
                  for row in result.rows]}


def gauntlet_table(result: GauntletResult) -> Table:
    """One row per rung: its rating, the match, the score with its 95% interval, the Elo."""
    table = Table(title=f"Gauntlet of {result.player} (Elo: random = 0, rungs at their "
                  "stored ratings)", header_style="bold")
    for column in ("rung", "rung Elo", "games", "+/=/-", "score", "95%", "Elo", "±"):
        table.add_column(column, justify="left" if column == "rung" else "right")
    for row in result.rows:
        r = row.result
        games = str(r.games) + (f" ({row.excluded} replayed)" if row.excluded else "")
        table.add_row(row.rung, f"{signed(row.rung_elo)}", games,
                      f"{r.wins}/{r.draws}/{r.losses}", f"{100 * r.score:.0f}%",
                      f"{100 * row.score_ci[0]:.0f}-{100 * row.score_ci[1]:.0f}%",
                      *_rung_elo(r.score, row.rung_elo, row.elo.elo, row.elo.ci95))
    for rung in result.skipped:
        table.add_row(rung, "", "-", "", "", "", "skipped", "")
    return table


def comparison_table(results: Sequence[GauntletResult]) -> Table:
    """Players side by side (e.g. the raw policy and its search): per rung each one's
    W/D/L and score, and each one's gauntlet Elo in the last row."""
    table = Table(title="Gauntlet of " + " and ".join(r.player for r in results) +
                  f" (Elo: {ANCHOR} = 0, rungs at their stored ratings)", header_style="bold")
    table.add_column("rung")
    table.add_column("rung Elo", justify="right")
    for r in results:
        table.add_column(f"{r.player}: +/=/-", justify="right")
        table.add_column("score (95%)", justify="right")
    played = [{row.rung: row for row in r.rows} for r in results]
    order = {row.rung: row.rung_elo for r in results for row in r.rows}
    for rung in sorted(order, key=lambda name: order[name]):
        cells = []
        for rows in played:
            entry = rows.get(rung)
            if entry is None:
                cells += ["skipped", ""]
                continue
            res, (low, high) = entry.result, entry.score_ci
            cells += [f"{res.wins}/{res.draws}/{res.losses}",
                      f"{100 * res.score:.0f}% ({100 * low:.0f}-{100 * high:.0f})"]
        table.add_row(rung, f"{signed(order[rung])}", *cells)
    table.add_row("gauntlet Elo", "", *(cell for r in results
                                           for cell in (_elo_cell(r.rating), "")))
    return table


def _elo_cell(rating: FixedRating) -> str:
    if rating.bound == "below":
        return f"< {signed(rating.elo)}"
    if rating.bound == "above":
        return f"> {signed(rating.elo)}"
    return f"{signed(rating.elo)} ± {rating.ci95:.0f}"


def rating_line(result: GauntletResult) -> str:
    """The model's gauntlet Elo in one line (a bound when every game was lost or won)."""
    rating = result.rating
    games = sum(r.result.games for r in result.rows)
    tail = f"{games} games in {result.seconds:.0f} s"
    if result.skipped:
        tail += f"; skipped above the climb: {', '.join(result.skipped)}"
    if rating.bound == "below":
        return f"{result.player}: gauntlet Elo below {signed(rating.elo)} (every game lost), {tail}"
    if rating.bound == "above":
        return f"{result.player}: gauntlet Elo above {signed(rating.elo)} (every game won), {tail}"
    return f"{result.player}: gauntlet Elo {signed(rating.elo)} ± {rating.ci95:.0f} (95%), {tail}"


def _rung_elo(score: float, rung: float, elo: float, ci95: float) -> tuple[str, str]:
    """One rung's Elo cells: a score of 0% or 100% only says below / above the rung."""
    if score == 0.0:
        return f"< {signed(rung)}", "-"
    if score == 1.0:
        return f"> {signed(rung)}", "-"
    return f"{signed(elo)}", f"{ci95:.0f}"
