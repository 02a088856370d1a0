"""Colours, squares and the `Move` value object (a thin wrapper of cshogi's move integer).

Squares use cshogi's numbering: `square = (file - 1) * 9 + (rank - 1)`, so 0 is "1a" and 80 is
"9i". A cshogi move int packs `to | from << 7 | promote << 14` in its low 15 bits ("move16");
a drop stores `80 + piece type` (cshogi's order P L N S B R G) in the `from` field. Higher bits
carry the moved and captured piece types, known only when the move came from a position.
"""

from __future__ import annotations

import re
from enum import IntEnum

from shogi.compact import BOARD_SIDE, BOARD_SIZE
from shogi.errors import IllegalMoveError


class Color(IntEnum):
    """The side to move. Black (sente) moves first."""

    BLACK = 0
    WHITE = 1

    def opponent(self) -> Color:
        return Color(1 - self)


HAND_PIECE_SYMBOLS = "PLNSGBR"
"""Hand piece letters in hand order (also the order of `CompactState.hands` and drop actions)."""

# cshogi's piece types for the hand order above (cshogi orders P L N S B R G).
HAND_TO_CSHOGI_TYPE = (1, 2, 3, 4, 7, 5, 6)
CSHOGI_TYPE_TO_HAND = {t: h for h, t in enumerate(HAND_TO_CSHOGI_TYPE)}

MOVE16_MASK = 0x7FFF
_PROMOTION_BIT = 1 << 14
_DROP_BASE = BOARD_SIZE - 1  # drop `from` field = 80 + cshogi piece type

_USI_BOARD_MOVE = re.compile(r"([1-9])([a-i])([1-9])([a-i])(\+?)")
_USI_DROP = re.compile(r"([PLNSGBR])\*([1-9])([a-i])")


def square(file: int, rank: int) -> int:
    """The square of `file` 1..9 and `rank` 1..9 (rank 1 = "a")."""
    if not (1 <= file <= BOARD_SIDE and 1 <= rank <= BOARD_SIDE):
        raise ValueError(f"no square at file {file!r}, rank {rank!r} (both must be 1..9)")
    return (file - 1) * BOARD_SIDE + (rank - 1)


def square_name(sq: int) -> str:
    """USI name of a square: 0 -> "1a", 80 -> "9i"."""
    return f"{sq // BOARD_SIDE + 1}{chr(ord('a') + sq % BOARD_SIDE)}"


def is_valid_move16(move16: int) -> bool:
    """Whether the low 15 bits encode a well-formed board move or drop (legality aside)."""
    to_sq = move16 & 0x7F
    from_field = (move16 >> 7) & 0x7F
    if to_sq >= BOARD_SIZE or from_field > _DROP_BASE + 7:
        return False
    if from_field > _DROP_BASE:  # a drop never promotes
        return not move16 & _PROMOTION_BIT
    return from_field != to_sq and from_field < BOARD_SIZE


class Move:
    """One move. Equal moves have the same squares, drop piece and promotion flag.

    `Move(int)` wraps a cshogi move int; `Move.from_usi("7g7f")` checks only the syntax.
    """

    __slots__ = ("_move",)

    def __init__(self, move: int) -> None:
        move = int(move)
        if move < 0 or not is_valid_move16(move & MOVE16_MASK):
            raise IllegalMoveError(f"{move!r} does not encode a shogi move")
        self._move = move

    @classmethod
    def from_usi(cls, usi: str) -> Move:
        """Parse a USI move (`7g7f`, `8h2b+`, `P*5e`); raises IllegalMoveError if malformed."""
        if not isinstance(usi, str):
            raise IllegalMoveError(f"a USI move must be a string, got {usi!r}")
        m = _USI_BOARD_MOVE.fullmatch(usi)
        if m:
            from_sq = square(int(m[1]), ord(m[2]) - ord("a") + 1)
            to_sq = square(int(m[3]), ord(m[4]) - ord("a") + 1)
            if from_sq == to_sq:
                raise IllegalMoveError(f"malformed USI move {usi!r}: from and to are the same")
            return cls(to_sq | from_sq << 7 | (_PROMOTION_BIT if m[5] else 0))
        m = _USI_DROP.fullmatch(usi)
        if m:
            to_sq = square(int(m[2]), ord(m[3]) - ord("a") + 1)
            piece_type = HAND_TO_CSHOGI_TYPE[HAND_PIECE_SYMBOLS.index(m[1])]
            return cls(to_sq | (_DROP_BASE + piece_type) << 7)
        raise IllegalMoveError(
            f"malformed USI move {usi!r} (expected e.g. '7g7f', '8h2b+', 'P*5e')")

    @property
    def cshogi_move(self) -> int:
        """The wrapped cshogi move int (with piece-type bits when it came from a position)."""
        return self._move

    @property
    def move16(self) -> int:
        """The squares, drop piece and promotion flag (the low 15 bits of the cshogi move)."""
        return self._move & MOVE16_MASK

    @property
    def to_square(self) -> int:
        return self._move & 0x7F

    @property
    def from_square(self) -> int | None:
        """The origin square, or None for a drop."""
        from_field = (self._move >> 7) & 0x7F
        return None if from_field > _DROP_BASE else from_field

    @property
    def drop_piece(self) -> str | None:
        """The dropped piece letter (one of "PLNSGBR"), or None for a board move."""
        from_field = (self._move >> 7) & 0x7F
        if from_field <= _DROP_BASE:
            return None
        return HAND_PIECE_SYMBOLS[CSHOGI_TYPE_TO_HAND[from_field - _DROP_BASE]]

    @property
    def promotion(self) -> bool:
        return bool(self._move & _PROMOTION_BIT)

    @property
    def is_drop(self) -> bool:
        return ((self._move >> 7) & 0x7F) > _DROP_BASE

    def usi(self) -> str:
        drop = self.drop_piece
        if drop is not None:
            return f"{drop}*{square_name(self.to_square)}"
        from_sq = (self._move >> 7) & 0x7F
        return f"{square_name(from_sq)}{square_name(self.to_square)}{'+' if self.promotion else ''}"

    def __str__(self) -> str:
        return self.usi()

    def __repr__(self) -> str:
        return f"Move.from_usi({self.usi()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Move):
            return NotImplemented
        return self.move16 == other.move16

    def __hash__(self) -> int:
        return self.move16
