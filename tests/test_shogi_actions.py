"""The 13527-action map: a bijection between legal moves and action indices, both colours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shogi import (
    NUM_ACTIONS,
    Color,
    IllegalMoveError,
    Move,
    Position,
    action_to_move,
    actions_to_moves,
    move_to_action,
    moves_to_actions,
)
from shogi.actions import ACTION_TO_MOVE16, MOVE16_TO_ACTION


def test_action_count_matches_design() -> None:
    assert NUM_ACTIONS == 81 * 80 * 2 + 81 * 7 == 13527


@pytest.mark.parametrize("color", [0, 1])
def test_tables_are_inverse_bijections(color: int) -> None:
    move16 = ACTION_TO_MOVE16[color]
    assert len(np.unique(move16)) == NUM_ACTIONS
    assert np.array_equal(MOVE16_TO_ACTION[color, move16], np.arange(NUM_ACTIONS))
    assert (MOVE16_TO_ACTION[color] >= 0).sum() == NUM_ACTIONS


def test_documented_indices() -> None:
    # Black 7g7f: from 7g = row 6, col 2 -> 56; to 7f = row 5, col 2 -> 47 (k = 47 < 56).
    assert move_to_action(Move.from_usi("7g7f"), Color.BLACK) == 56 * 160 + 2 * 47
    # White's view is rotated: White 3c3d is Black's 7g7f seen from the other side.
    assert move_to_action(Move.from_usi("3c3d"), Color.WHITE) == 56 * 160 + 2 * 47
    # k skips `from` itself: Black 8h2b+ from 8h (row 7, col 1 = 64) to 2b (row 1, col 7 = 16).
    assert move_to_action(Move.from_usi("8h2b+"), Color.BLACK) == 64 * 160 + 2 * 16 + 1
    # to > from: Black 1a1b from index 8 to index 17 -> k = 16.
    assert move_to_action(Move.from_usi("1a1b"), Color.BLACK) == 8 * 160 + 2 * 16
    # Drops: 12960 + to * 7 + piece (P L N S G B R); 5e is index 40 for both colours.
    assert move_to_action(Move.from_usi("P*5e"), Color.BLACK) == 12960 + 40 * 7 + 0
    assert move_to_action(Move.from_usi("G*5e"), Color.WHITE) == 12960 + 40 * 7 + 4
    assert move_to_action(Move.from_usi("R*1a"), Color.BLACK) == 12960 + 8 * 7 + 6
    assert move_to_action(Move.from_usi("R*1a"), Color.WHITE) == 12960 + 72 * 7 + 6


def test_bad_actions_and_colours_raise() -> None:
    with pytest.raises(IllegalMoveError, match="13527"):
        action_to_move(13527, Color.BLACK)
    with pytest.raises(IllegalMoveError, match="-1"):
        actions_to_moves(np.array([5, -1]), np.array([0, 0]))
    with pytest.raises(ValueError, match="colour"):
        move_to_action(Move.from_usi("7g7f"), 2)
    with pytest.raises(IllegalMoveError, match="does not encode"):
        moves_to_actions(np.array([0x7F]), np.array([0]))


def _check_position(position: Position) -> None:
    moves = position.legal_moves()
    color = position.turn
    actions = [move_to_action(m, color) for m in moves]
    assert len(set(actions)) == len(moves)
    assert all(0 <= a < NUM_ACTIONS for a in actions)
    assert [action_to_move(a, color) for a in actions] == moves
    ints = np.array([m.cshogi_move for m in moves], dtype=np.int64)
    vectorised = moves_to_actions(ints, np.full(len(moves), int(color)))
    assert vectorised.tolist() == actions
    back = actions_to_moves(vectorised, np.full(len(moves), int(color)))
    assert back.tolist() == [m.move16 for m in moves]
    assert position.legal_actions().tolist() == sorted(actions)
    # The action's squares agree with the compact board, which has the same perspective.
    state = position.compact()
    board, own_hand = state.board[0], state.hands[0, 0]
    for action in actions:
        if action >= 12960:
            to, piece = divmod(action - 12960, 7)
            assert own_hand[piece] > 0 and board[to] == 0
        else:
            frm, rest = divmod(action, 160)
            k = rest // 2
            to = k + (k >= frm)
            assert board[frm] > 0 and board[to] <= 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), plies=st.integers(0, 160))
def test_every_legal_move_maps_to_a_unique_action_and_back(seed: int, plies: int) -> None:
    rng = np.random.default_rng(seed)
    position = Position()
    for _ in range(plies):
        if position.is_game_over():
            break
        if position.ply % 3 == 0:  # every third ply: both colours, all phases of the game
            _check_position(position)
        moves = position.legal_moves()
        position.push(moves[int(rng.integers(len(moves)))])
    if not position.is_game_over():
        _check_position(position)
