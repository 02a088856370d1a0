"""How a game ends: the rule semantics pinned by DESIGN.md, shared by Position and VecEnv."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from shogi.moves import Color

SENNICHITE_REPETITIONS = 3
"""Earlier occurrences of a position that end the game (the 4th occurrence is sennichite)."""


class Termination(str, Enum):
    """Why a game ended."""

    CHECKMATE = "checkmate"
    NO_LEGAL_MOVES = "no_legal_moves"
    SENNICHITE = "sennichite"
    PERPETUAL_CHECK = "perpetual_check"
    IMPASSE = "impasse"
    MAX_MOVES = "max_moves"
    # Ends that only an external engine brings (see shogi.usi_engine): the side to move lost.
    RESIGN = "resign"
    ENGINE_CRASH = "engine_crash"
    ENGINE_TIMEOUT = "engine_timeout"
    ILLEGAL_MOVE = "illegal_move"
    # An answer that is no move at all (`04_07_`, an empty bestmove): a broken protocol, not a
    # choice (Fairy-Stockfish 11.1 garbles moves past move 256 before it crashes). Appended
    # last: the codec stores a termination as its index in this enum.
    MALFORMED_MOVE = "malformed_move"


@dataclass(frozen=True)
class Outcome:
    """The result of a finished game: `winner` None is a draw."""

    winner: Color | None
    reason: Termination

    def result(self) -> str:
        """"1-0", "0-1" or "1/2-1/2" (Black's score first)."""
        if self.winner is None:
            return "1/2-1/2"
        return "1-0" if self.winner == Color.BLACK else "0-1"


def judge(
    turn: Color,
    num_legal_moves: int,
    in_check: bool,
    repetition: int,
    hashes: Sequence[int],
    checks: Sequence[bool],
    impasse_win: bool,
    ply: int,
    max_moves: int | None,
) -> Outcome | None:
    """The outcome of the position reached after `ply` plies, or None while the game goes on.

    `hashes[k]`/`checks[k]` are the position key and in-check flag after k plies (k = 0 is the
    start of the game); `repetition` counts earlier occurrences of the current position;
    `impasse_win` says the side to move meets the enabled declaration rule. Order: the 4th
    occurrence ends the game at once; a side that may declare impasse does so instead of moving;
    no legal move loses; the move cap applies only when nothing else decided the game.
    """
    if repetition >= SENNICHITE_REPETITIONS:
        return repetition_outcome(turn, hashes, checks)
    if impasse_win:
        return Outcome(turn, Termination.IMPASSE)
    if num_legal_moves == 0:
        reason = Termination.CHECKMATE if in_check else Termination.NO_LEGAL_MOVES
        return Outcome(turn.opponent(), reason)
    if max_moves is not None and ply >= max_moves:
        return Outcome(None, Termination.MAX_MOVES)
    return None


def repetition_outcome(turn: Color, hashes: Sequence[int], checks: Sequence[bool]) -> Outcome:
    """Sennichite at the current (last) position: a draw, unless exactly one side gave check
    with every one of its moves since the position first occurred; that side loses."""
    last = len(hashes) - 1
    first = hashes.index(hashes[last])
    if first == last:
        raise ValueError("the current position has not occurred before: no sennichite")
    # checks[k] is True when move k (leading to position k) gave check. Move `last` was made by
    # the side not to move now, and the sides alternate going back to move first + 1.
    by_previous_mover = checks[last:first:-2]
    by_side_to_move = checks[last - 1:first:-2]
    previous_mover_checked = bool(by_previous_mover) and all(by_previous_mover)
    side_to_move_checked = bool(by_side_to_move) and all(by_side_to_move)
    if previous_mover_checked and not side_to_move_checked:
        return Outcome(turn, Termination.PERPETUAL_CHECK)
    if side_to_move_checked and not previous_mover_checked:
        return Outcome(turn.opponent(), Termination.PERPETUAL_CHECK)
    return Outcome(None, Termination.SENNICHITE)
