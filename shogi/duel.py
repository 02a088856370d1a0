"""Games against a fixed opponent, seen from the learning side: `OpponentEnv`.

Each slot plays one game against a scripted player (random or heuristic). The agent's colour
alternates from game to game (and between neighbouring slots), and the opponent's replies are
played inside `step`, so every observation has the agent to move and every step is one agent
move (plus the reply). The observations and results use VecEnv's types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import cshogi
import numpy as np

from shogi.compact import CompactState
from shogi.moves import Color, Move
from shogi.players import HeuristicPlayer, RandomPlayer
from shogi.position import Position
from shogi.rules import Outcome, Termination
from shogi.tactics import MatePlayer
from shogi.usi_engine import INSTALL_HINT, EnginePlayer, EngineSpecError
from shogi.vecenv import FinishedGame, Observation


class Player(Protocol):
    """A scripted player, or an engine (`shogi.usi_engine`) that may end the game instead of
    moving (it crashed, hung, resigned ...): the Outcome then ends that game."""

    def choose(self, position: Position) -> Move | Outcome: ...


class EngineOpponent:
    """An `EnginePlayer` as a one-position duel opponent (its failures end the game)."""

    def __init__(self, spec: str) -> None:
        self.engine = EnginePlayer(spec)
        if not self.engine.spec.available():
            raise EngineSpecError(f"train.opponent {spec!r}: program "
                                  f"{self.engine.spec.command[0]!r} not found (install it "
                                  f"with `{INSTALL_HINT}`)")

    def choose(self, position: Position) -> Move | Outcome:
        return self.engine.choose_one(position)

    def close(self) -> None:
        self.engine.close()


def duel_opponent(spec: str, seed: int) -> Player:
    """`train.opponent` as a player: random, heuristic, mate or a USI engine spec."""
    if spec == "random":
        return RandomPlayer(seed)
    if spec == "heuristic":
        return HeuristicPlayer(seed)
    if spec == "mate":
        return MatePlayer(seed)
    return EngineOpponent(spec)


@dataclass
class DuelStep:
    """One agent move (and the opponent's reply) in every game, from the agent's view."""

    rewards: np.ndarray  # float32 [N]: +1 the agent won, -1 it lost, 0 otherwise
    terminated: np.ndarray  # bool [N]
    truncated: np.ndarray  # bool [N]: the move cap ended the game (a draw, terminal for learning)
    finished: list[FinishedGame]  # outcome.winner is a colour; see agent_colors
    agent_colors: list[Color]  # the agent's colour in each finished game, same order
    final_agent_to_move: np.ndarray  # bool [N]: in a finished game, the agent was to move last


class OpponentEnv:
    """`num_games` games of the agent against `opponent`, reset automatically when they end."""

    def __init__(self, num_games: int, opponent: Player, max_moves: int = 512, *,
                 impasse: bool = False, start_sfen: str | None = None) -> None:
        if num_games < 1:
            raise ValueError(f"num_games must be >= 1, got {num_games!r}")
        self.num_games = num_games
        self.opponent = opponent
        self.max_moves = max_moves
        self.impasse = impasse
        self.start_sfen = start_sfen
        # Slot i starts as Black when i is even; each new game in a slot swaps colours.
        self.agent_colors = [Color(i % 2) for i in range(num_games)]
        self._positions = [self._new_game(i) for i in range(num_games)]
        self._observation = self._observe()

    def _new_game(self, slot: int) -> Position:
        position = Position(self.start_sfen, max_moves=self.max_moves, impasse=self.impasse)
        if position.turn != self.agent_colors[slot]:
            opening = self.opponent.choose(position)  # the opponent opens
            if isinstance(opening, Outcome):
                # An engine that fails on the first move: the agent would win a game it never
                # played; the slot starts with a random opening move instead.
                moves = position.legal_moves()
                opening = moves[len(self.agent_colors) * 7919 % len(moves)]
            position.push(opening)
        return position

    def observe(self) -> Observation:
        return self._observation

    def _observe(self) -> Observation:
        state = CompactState.concat([p.compact() for p in self._positions])
        legal = [p.legal_actions() for p in self._positions]
        offsets = np.zeros(self.num_games + 1, dtype=np.int32)
        np.cumsum([len(row) for row in legal], out=offsets[1:])
        return Observation(state=state, legal_offsets=offsets,
                           legal_actions=np.concatenate(legal).astype(np.int16))

    def step(self, actions: np.ndarray) -> DuelStep:
        """Play the agent's action in every game, then the opponent's reply where it goes on."""
        acts = np.asarray(actions)
        if acts.shape != (self.num_games,):
            raise ValueError(f"expected {self.num_games} actions, got shape {acts.shape}")
        rewards = np.zeros(self.num_games, dtype=np.float32)
        terminated = np.zeros(self.num_games, dtype=bool)
        truncated = np.zeros(self.num_games, dtype=bool)
        final_agent = np.zeros(self.num_games, dtype=bool)
        finished: list[FinishedGame] = []
        colors: list[Color] = []
        for slot, (position, action) in enumerate(zip(self._positions, acts.tolist(),
                                                      strict=True)):
            agent = self.agent_colors[slot]
            position.push_action(int(action))  # IllegalMoveError names the action
            outcome = position.outcome()
            if outcome is None:
                reply = self.opponent.choose(position)
                if isinstance(reply, Outcome):
                    outcome = reply  # an engine resigned or failed: it loses this game
                else:
                    position.push(reply)
                    outcome = position.outcome()
            if outcome is None:
                continue
            if outcome.winner is not None:
                rewards[slot] = 1.0 if outcome.winner == agent else -1.0
            if outcome.reason is Termination.MAX_MOVES:
                truncated[slot] = True
            else:
                terminated[slot] = True
            final_agent[slot] = position.turn == agent
            finished.append(FinishedGame(
                slot=slot, outcome=outcome, plies=position.ply, final_state=position.compact(),
                usi_moves=[str(m) for m in position.moves]))
            colors.append(agent)
            self.agent_colors[slot] = agent.opponent()
            self._positions[slot] = self._new_game(slot)
        self._observation = self._observe()
        return DuelStep(rewards, terminated, truncated, finished, colors, final_agent)

    # ------------------------------------------------------------------ state (checkpoints)
    def get_state(self) -> dict[str, Any]:
        """The running games (their moves) and the agent's colour in each slot."""
        return {
            "agent_colors": [int(c) for c in self.agent_colors],
            "moves": [[cshogi.move16(m.cshogi_move) for m in p.moves] for p in self._positions],
            "opponent_rng": _rng_state(self.opponent),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        colors = [Color(int(c)) for c in state["agent_colors"]]
        moves = state["moves"]
        if len(colors) != self.num_games or len(moves) != self.num_games:
            raise ValueError(f"opponent env state is for {len(colors)} games, this env has "
                             f"{self.num_games}")
        positions = []
        for game in moves:
            position = Position(self.start_sfen, max_moves=self.max_moves, impasse=self.impasse)
            for m16 in game:
                position.push_usi(cshogi.move_to_usi(int(m16)))
            positions.append(position)
        rng = _rng(self.opponent)
        if state.get("opponent_rng") is not None and rng is not None:
            rng.bit_generator.state = dict(state["opponent_rng"])
        self.agent_colors = colors
        self._positions = positions
        self._observation = self._observe()


def _rng(player: Player) -> np.random.Generator | None:
    """The scripted player's numpy generator, when it has one (its state is checkpointed)."""
    rng = getattr(player, "rng", None)
    return rng if isinstance(rng, np.random.Generator) else None


def _rng_state(player: Player) -> dict[str, Any] | None:
    rng = _rng(player)
    return None if rng is None else dict(rng.bit_generator.state)
