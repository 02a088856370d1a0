"""A scripted player a little stronger than the heuristic: cshogi's mate search plus safety.

`MatePlayer`: a mate in one, else a mate in three (cshogi's `Board.mate_move(3)`, checked
against our legal moves), else the heuristic's choice (most valuable capture, else a
promotion, else any move) among the moves that do not let the opponent mate in one at once;
ties are broken at random. It is the gauntlet's rung between `heuristic` and the engines.

`forced_mate`: a mate within N plies by cshogi's mate search, each line checked move by move
against the game's own rules (a checking line that repeats into sennichite or perpetual check
is no mate): what a searching player plays before it searches.
"""

from __future__ import annotations

import cshogi
import numpy as np

from shogi.moves import Move
from shogi.players import _legal_or_raise, most_valuable_captures
from shogi.position import Position


class MatePlayer:
    """Mate in 1 or 3 when there is one; otherwise a heuristic move that does not allow a
    mate in one."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, position: Position) -> Move:
        moves = _legal_or_raise(position)
        mate = position.mate_in_one()
        if mate is not None:
            return mate
        board = cshogi.Board(position.sfen())
        if not board.is_check():
            found = int(board.mate_move(3))
            by16 = {m.move16: m for m in moves}
            if found and cshogi.move16(found) in by16:
                return by16[cshogi.move16(found)]
        safe = [m for m in moves if not _allows_mate(board, m.cshogi_move)] or moves
        best = most_valuable_captures(position, safe)
        if not best:
            best = [m for m in safe if m.promotion] or safe
        return best[int(self.rng.integers(len(best)))]


def _allows_mate(board: cshogi.Board, move: int) -> bool:
    """Whether the opponent has a mate in one after `move` (cshogi's 1-ply search; when the
    move gives check the opponent is in check and the search does not apply)."""
    board.push(move)
    try:
        return not board.is_check() and int(board.mate_move_in_1ply()) != 0
    finally:
        board.pop()


def winning_mate_in_one(position: Position) -> Move | None:
    """A move that ends the game at once as a win for the side to move, by the game's rules."""
    move = position.mate_in_one()
    if move is None:
        return None
    mover = position.turn
    position.push(move)
    try:
        outcome = position.outcome()
        return move if outcome is not None and outcome.winner == mover else None
    finally:
        position.pop()


def forced_mate(position: Position, plies: int) -> Move | None:
    """The first move of a forced mate within `plies` plies (odd), or None.

    cshogi finds the line (`Board.mate_move`, a mate search for the side to move out of check);
    here every reply is then played on `position` (restored before returning) and the mate
    checked again by the game's rules, so the answer holds for this game's history too.
    """
    if plies < 1 or position.outcome() is not None:
        return None
    quick = winning_mate_in_one(position)
    if quick is not None or plies < 3 or position.is_check():
        return quick
    found = int(cshogi.Board(position.sfen()).mate_move(plies))
    if not found:
        return None
    by16 = {m.move16: m for m in position.legal_moves()}
    move = by16.get(cshogi.move16(found))
    if move is None:
        return None
    mover = position.turn
    position.push(move)
    try:
        outcome = position.outcome()
        if outcome is not None:
            return move if outcome.winner == mover else None
        for reply in position.legal_moves():
            position.push(reply)
            try:
                outcome = position.outcome()
                if outcome is not None or forced_mate(position, plies - 2) is None:
                    return None
            finally:
                position.pop()
        return move
    finally:
        position.pop()
