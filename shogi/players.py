"""Simple opponents for evaluation: uniform random, a one-ply heuristic, and mixtures of the
two (the gauntlet's bridge between random and everything else)."""

from __future__ import annotations

import numpy as np

from shogi.compact import PIECE_SYMBOLS, PIECE_VALUE
from shogi.errors import GameOverError
from shogi.moves import Move
from shogi.position import Position

# Material values by SFEN symbol (upper case) of the pieces a move can capture.
PIECE_VALUES = dict(zip(PIECE_SYMBOLS, PIECE_VALUE[1:].tolist(), strict=True))


def _legal_or_raise(position: Position) -> list[Move]:
    moves = position.legal_moves()
    if not moves:
        outcome = position.outcome()
        reason = outcome.reason.value if outcome is not None else "unknown"
        raise GameOverError(f"no move to choose in {position.sfen()!r}: the game is over "
                            f"({reason})")
    return moves


class RandomPlayer:
    """Plays a uniformly random legal move."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, position: Position) -> Move:
        moves = _legal_or_raise(position)
        return moves[int(self.rng.integers(len(moves)))]


def most_valuable_captures(position: Position, moves: list[Move]) -> list[Move]:
    """Those of `moves` (the position's legal moves) that capture the most valuable piece the
    side to move can take, in order (empty without a capture): the heuristic player's choice
    when it has no mate."""
    best_value = 0
    best: list[Move] = []
    for move in moves:
        target = position.piece_at(move.to_square)
        if target is None or move.is_drop:
            continue
        value = PIECE_VALUES[target.upper()]
        if value > best_value:
            best_value, best = value, [move]
        elif value == best_value:
            best.append(move)
    return best


class HeuristicPlayer:
    """Mate in one when cshogi finds it, else the most valuable capture, else a promotion,
    else a random move (ties broken at random)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, position: Position) -> Move:
        moves = _legal_or_raise(position)
        mate = position.mate_in_one()
        if mate is not None:
            return mate
        best = most_valuable_captures(position, moves)
        if not best:
            best = [move for move in moves if move.promotion] or moves
        return best[int(self.rng.integers(len(best)))]


class MixedPlayer:
    """The heuristic's move with probability `share`, else a uniformly random move.

    Everything better than random beats it nearly every time (random never mates on
    purpose), so `random` alone cannot anchor a rating scale; mixtures at rising shares give
    the gauntlet rungs whose neighbours each score between about 10% and 90% against them.
    """

    def __init__(self, share: float, seed: int = 0) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {share!r}")
        self.share = share
        self.rng = np.random.default_rng(seed)
        self.heuristic = HeuristicPlayer(int(self.rng.integers(2**31)))

    def choose(self, position: Position) -> Move:
        if self.rng.random() < self.share:
            return self.heuristic.choose(position)
        moves = _legal_or_raise(position)
        return moves[int(self.rng.integers(len(moves)))]
