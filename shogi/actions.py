"""The 13527-action map, from the side to move's perspective.

Board moves: `from * 160 + 2 * k + promote` with `k = to - (to > from)` (81 x 80 x 2 = 12960);
drops: `12960 + to * 7 + piece` (piece order P L N S G B R). `from`/`to` are compact board
indices (see `shogi.compact`), so White's actions are Black's board rotated 180 degrees.
Conversions go through two precomputed tables, so a whole batch converts in one gather.
"""

from __future__ import annotations

import numpy as np

from shogi.compact import BOARD_SIZE, HAND_SIZE, INDEX_TO_SQUARE
from shogi.errors import IllegalMoveError
from shogi.moves import HAND_TO_CSHOGI_TYPE, MOVE16_MASK, Color, Move

NUM_BOARD_ACTIONS = BOARD_SIZE * (BOARD_SIZE - 1) * 2
NUM_ACTIONS = NUM_BOARD_ACTIONS + BOARD_SIZE * HAND_SIZE
"""13527: the size of the policy head."""


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    action_to_move16 = np.zeros((2, NUM_ACTIONS), dtype=np.int32)
    frm, rest = np.divmod(np.arange(NUM_BOARD_ACTIONS), 2 * (BOARD_SIZE - 1))
    k, promote = np.divmod(rest, 2)
    to = k + (k >= frm)
    drop = np.arange(NUM_ACTIONS - NUM_BOARD_ACTIONS)
    drop_to, drop_piece = np.divmod(drop, HAND_SIZE)
    drop_from_field = BOARD_SIZE - 1 + np.asarray(HAND_TO_CSHOGI_TYPE)[drop_piece]
    for color in (0, 1):
        sq = INDEX_TO_SQUARE[color]
        action_to_move16[color, :NUM_BOARD_ACTIONS] = sq[to] | sq[frm] << 7 | promote << 14
        action_to_move16[color, NUM_BOARD_ACTIONS:] = sq[drop_to] | drop_from_field << 7
    move16_to_action = np.full((2, MOVE16_MASK + 1), -1, dtype=np.int16)
    for color in (0, 1):
        move16_to_action[color, action_to_move16[color]] = np.arange(NUM_ACTIONS)
    return action_to_move16, move16_to_action


ACTION_TO_MOVE16, MOVE16_TO_ACTION = _build_tables()
"""[2, 13527] action -> cshogi move16, and [2, 32768] move16 -> action (-1: no such move)."""


def move_to_action(move: Move, color: Color | int) -> int:
    """The action index of `move` played by `color`."""
    return int(MOVE16_TO_ACTION[_color(color), move.move16])


def action_to_move(action: int, color: Color | int) -> Move:
    """The move of `action` for `color` (squares and promotion only: check legality separately)."""
    index = int(action)
    if not 0 <= index < NUM_ACTIONS:
        raise IllegalMoveError(f"action {action!r} is out of range 0..{NUM_ACTIONS - 1}")
    return Move(int(ACTION_TO_MOVE16[_color(color), index]))


def moves_to_actions(move_ints: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Vectorised: cshogi move ints and the colours that play them -> int16 actions."""
    moves = np.asarray(move_ints)
    actions = MOVE16_TO_ACTION[np.asarray(colors, dtype=np.intp), moves & MOVE16_MASK]
    if actions.size and actions.min() < 0:
        bad = moves.ravel()[np.flatnonzero(actions.ravel() < 0)[0]]
        raise IllegalMoveError(f"{int(bad)!r} does not encode a shogi move")
    return actions


def actions_to_moves(actions: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Vectorised: actions and the colours that play them -> int32 cshogi move16 ints."""
    acts = np.asarray(actions)
    if acts.size and (acts.min() < 0 or acts.max() >= NUM_ACTIONS):
        bad = acts.ravel()[np.flatnonzero((acts.ravel() < 0) | (acts.ravel() >= NUM_ACTIONS))[0]]
        raise IllegalMoveError(f"action {int(bad)!r} is out of range 0..{NUM_ACTIONS - 1}")
    return ACTION_TO_MOVE16[np.asarray(colors, dtype=np.intp), acts]


def _color(color: Color | int) -> int:
    if color not in (0, 1):
        raise ValueError(f"colour must be 0 (black) or 1 (white), got {color!r}")
    return int(color)
