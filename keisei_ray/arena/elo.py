"""One Elo rating store per run: Bradley-Terry maximum likelihood over every recorded game.

The scale: `random` is pinned at 0 Elo (`ANCHOR`, `ANCHOR_RATING`), so a rating reads as "Elo
above the uniformly random player". Everyone else (`heuristic`, checkpoints such as `ts-50000`)
is fitted from all recorded games at once, not by K-factor drift, so the order in which matches
were recorded does not matter.

The model: the expected score of A against B is `1 / (1 + 10 ** ((R_B - R_A) / 400))`; a game
scores 1, 1/2 or 0 and contributes `s log p + (1 - s) log(1 - p)` to the log-likelihood (a draw
counts as half a win and half a loss). A perfect score would push a rating to infinity, so each
pair of players that met gets `prior_draws` virtual draws (BayesElo's prior). The 95% intervals
come from the Fisher information: the inverse Hessian of the negative log-likelihood at the
optimum, with the anchor held fixed.

Known values: a 75% score gives +190.8 Elo (400 log10 3); n games at score p give a 95% half-width
of `1.96 * 400 / ln 10 / sqrt(n p (1 - p))` Elo between two players.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ANCHOR = "random"
"""The player whose rating is pinned."""
ANCHOR_RATING = 0.0
"""The anchor's rating: Elo is measured from the uniformly random player."""
PRIOR_DRAWS = 1.0
"""Virtual draws added to every pair of players that met (keeps perfect scores finite)."""
ELO_PER_NAT = 400.0 / math.log(10.0)
"""Elo points per unit of natural log-odds (173.7)."""
Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""


class EloError(ValueError):
    """Bad games given to the rating store (negative counts, a player against itself, ...)."""


@dataclass(frozen=True)
class Rating:
    """A fitted rating and the half-width of its 95% interval (inf when unconstrained)."""

    player: str
    elo: float
    ci95: float
    games: int  # real games played (virtual prior draws excluded)
    score: float  # points / games over those games (nan without games)


@dataclass(frozen=True)
class Record:
    """Games between two named players, counted from `player`'s side."""

    player: str
    opponent: str
    wins: int
    draws: int
    losses: int

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses


def expected_score(elo_difference: float) -> float:
    """The expected score of a player rated `elo_difference` above its opponent."""
    return 1.0 / (1.0 + 10.0 ** (-elo_difference / 400.0))


def elo_difference(score: float) -> float:
    """The Elo difference that gives the expected `score` (0 < score < 1)."""
    if not 0.0 < score < 1.0:
        raise EloError(f"an Elo difference needs a score strictly between 0 and 1, got {score!r}")
    return 400.0 * math.log10(score / (1.0 - score))


class EloStore:
    """All games of a run between named players, and their Bradley-Terry ratings."""

    def __init__(self, *, anchor: str = ANCHOR, anchor_rating: float = ANCHOR_RATING,
                 prior_draws: float = PRIOR_DRAWS) -> None:
        if not anchor:
            raise EloError(f"the anchor player needs a name, got {anchor!r}")
        if not math.isfinite(anchor_rating):
            raise EloError(f"the anchor rating must be finite, got {anchor_rating!r}")
        if not prior_draws >= 0.0:
            raise EloError(f"prior_draws must be >= 0, got {prior_draws!r}")
        self.anchor = anchor
        self.anchor_rating = float(anchor_rating)
        self.prior_draws = float(prior_draws)
        # (a, b) with a < b -> [a's wins, draws, a's losses] over their real games.
        self._pairs: dict[tuple[str, str], list[int]] = {}
        self._players: dict[str, None] = {anchor: None}  # insertion-ordered set
        self._cache: dict[str, Rating] | None = None
        self._last_fit: dict[str, float] = {}  # log-strengths of the last fit (warm start)

    # ---------------------------------------------------------------- games
    def record(self, player: str, opponent: str, wins: int, draws: int, losses: int) -> None:
        """Add games of `player` against `opponent` (counted from `player`'s side)."""
        for name in (player, opponent):
            if not isinstance(name, str) or not name:
                raise EloError(f"player names must be non-empty strings, got {name!r}")
        if player == opponent:
            raise EloError(f"a player cannot be rated against itself ({player!r})")
        counts = (wins, draws, losses)
        if any(isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 0
               for c in counts):
            raise EloError(f"wins/draws/losses must be integers >= 0, got {counts!r} for "
                           f"{player!r} vs {opponent!r}")
        if wins + draws + losses == 0:
            return
        key = (player, opponent) if player < opponent else (opponent, player)
        pair = self._pairs.setdefault(key, [0, 0, 0])
        first = (wins, draws, losses) if key[0] == player else (losses, draws, wins)
        for k, count in enumerate(first):
            pair[k] += int(count)
        self._players.setdefault(player, None)
        self._players.setdefault(opponent, None)
        self._cache = None

    @property
    def players(self) -> list[str]:
        """Every player named so far (the anchor first), in the order they appeared."""
        return list(self._players)

    def records(self) -> list[Record]:
        """The games, one record per pair of players that met."""
        return [Record(a, b, w, d, losses) for (a, b), (w, d, losses) in self._pairs.items()]

    def games_of(self, player: str) -> int:
        return sum(sum(counts) for pair, counts in self._pairs.items() if player in pair)

    # ---------------------------------------------------------------- ratings
    def ratings(self) -> dict[str, Rating]:
        """Fitted ratings of every player connected to the anchor by games.

        Players with no chain of games to the anchor have no defined rating and are left out.
        """
        if self._cache is None:
            self._cache = self._fit()
        return dict(self._cache)

    def rating(self, player: str) -> Rating:
        ratings = self.ratings()
        if player not in ratings:
            known = ", ".join(ratings) or "none"
            raise EloError(f"no rating for {player!r}: it has no games linking it to "
                           f"{self.anchor!r} (rated: {known})")
        return ratings[player]

    def _connected(self) -> list[str]:
        # Players reachable from the anchor through pairs that played.
        neighbours: dict[str, set[str]] = {p: set() for p in self._players}
        for a, b in self._pairs:
            neighbours[a].add(b)
            neighbours[b].add(a)
        seen = {self.anchor}
        frontier = [self.anchor]
        while frontier:
            for other in neighbours[frontier.pop()]:
                if other not in seen:
                    seen.add(other)
                    frontier.append(other)
        return [p for p in self._players if p in seen]

    def _fit(self) -> dict[str, Rating]:
        players = self._connected()
        index = {p: i for i, p in enumerate(players)}
        linked = [(a, b, w + 0.5 * d, w + d + losses)
                  for (a, b), (w, d, losses) in self._pairs.items() if a in index]
        pairs = [(index[a], index[b], pts + 0.5 * self.prior_draws, g + self.prior_draws)
                 for a, b, pts, g in linked]
        # Warm start from the last fit: adding one evaluation's games moves little.
        start = np.array([self._last_fit.get(p, 0.0) for p in players])
        theta, covariance = _bradley_terry(len(players), pairs, start)
        self._last_fit = dict(zip(players, theta.tolist(), strict=True))
        games = dict.fromkeys(players, 0.0)
        points = dict.fromkeys(players, 0.0)
        for a, b, pts, g in linked:
            games[a] += g
            games[b] += g
            points[a] += pts
            points[b] += g - pts
        out = {}
        for p, i in index.items():
            variance = covariance[i, i]
            ci = Z95 * ELO_PER_NAT * math.sqrt(variance) if math.isfinite(variance) else math.inf
            out[p] = Rating(
                player=p,
                elo=self.anchor_rating + ELO_PER_NAT * float(theta[i]),
                ci95=0.0 if p == self.anchor else ci,
                games=int(games[p]),
                score=points[p] / games[p] if games[p] else math.nan,
            )
        return out

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state (what a checkpoint keeps)."""
        return {
            "anchor": self.anchor,
            "anchor_rating": self.anchor_rating,
            "prior_draws": self.prior_draws,
            "players": self.players,
            "pairs": [[a, b, *counts] for (a, b), counts in self._pairs.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace everything with a `state_dict()` (validated: a bad one changes nothing)."""
        try:
            other = EloStore(anchor=str(state["anchor"]),
                             anchor_rating=float(state["anchor_rating"]),
                             prior_draws=float(state["prior_draws"]))
            for name in state["players"]:
                other._players.setdefault(str(name), None)
            for a, b, wins, draws, losses in state["pairs"]:
                if not {str(a), str(b)} <= set(other._players):
                    raise EloError(f"pair {a!r} vs {b!r} names an unlisted player")
                other.record(str(a), str(b), int(wins), int(draws), int(losses))
        except (KeyError, TypeError, ValueError) as exc:
            raise EloError(f"not an Elo store state ({type(exc).__name__}: {exc})") from None
        self.__dict__.update(other.__dict__)

    @classmethod
    def from_records(cls, records: Iterable[Record], **kwargs: Any) -> EloStore:
        store = cls(**kwargs)
        for r in records:
            store.record(r.player, r.opponent, r.wins, r.draws, r.losses)
        return store


# Long by choice: one Newton solver (gradient, Hessian, damping, covariance) reads best whole.
def _bradley_terry(n: int, pairs: list[tuple[int, int, float, float]],
                   start: np.ndarray | None = None,
                   max_iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood log-strengths (player 0 fixed at 0) and their covariance.

    `pairs` holds (i, j, points of i, games). Newton's method on the concave log-likelihood
    from `start` (zeros by default), with step halving; the covariance is the inverse observed
    information (inf where a direction is unconstrained, e.g. a player whose every game is a
    win without a prior).
    """
    theta = np.zeros(n)
    if start is not None and np.all(np.isfinite(start)):
        theta[1:] = start[1:]
    covariance = np.zeros((n, n))
    if n <= 1 or not pairs:
        return theta, covariance
    i_idx = np.array([p[0] for p in pairs])
    j_idx = np.array([p[1] for p in pairs])
    points = np.array([p[2] for p in pairs])
    games = np.array([p[3] for p in pairs])

    def loglik(t: np.ndarray) -> float:
        d = t[i_idx] - t[j_idx]
        # points*log(sigmoid(d)) + (games-points)*log(sigmoid(-d)), overflow-free
        return float(np.sum(-points * np.logaddexp(0.0, -d)
                            - (games - points) * np.logaddexp(0.0, d)))

    def derivatives(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = t[i_idx] - t[j_idx]
        p = 0.5 * (1.0 + np.tanh(0.5 * d))  # sigmoid, stable
        residual = points - games * p
        weight = games * p * (1.0 - p)
        grad = np.zeros(n)
        np.add.at(grad, i_idx, residual)
        np.add.at(grad, j_idx, -residual)
        info = np.zeros((n, n))  # observed information = -Hessian
        np.add.at(info, (i_idx, i_idx), weight)
        np.add.at(info, (j_idx, j_idx), weight)
        np.add.at(info, (i_idx, j_idx), -weight)
        np.add.at(info, (j_idx, i_idx), -weight)
        return grad[1:], info[1:, 1:]

    current = loglik(theta)
    for _ in range(max_iterations):
        grad, info = derivatives(theta)
        if np.max(np.abs(grad)) < 1e-10:
            break
        # A tiny ridge keeps the solve defined while a perfect score runs off to infinity.
        step = np.linalg.solve(info + 1e-12 * np.eye(n - 1), grad)
        scale = 1.0
        while scale > 1e-6:
            candidate = theta.copy()
            candidate[1:] += scale * step
            value = loglik(candidate)
            if value >= current - 1e-12:
                theta, current = candidate, value
                break
            scale *= 0.5
        else:
            break
        if np.max(np.abs(scale * step)) < 1e-12:
            break
    _, info = derivatives(theta)
    covariance = np.full((n, n), math.inf)
    covariance[0, :] = covariance[:, 0] = 0.0
    # Invertible only when every rating is pinned down by finite evidence; a Cholesky
    # factor exists exactly when the (symmetric) information is positive definite.
    scale = max(1.0, float(np.max(np.diag(info))))
    try:
        factor = np.linalg.cholesky(info + 1e-9 * scale * np.eye(n - 1))
        if np.min(np.diag(factor)) ** 2 > 1e-6 * scale:
            inverse_factor = np.linalg.inv(factor)
            covariance[1:, 1:] = inverse_factor.T @ inverse_factor
        else:
            log.debug("Elo fit: near-singular information matrix (a rating is unconstrained)")
    except np.linalg.LinAlgError as exc:
        log.debug("Elo fit: information matrix not positive definite (%s)", exc)
    return theta, covariance
