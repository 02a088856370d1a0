"""League self-play: the pool of past policy snapshots, its win-rate table and the PFSP draw.

`League` is plain Python (testable without Ray); the driver owns one. Members' weights are
opaque to it: the driver stores boxed object refs (`[ObjectRef]` of a numpy weight dict, like
the broadcast weights), a checkpoint stores the numpy dicts themselves.

- A snapshot of the policy joins every `league.snapshot_interval` updates (the initial policy
  is the first member); a full pool evicts its oldest or its weakest member (the one the
  learner scores best against; never the newcomer).
- The win-rate table holds, per member, the learner's score (wins + draws/2) and games in the
  league games the workers reported, both multiplied by `league.win_rate_decay` each update.
- Opponents are drawn with prioritized fictitious self-play: weight f(x) = (1 - x)^p over the
  learner's score x against each member (AlphaStar's f_hard), x with a prior of one drawn game
  so a new member starts at 1/2. The draw uses the league's own numpy generator.
- An evicted member that a worker still plays (its games started before the eviction) is
  retired, not dropped: its weights stay available until no worker reports it in use.

`state_dict` / `load_state_dict` carry all of it (weights apart) so a resumed run continues
exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from actors.league_games import LeagueAssignment, slot_counts
from actors.self_play import BatchSummary
from keisei_ray.config import Config, LeagueConfig

log = logging.getLogger(__name__)

_PRIOR_GAMES = 1.0  # a prior of one drawn game: x = 1/2 before any result


@dataclass
class Member:
    """One past snapshot of the policy in the pool."""

    member_id: int
    version: int  # the policy version it is a copy of
    added_update: int  # the driver's update count when it joined
    games: float = 0.0  # decayed count of league games against it
    score: float = 0.0  # the learner's decayed wins + draws / 2 in them
    total_games: int = 0  # undecayed totals, for reports
    total_wins: int = 0
    total_draws: int = 0

    @property
    def win_rate(self) -> float:
        """The learner's score against this member, with the prior."""
        return (self.score + 0.5 * _PRIOR_GAMES) / (self.games + _PRIOR_GAMES)


class League:
    """The opponent pool of league self-play (see the module docstring)."""

    def __init__(self, config: LeagueConfig, seed: int) -> None:
        self.config = config
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x1EA6])))
        self.members: dict[int, Member] = {}  # the pool, oldest first
        self.retired: dict[int, Member] = {}  # evicted, still played by some worker
        self.weights: dict[int, Any] = {}  # member id -> weights (pool and retired)
        self.in_use: dict[int, list[int]] = {}  # worker id -> members its running games play
        self.next_id = 0

    # ---------------------------------------------------------------- membership
    def add(self, version: int, weights: Any, update: int) -> Member:
        """Add a snapshot; evicts one member first when the pool is full."""
        member = Member(member_id=self.next_id, version=version, added_update=update)
        self.next_id += 1
        if len(self.members) >= self.config.pool_size:
            self._evict(self._eviction_candidate())
        self.members[member.member_id] = member
        self.weights[member.member_id] = weights
        log.info("league: policy version %d joins as member %d (%d in the pool)", version,
                 member.member_id, len(self.members))
        return member

    def _eviction_candidate(self) -> int:
        if self.config.evict == "oldest":
            return next(iter(self.members))
        # The weakest: the highest learner score; ties go to the oldest.
        return max(self.members.values(), key=lambda m: (m.win_rate, -m.member_id)).member_id

    def _evict(self, member_id: int) -> None:
        member = self.members.pop(member_id)
        log.info("league: member %d (version %d, learner score %.2f) leaves the pool",
                 member_id, member.version, member.win_rate)
        if any(member_id in ids for ids in self.in_use.values()):
            self.retired[member_id] = member
        else:
            del self.weights[member_id]

    def on_update(self, update: int, version: int, weights: Any) -> Member | None:
        """After each update: decay the win-rate table; add a snapshot every interval."""
        decay = self.config.win_rate_decay
        for member in (*self.members.values(), *self.retired.values()):
            member.games *= decay
            member.score *= decay
        if update % self.config.snapshot_interval == 0:
            return self.add(version, weights, update)
        return None

    # ---------------------------------------------------------------- the draw
    def probabilities(self) -> np.ndarray:
        """PFSP probabilities over the pool, in pool order."""
        if not self.members:
            raise ValueError("league: the pool is empty")
        rates = np.array([m.win_rate for m in self.members.values()], dtype=np.float64)
        weights = (1.0 - rates) ** self.config.pfsp_power
        total = weights.sum()
        if not total > 0:  # every weight underflowed: uniform
            return np.full(len(rates), 1.0 / len(rates))
        return np.asarray(weights / total, dtype=np.float64)

    def sample(self, n: int) -> list[int]:
        """`n` member ids drawn (with replacement) by PFSP."""
        ids = np.array(list(self.members), dtype=np.int64)
        picks = self.rng.choice(len(ids), size=n, p=self.probabilities())
        return [int(i) for i in ids[picks]]

    # ---------------------------------------------------------------- results
    def record(self, results: Iterable[tuple[int, int, int, int]]) -> None:
        """Add finished league games, (member id, games, wins, draws) from the learner's side,
        to the table (results against members no longer known are skipped)."""
        for member_id, games, wins, draws in results:
            member = self.members.get(member_id) or self.retired.get(member_id)
            if member is None:
                log.debug("league: results against unknown member %d skipped", member_id)
                continue
            member.games += games
            member.score += wins + 0.5 * draws
            member.total_games += games
            member.total_wins += wins
            member.total_draws += draws

    def report_in_use(self, worker_id: int, member_ids: Sequence[int]) -> None:
        """The members a worker's running games play; retired members nobody plays go."""
        self.in_use[worker_id] = sorted(int(i) for i in member_ids)
        self._prune()

    def forget_worker(self, worker_id: int) -> None:
        """A worker left the pool: its games no longer hold members."""
        self.in_use.pop(worker_id, None)
        self._prune()

    def _prune(self) -> None:
        playing = {i for ids in self.in_use.values() for i in ids}
        for member_id in [i for i in self.retired if i not in playing]:
            del self.retired[member_id]
            del self.weights[member_id]

    def table(self) -> list[dict[str, Any]]:
        """The pool as rows (for logs and reports)."""
        probabilities = self.probabilities() if self.members else np.zeros(0)
        return [{"member": m.member_id, "version": m.version, "games": m.total_games,
                 "learner_score": m.win_rate, "p": float(p)}
                for m, p in zip(self.members.values(), probabilities, strict=True)]

    # ---------------------------------------------------------------- state (checkpoints)
    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, JSON-able (ints and floats round-trip exactly)."""
        return {
            "next_id": self.next_id,
            "members": [asdict(m) for m in self.members.values()],
            "retired": [asdict(m) for m in self.retired.values()],
            "in_use": [[w, ids] for w, ids in self.in_use.items()],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any], weights: Mapping[int, Any]) -> None:
        """Restore `state_dict()`; `weights` must hold every pool and retired member's."""
        members = [Member(**m) for m in state["members"]]
        retired = [Member(**m) for m in state["retired"]]
        missing = [m.member_id for m in (*members, *retired) if m.member_id not in weights]
        if missing:
            raise ValueError(f"league state: no weights for member(s) {missing}")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = dict(state["rng"])
        self.rng = rng
        self.next_id = int(state["next_id"])
        self.members = {m.member_id: m for m in members}
        self.retired = {m.member_id: m for m in retired}
        self.weights = {m.member_id: weights[m.member_id] for m in (*members, *retired)}
        self.in_use = {int(w): [int(i) for i in ids] for w, ids in state["in_use"]}


# ----------------------------------------------------------------------------- driver side


def assignment(league: League | None, config: Config) -> LeagueAssignment | None:
    """One collect's league opponents for a worker: a PFSP draw per league slot, and the boxed
    weights of every member a game may play (only those a worker lacks are fetched)."""
    if league is None:
        return None
    games = slot_counts(config)[2]
    if not games:
        return None
    return LeagueAssignment(members=league.sample(games), weights=dict(league.weights))


def record_round(league: League | None, summaries: Iterable[BatchSummary],
                 workers: Iterable[int]) -> None:
    """A gathered round's league results and members in use, in the given (worker) order;
    `workers`: the ids of the pool's workers (the games of the others are gone)."""
    if league is None:
        return
    for summary in summaries:
        league.record(summary.league_results)
        league.report_in_use(summary.worker_id, summary.league_in_use)
    for worker_id in set(league.in_use) - set(workers):
        league.forget_worker(worker_id)
