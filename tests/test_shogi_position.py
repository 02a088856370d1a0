"""Position: SFEN in/out, moves in and out, errors that leave the position unchanged, views."""

from __future__ import annotations

import numpy as np
import pytest

from shogi import (
    STARTING_SFEN,
    Color,
    IllegalMoveError,
    InvalidSfenError,
    Move,
    Position,
    move_to_action,
    square,
)

MATSURI = "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w RGgsn5p 1"


# ----------------------------------------------------------------------------- SFEN


@pytest.mark.parametrize("sfen", [
    STARTING_SFEN,
    MATSURI,
    "7lk/9/8S/9/9/9/9/7L1/8K b P 1",
    "4k4/9/9/9/9/9/9/9/4K4 w 2Pr3p 7",
    "4k4/9/9/9/9/9/9/9/4K4 b RBGSNLPrbgsnlp 1",
    "8k/9/9/9/9/9/9/9/K8 b 18P 120",
])
def test_sfen_round_trip(sfen: str) -> None:
    assert Position(sfen).sfen() == sfen
    assert Position.from_sfen(sfen).start_sfen == sfen


def test_sfen_round_trip_through_random_games() -> None:
    rng = np.random.default_rng(7)
    position = Position()
    for _ in range(300):
        if position.is_game_over():
            position = Position()
        sfen = position.sfen()
        again = Position(sfen)
        assert again.sfen() == sfen
        assert again.compact().board.tolist() == position.compact().board.tolist()
        moves = position.legal_moves()
        position.push(moves[int(rng.integers(len(moves)))])


def test_move_number_defaults_to_one() -> None:
    assert Position("4k4/9/9/9/9/9/9/9/4K4 b -").sfen() == "4k4/9/9/9/9/9/9/9/4K4 b - 1"


@pytest.mark.parametrize(("sfen", "problem"), [
    ("", "expected"),
    ("garbage", "expected"),
    ("4k4/9/9/9/9/9/9/4K4 b - 1", "8 ranks"),
    ("4k5/9/9/9/9/9/9/9/4K4 b - 1", "covers 10 files"),
    ("9k/9/9/9/9/9/9/9/4K4 b - 1", "more than 9 files"),
    ("4k3/9/9/9/9/9/9/9/4K4 b - 1", "covers 8 files"),
    ("4k4/9/9/9/4x4/9/9/9/4K4 b - 1", "bad character"),
    ("4k4/9/9/9/4+G4/9/9/9/4K4 b - 1", "cannot be promoted"),
    ("4k4/9/9/9/4+k4/9/9/9/4K4 b - 1", "cannot be promoted"),
    ("9/9/9/9/9/9/9/9/4K4 b - 1", "one king per side"),
    ("4k4/9/9/9/4k4/9/9/9/4K4 b - 1", "one king per side"),
    ("4k4/9/9/9/9/9/9/9/4K4 b 19P 1", "19 pieces of kind 'P'"),
    ("4k4/9/9/9/9/9/9/9/4K4 b R2r 1", "3 pieces of kind 'R'"),
    ("P3k4/9/9/9/9/9/9/9/4K4 b - 1", "can never move"),
    ("4k4/N8/9/9/9/9/9/9/4K4 b - 1", "can never move"),
    ("4k4/9/9/9/9/9/9/9/l3K4 b - 1", "can never move"),
    ("4k4/9/9/9/4P4/9/4P4/9/4K4 b - 1", "two unpromoted black pawns"),
    ("4k4/9/9/9/9/9/9/9/4K4 x - 1", "side to move"),
    ("4k4/9/9/9/9/9/9/9/4K4 b P2 1", "malformed hands"),
    ("4k4/9/9/9/9/9/9/9/4K4 b 0P 1", "malformed hands"),
    ("4k4/9/9/9/9/9/9/9/4K4 b K 1", "malformed hands"),
    ("4k4/9/9/9/9/9/9/9/4K4 b PP 1", "listed twice"),
    ("4k4/9/9/9/9/9/9/9/4K4 b - 0", "move number"),
    ("4k4/9/9/9/9/9/9/9/4K4 b - x", "move number"),
    ("4k4/9/9/9/9/9/9/9/4K4 b - ²", "move number"),
    ("4k4/9/9/9/9/9/9/9/4K4 b - 99999999999", "move number"),
    ("44k/9/9/9/9/9/9/9/4K4 b - 1", "adjacent"),
    ("4k4/4R4/9/9/9/9/9/9/4K4 b - 1", "not to move (white) is in check"),
])
def test_bad_sfen_raises_with_the_input_quoted(sfen: str, problem: str) -> None:
    with pytest.raises(InvalidSfenError) as info:
        Position(sfen)
    message = str(info.value)
    assert repr(sfen) in message and problem in message
    assert "\n" not in message


def test_non_string_sfen_raises() -> None:
    with pytest.raises(InvalidSfenError, match="must be a string"):
        Position(42)  # type: ignore[arg-type]


def test_bad_max_moves_raises() -> None:
    with pytest.raises(ValueError, match="max_moves"):
        Position(max_moves=0)


# ----------------------------------------------------------------------------- moves


def test_push_pop_and_history() -> None:
    position = Position()
    assert position.ply == 0
    first = position.push_usi("7g7f")
    assert str(first) == "7g7f"
    assert position.turn is Color.WHITE
    position.push_usi("3c3d")
    position.push(Move.from_usi("8h2b+"))
    assert [str(m) for m in position.moves] == ["7g7f", "3c3d", "8h2b+"]
    assert position.ply == 3
    assert position.sfen() == "lnsgkgsnl/1r5+B1/pppppp1pp/6p2/9/2P6/PP1PPPPPP/7R1/LNSGKGSNL w B 4"
    assert str(position.pop()) == "8h2b+"
    assert position.ply == 2 and position.sfen().endswith("b - 3")
    position.pop()
    position.pop()
    assert position.sfen() == STARTING_SFEN
    with pytest.raises(IndexError, match="no moves"):
        position.pop()


@pytest.mark.parametrize("usi", ["", "7g7", "7g7g", "P*5e+", "K*5e", "0a1b", "7j7f", "+7g7f",
                                 "7g7f++", "7G7F", "p*5e"])
def test_malformed_usi_raises_and_leaves_the_position_unchanged(usi: str) -> None:
    position = Position()
    with pytest.raises(IllegalMoveError) as info:
        position.push_usi(usi)
    assert repr(usi) in str(info.value)
    assert position.sfen() == STARTING_SFEN and position.ply == 0


@pytest.mark.parametrize("usi", ["7g7e", "P*5e", "5i5g", "8h2b+", "2h3h+"])
def test_illegal_usi_raises_and_leaves_the_position_unchanged(usi: str) -> None:
    position = Position()
    position.push_usi("2g2f")
    before = position.sfen()
    with pytest.raises(IllegalMoveError) as info:
        position.push_usi(usi)
    message = str(info.value)
    assert repr(usi) in message and before in message
    assert position.sfen() == before and position.ply == 1


def test_push_rejects_non_moves() -> None:
    with pytest.raises(TypeError, match="Move"):
        Position().push("7g7f")  # type: ignore[arg-type]


def test_push_action() -> None:
    position = Position()
    action = move_to_action(Move.from_usi("7g7f"), Color.BLACK)
    assert str(position.push_action(action)) == "7g7f"
    # White's 3c3d is the same action seen from White's side.
    assert str(position.push_action(action)) == "3c3d"
    with pytest.raises(IllegalMoveError, match="action 0"):
        position.push_action(0)
    with pytest.raises(IllegalMoveError, match="out of range"):
        position.push_action(20000)
    assert position.ply == 2


def test_copy_is_independent() -> None:
    position = Position()
    position.push_usi("7g7f")
    clone = position.copy()
    clone.push_usi("3c3d")
    assert position.ply == 1 and clone.ply == 2
    assert clone.moves[0] == position.moves[0]
    assert position.sfen() != clone.sfen()
    clone.pop()
    assert clone.sfen() == position.sfen()
    clone.pop()  # a move played before the copy: the undo history came along
    assert clone.sfen() == STARTING_SFEN and position.ply == 1


def test_move_value_object() -> None:
    move = Move.from_usi("8h2b+")
    assert move.from_square == square(8, 8) and move.to_square == square(2, 2)
    assert move.promotion and not move.is_drop and move.drop_piece is None
    drop = Move.from_usi("P*5e")
    assert drop.is_drop and drop.drop_piece == "P" and drop.from_square is None
    assert drop.to_square == square(5, 5) and not drop.promotion
    assert Move.from_usi("7g7f") == Move.from_usi("7g7f") != Move.from_usi("7g7f+")
    assert len({Move.from_usi("7g7f"), Move.from_usi("7g7f")}) == 1
    assert repr(drop) == "Move.from_usi('P*5e')"
    legal = {str(m): m for m in Position().legal_moves()}
    assert legal["7g7f"] == Move.from_usi("7g7f")
    with pytest.raises(IllegalMoveError, match="does not encode"):
        Move(0x7F)


def test_piece_at() -> None:
    position = Position()
    assert position.piece_at(square(5, 9)) == "K"
    assert position.piece_at(square(2, 2)) == "b"
    assert position.piece_at(square(5, 5)) is None
    position.push_usi("7g7f")
    position.push_usi("3c3d")
    position.push_usi("8h2b+")
    assert position.piece_at(square(2, 2)) == "+B"
    with pytest.raises(ValueError, match="81"):
        position.piece_at(81)


# ----------------------------------------------------------------------------- compact


def test_compact_start_position_from_blacks_view() -> None:
    state = Position().compact()
    board = state.board[0].reshape(9, 9)
    assert board[0].tolist() == [-2, -3, -4, -5, -8, -5, -4, -3, -2]  # White's back rank
    assert board[1].tolist() == [0, -7, 0, 0, 0, 0, 0, -6, 0]  # rook 8b, bishop 2b
    assert board[7].tolist() == [0, 6, 0, 0, 0, 0, 0, 7, 0]  # bishop 8h, rook 2h
    assert board[8].tolist() == [2, 3, 4, 5, 8, 5, 4, 3, 2]
    assert state.color.tolist() == [0] and state.ply.tolist() == [0]
    assert state.hands.shape == (1, 2, 7) and not state.hands.any()
    assert state.board.dtype == np.int8 and state.hands.dtype == np.uint8
    assert state.ply.dtype == np.int16 and state.in_check.dtype == np.uint8


def test_compact_is_rotated_and_negated_for_white() -> None:
    position = Position()
    position.push_usi("7g7f")
    state = position.compact()
    assert state.color.tolist() == [1] and state.ply.tolist() == [1]
    board = state.board[0]
    # Black's pawn on 7f: index 47 from Black's side, 80 - 47 from White's, an opponent piece.
    assert board[80 - 47] == -1
    # White's own king (5a) is on White's near rank, middle file.
    assert board[8 * 9 + 4] == 8
    # Black's bishop on 8h is at White's row 1, col 7 (file 2 from Black's side, mirrored).
    assert board[1 * 9 + 7] == -6


def test_compact_hands_are_mover_first() -> None:
    state = Position("4k4/9/9/9/9/9/9/9/4K4 w 2Pr3p 7").compact()
    # White to move: White's hand (r, 3p) first, then Black's (2P).
    assert state.hands[0].tolist() == [[3, 0, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 0, 0]]


def test_compact_flags() -> None:
    position = Position("4k4/9/9/9/4R4/9/9/9/K8 w - 1")
    assert position.compact().in_check.tolist() == [1]
    for usi in ["5a4a", "5e4e", "4a5a", "4e5e"]:
        position.push_usi(usi)
    state = position.compact()
    assert state.repetition.tolist() == [1] and state.ply.tolist() == [4]
