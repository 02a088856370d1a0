"""The compact state: what the env emits and the wire carries, from the side to move's view.

Board index `i = row * 9 + col` as the side to move sees the board: row 0 is its far rank, col 0
its left-most file (file 9 for Black). White's view is Black's rotated 180 degrees (`80 - i`).
Board codes: 0 empty, +1..+14 the mover's P L N S G B R K +P +L +N +S +B +R, -1..-14 the
opponent's. Hands: `hands[n, 0]` the mover's, `hands[n, 1]` the opponent's, order P L N S G B R.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

BOARD_SIDE = 9
"""Files = ranks of the board."""
BOARD_SIZE = BOARD_SIDE * BOARD_SIDE
"""81 squares."""
HAND_SIZE = 7
HAND_MAX = (18, 4, 4, 4, 4, 2, 2)  # the most of each hand piece P L N S G B R one side can hold
PIECE_SYMBOLS = ("P", "L", "N", "S", "G", "B", "R", "K", "+P", "+L", "+N", "+S", "+B", "+R")
"""SFEN symbols of board codes 1..14 (`PIECE_SYMBOLS[code - 1]`)."""


MAX_REPETITION = 3
"""Most earlier occurrences of a position a compact state records (the 4th ends the game)."""
PLY_MAX = int(np.iinfo(np.int16).max)
"""Largest ply a compact state holds (int16)."""


@dataclass(frozen=True)
class StateField:
    """One array of the compact state: name, dtype, the shape of one position's entry, and
    the range of its values."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    low: int
    high: int


STATE_LAYOUT: tuple[StateField, ...] = (
    StateField("board", np.dtype(np.int8), (BOARD_SIZE,), -len(PIECE_SYMBOLS), len(PIECE_SYMBOLS)),
    StateField("hands", np.dtype(np.uint8), (2, HAND_SIZE), 0, max(HAND_MAX)),  # and HAND_MAX
    StateField("color", np.dtype(np.uint8), (), 0, 1),
    StateField("ply", np.dtype(np.int16), (), 0, PLY_MAX),
    StateField("repetition", np.dtype(np.uint8), (), 0, MAX_REPETITION),
    StateField("in_check", np.dtype(np.uint8), (), 0, 1),
)
"""The compact state, declared once: `CompactState`, the wire codec (`keisei_ray.codec`), the
learner's buffer and the feature tensors (`learner`) all follow it, in this order."""
STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in STATE_LAYOUT)


def _square_to_index() -> np.ndarray:
    # cshogi square (file-1)*9 + (rank-1) -> Black's-view index (rank-1)*9 + (9-file).
    sq = np.arange(BOARD_SIZE)
    black = (sq % BOARD_SIDE) * BOARD_SIDE + (BOARD_SIDE - 1 - sq // BOARD_SIDE)
    return np.stack([black, BOARD_SIZE - 1 - black]).astype(np.intp)


SQUARE_TO_INDEX = _square_to_index()
"""[2, 81]: cshogi square -> compact board index, for Black (row 0) and White (row 1) to move."""
INDEX_TO_SQUARE = np.argsort(SQUARE_TO_INDEX, axis=1).astype(np.intp)
"""[2, 81]: compact board index -> cshogi square, the inverse of SQUARE_TO_INDEX."""


def _cshogi_piece_to_code() -> np.ndarray:
    # cshogi piece types run P L N S B R G K +P +L +N +S +B +R (1..14); ours put G before B R.
    type_to_code = np.array([0, 1, 2, 3, 4, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14], dtype=np.int8)
    table = np.zeros(32, dtype=np.int8)
    table[0:15] = type_to_code  # Black's pieces are cshogi 1..14
    table[16:31] = -type_to_code  # White's are 17..30
    return table


CSHOGI_PIECE_TO_CODE = _cshogi_piece_to_code()
"""[32]: cshogi piece (colour included) -> board code signed for Black (+ Black, - White)."""

PROMOTE_CODE = np.array([0, 9, 10, 11, 12, 5, 13, 14, 8, 9, 10, 11, 12, 13, 14], dtype=np.int8)
"""[15]: unsigned board code -> the code after promotion (G, K and promoted pieces unchanged)."""
UNPROMOTE_CODE = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 6, 7], dtype=np.int8)
"""[15]: unsigned board code -> the base piece (a captured piece goes to hand as its base)."""


# Material in pawn units, a common rough scale: P 1, L 3, N 4, S 5, G 6, B 8, R 10, and promoted
# pieces a little more than what they promote from. Kings count 0 (they are never captured).
PIECE_VALUE = np.array([0, 1, 3, 4, 5, 6, 8, 10, 0, 7, 6, 6, 6, 10, 12], dtype=np.float32)
"""[15]: unsigned board code -> material value (pawn units)."""
HAND_VALUE = PIECE_VALUE[1:8].copy()
"""[7]: hand piece P L N S G B R -> material value (pawn units)."""
_SIGNED_VALUE = np.concatenate([-PIECE_VALUE[:0:-1], PIECE_VALUE])  # code -14..14 -> value

# Directions (row, col) from the mover's view: row 0 is its far rank, so forward is row - 1.
_ORTHOGONAL = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_GOLD = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, 0))
# Board code -> the squares it attacks one step away (P L N S G B R K +P +L +N +S +B +R).
PIECE_STEPS: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((-1, 0),), 3: ((-2, -1), (-2, 1)), 4: ((-1, -1), (-1, 0), (-1, 1), (1, -1), (1, 1)),
    5: _GOLD, 8: _ORTHOGONAL + _DIAGONAL, 9: _GOLD, 10: _GOLD, 11: _GOLD, 12: _GOLD,
    13: _ORTHOGONAL, 14: _DIAGONAL,
}
# Board code -> the directions it slides in until the first piece.
PIECE_SLIDES: dict[int, tuple[tuple[int, int], ...]] = {
    2: ((-1, 0),), 6: _DIAGONAL, 7: _ORTHOGONAL, 13: _DIAGONAL, 14: _ORTHOGONAL,
}


def material_balance(state: CompactState) -> np.ndarray:
    """float32 [N]: the mover's material minus the opponent's, board and hands, pawn units."""
    board = _SIGNED_VALUE[state.board.astype(np.intp) + 14].sum(axis=1)
    hands = state.hands.astype(np.float32) @ HAND_VALUE
    return (board + hands[:, 0] - hands[:, 1]).astype(np.float32)


@dataclass(eq=False)
class CompactState:
    """A batch of N positions as numpy arrays (leading dimension N), mover's perspective."""

    board: np.ndarray  # int8 [N, 81]
    hands: np.ndarray  # uint8 [N, 2, 7]: mover's hand, then the opponent's
    color: np.ndarray  # uint8 [N]: side to move, 0 Black 1 White
    ply: np.ndarray  # int16 [N]: plies played in the game so far
    repetition: np.ndarray  # uint8 [N]: earlier occurrences of this position (0..3)
    in_check: np.ndarray  # uint8 [N]: the side to move is in check

    @classmethod
    def empty(cls, n: int = 0) -> CompactState:
        """N all-zero rows (an empty board, no hands, Black to move, ply 0)."""
        return cls(**{f.name: np.zeros((n, *f.shape), dtype=f.dtype) for f in STATE_LAYOUT})

    @classmethod
    def concat(cls, states: Sequence[CompactState]) -> CompactState:
        """One batch holding the rows of `states` in order."""
        if not states:
            return cls.empty(0)
        return cls(**{f.name: np.concatenate([getattr(s, f.name) for s in states])
                      for f in fields(cls)})

    def take(self, indices: np.ndarray | Sequence[int]) -> CompactState:
        """The rows at `indices` (a copy)."""
        idx = np.asarray(indices, dtype=np.intp)
        return CompactState(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def __len__(self) -> int:
        return int(self.board.shape[0])

    def equals(self, other: CompactState) -> bool:
        """Whether both batches hold the same rows (same dtypes and values)."""
        return all(getattr(self, f.name).dtype == getattr(other, f.name).dtype
                   and np.array_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in fields(self))


if tuple(f.name for f in fields(CompactState)) != STATE_FIELDS:
    raise TypeError("CompactState's fields must be STATE_LAYOUT's, in its order")


def perspective_board(black_board: np.ndarray, color: np.ndarray) -> np.ndarray:
    """[N, 81] Black's-view signed boards -> the side to move's view (rotate, negate for White)."""
    white = (color != 0)[:, None]
    return np.where(white, -black_board[:, ::-1], black_board).astype(np.int8)


def perspective_hands(hands_by_color: np.ndarray, color: np.ndarray) -> np.ndarray:
    """[N, 2, 7] hands indexed by colour -> [mover's hand, opponent's hand]."""
    c = color.astype(np.intp)
    rows = np.arange(len(c))
    return np.stack([hands_by_color[rows, c], hands_by_color[rows, 1 - c]], axis=1)
