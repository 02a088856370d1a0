"""League games of a self-play worker: games against past snapshots of the policy.

The driver's `League` picks, with each collect, one pool member per league slot
(`LeagueAssignment`): a game that starts in that slot during the collect plays that member, and
keeps it until the game ends, across collects (an evicted member finishes its games). The worker
keeps a CPU copy of each member's network it plays (by member id) and answers every league game
waiting for an opponent move with one batched forward per member.

`LeagueEnv` is the game side, seen from the learner like `shogi.duel.OpponentEnv`: the
opponent's replies are played inside `step`, so each observation has the learner to move and a
learner transition spans its move and the reply (the learner's colour alternates per game).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cshogi
import numpy as np
import ray

from keisei_ray.config import Config
from shogi.compact import CompactState
from shogi.duel import DuelStep
from shogi.moves import Color
from shogi.position import Position
from shogi.rules import Termination
from shogi.vecenv import FinishedGame, Observation

NO_MEMBER = -1  # a slot whose first game has not started (no assignment seen yet)

# (members, observation of the positions where they move) -> one action per row.
ReplyFn = Callable[[np.ndarray, Observation], np.ndarray]


@dataclass(frozen=True)
class LeagueAssignment:
    """What the driver sends with a collect: the opponent of each league slot's next new game,
    and the weights of every member a game may play (pool and retired members)."""

    members: list[int]  # one member id per league slot
    weights: dict[int, list[Any]] = field(default_factory=dict)  # id -> [weights or ObjectRef]


class LeagueResult(NamedTuple):
    """League games one collect finished against one member, from the learner's side."""

    member_id: int
    games: int
    wins: int
    draws: int


def slot_counts(config: Config) -> tuple[int, int, int]:
    """(self-play, fixed-opponent, league) games of each worker; at least one self-play game."""
    e = config.train.games_per_worker
    duels = min(round(config.train.opponent_share * e), e - 1)
    league = (min(round(config.league.share * e), e - 1 - duels)
              if config.league.enabled else 0)
    return e - duels - league, duels, league


def resolve(box: Sequence[Any]) -> Mapping[str, np.ndarray]:
    """The weight dict in a box: fetched from the object store when it is a ref."""
    value = box[0]
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


@dataclass
class LeagueStep(DuelStep):
    members: list[int] = field(default_factory=list)  # the member of each finished game


class LeagueEnv:
    """`num_games` games of the learner against pool members, restarted when they end."""

    def __init__(self, num_games: int, max_moves: int = 512, *, impasse: bool = False,
                 start_sfen: str | None = None) -> None:
        if num_games < 1:
            raise ValueError(f"num_games must be >= 1, got {num_games!r}")
        self.num_games = num_games
        self.max_moves = max_moves
        self.impasse = impasse
        self.start_sfen = start_sfen
        # Slot i starts as Black when i is even; each new game in a slot swaps colours.
        self.agent_colors = [Color(i % 2) for i in range(num_games)]
        self.members = [NO_MEMBER] * num_games
        self.assignment: list[int] = []
        self._positions: list[Position | None] = [None] * num_games
        self._observation: Observation | None = None

    @property
    def started(self) -> bool:
        return all(p is not None for p in self._positions)

    def in_use(self) -> list[int]:
        """The members the running games play."""
        return sorted({m for m in self.members if m != NO_MEMBER})

    def assign(self, members: Sequence[int], reply: ReplyFn) -> bool:
        """Take the opponents of the games that start from now on; start the slots that have
        no game yet. True when games started (the observation changed)."""
        if len(members) != self.num_games:
            raise ValueError(f"league assignment names {len(members)} opponents for "
                             f"{self.num_games} league games")
        self.assignment = [int(m) for m in members]
        fresh = [s for s, p in enumerate(self._positions) if p is None]
        for slot in fresh:
            self._new_game(slot)
        self._replies(fresh, reply)
        if fresh:
            self._observation = self._observe()
        return bool(fresh)

    def _new_game(self, slot: int) -> None:
        self._positions[slot] = Position(self.start_sfen, max_moves=self.max_moves,
                                         impasse=self.impasse)
        self.members[slot] = self.assignment[slot]

    def _position(self, slot: int) -> Position:
        position = self._positions[slot]
        if position is None:
            raise RuntimeError("league games have not started: call assign() first")
        return position

    def _replies(self, slots: Sequence[int], reply: ReplyFn) -> None:
        """Play the opponent's move in those of `slots` where the opponent is to move."""
        slots = [s for s in slots if self._position(s).turn != self.agent_colors[s]]
        if not slots:
            return
        positions = [self._position(s) for s in slots]
        actions = reply(np.array([self.members[s] for s in slots], dtype=np.int64),
                        _observation(positions))
        for position, action in zip(positions, np.asarray(actions).tolist(), strict=True):
            position.push_action(int(action))

    def observe(self) -> Observation:
        if self._observation is None:
            raise RuntimeError("league games have not started: call assign() first")
        return self._observation

    def _observe(self) -> Observation:
        return _observation([self._position(s) for s in range(self.num_games)])

    def step(self, actions: np.ndarray, reply: ReplyFn) -> LeagueStep:
        """Play the learner's action in every game, then the opponents' replies (batched)."""
        acts = np.asarray(actions)
        if acts.shape != (self.num_games,):
            raise ValueError(f"expected {self.num_games} actions, got shape {acts.shape}")
        n = self.num_games
        out = LeagueStep(rewards=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                         truncated=np.zeros(n, bool), finished=[], agent_colors=[],
                         final_agent_to_move=np.zeros(n, bool))
        for slot, action in enumerate(acts.tolist()):
            self._position(slot).push_action(int(action))  # IllegalMoveError names the action
        going = [s for s in range(n) if not self._finish(s, out)]
        # Replies in the games that go on, and openings of the games that just restarted.
        self._replies(range(n), reply)
        restarted = [s for s in going if self._finish(s, out)]
        self._replies(restarted, reply)  # openings of the games the replies ended
        self._observation = self._observe()
        return out

    def _finish(self, slot: int, out: LeagueStep) -> bool:
        """Record the game in `slot` when it is over and start the next one; True if so."""
        position = self._position(slot)
        outcome = position.outcome()
        if outcome is None:
            return False
        agent = self.agent_colors[slot]
        if outcome.winner is not None:
            out.rewards[slot] = 1.0 if outcome.winner == agent else -1.0
        if outcome.reason is Termination.MAX_MOVES:
            out.truncated[slot] = True
        else:
            out.terminated[slot] = True
        out.final_agent_to_move[slot] = position.turn == agent
        out.finished.append(FinishedGame(
            slot=slot, outcome=outcome, plies=position.ply, final_state=position.compact(),
            usi_moves=[str(m) for m in position.moves]))
        out.agent_colors.append(agent)
        out.members.append(self.members[slot])
        self.agent_colors[slot] = agent.opponent()
        self._new_game(slot)
        return True

    # ------------------------------------------------------------------ state (checkpoints)
    def get_state(self) -> dict[str, Any]:
        """The running games (their moves), the learner's colour and the member per slot."""
        return {
            "agent_colors": [int(c) for c in self.agent_colors],
            "members": list(self.members),
            "assignment": list(self.assignment),
            "moves": [[] if p is None else [cshogi.move16(m.cshogi_move) for m in p.moves]
                      for p in self._positions],
            "started": [p is not None for p in self._positions],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        colors = [Color(int(c)) for c in state["agent_colors"]]
        moves, started = state["moves"], [bool(x) for x in state["started"]]
        members = [int(m) for m in state["members"]]
        if not len(colors) == len(moves) == len(started) == len(members) == self.num_games:
            raise ValueError(f"league env state is for {len(colors)} games, this env has "
                             f"{self.num_games}")
        positions: list[Position | None] = []
        for game, on in zip(moves, started, strict=True):
            if not on:
                positions.append(None)
                continue
            position = Position(self.start_sfen, max_moves=self.max_moves, impasse=self.impasse)
            for m16 in game:
                position.push_usi(cshogi.move_to_usi(int(m16)))
            positions.append(position)
        self.agent_colors, self.members = colors, members
        self.assignment = [int(m) for m in state["assignment"]]
        self._positions = positions
        self._observation = self._observe() if self.started else None


def _observation(positions: Sequence[Position]) -> Observation:
    state = CompactState.concat([p.compact() for p in positions])
    legal = [p.legal_actions() for p in positions]
    offsets = np.zeros(len(positions) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in legal], out=offsets[1:])
    return Observation(state=state, legal_offsets=offsets,
                       legal_actions=np.concatenate(legal).astype(np.int16))
