"""Named rule cases: each builds a position where one rule of DESIGN.md decides the answer."""

from __future__ import annotations

import cshogi
import pytest

from shogi import (
    Color,
    GameOverError,
    IllegalMoveError,
    Move,
    Outcome,
    Position,
    Termination,
    move_to_action,
)


def legal_usi(position: Position) -> set[str]:
    return {str(m) for m in position.legal_moves()}


def play(position: Position, usi_moves: str) -> None:
    for usi in usi_moves.split():
        position.push_usi(usi)


def test_pawn_drop_mate_is_illegal() -> None:
    # P*1b would mate the king on 1a (2b is covered by the lance on 2h): uchifuzume.
    position = Position("7lk/9/8S/9/9/9/9/7L1/8K b P 1")
    assert "P*1b" not in legal_usi(position)
    with pytest.raises(IllegalMoveError, match="P\\*1b"):
        position.push_usi("P*1b")
    assert position.ply == 0


def test_pawn_drop_check_that_is_not_mate_is_legal() -> None:
    # The king can take the unprotected pawn, so the checking drop is allowed.
    position = Position("8k/9/9/9/9/9/9/9/K8 b P 1")
    assert "P*1b" in legal_usi(position)
    position.push_usi("P*1b")
    assert position.is_check() and not position.is_checkmate()
    assert "1a1b" in legal_usi(position)


def test_nifu_two_unpromoted_pawns_on_a_file_is_illegal() -> None:
    position = Position("4k4/9/9/9/9/9/4P4/9/4K4 b P 1")
    moves = legal_usi(position)
    assert "P*5e" not in moves
    assert "P*4e" in moves
    # A promoted pawn does not count.
    assert "P*5e" in legal_usi(Position("4k4/9/9/9/9/9/4+P4/9/4K4 b P 1"))


def test_dead_drops_are_illegal() -> None:
    position = Position("4k4/9/9/9/9/9/9/9/4K4 b PLN 1")
    moves = legal_usi(position)
    assert {"P*1a", "L*1a", "N*1a", "N*1b"}.isdisjoint(moves)
    assert {"P*1b", "L*1b", "N*1c"} <= moves
    # White's last ranks are Black's first.
    white = legal_usi(Position("4k4/9/9/9/9/9/9/9/4K4 w pln 1"))
    assert {"P*1i", "L*1i", "N*1i", "N*1h"}.isdisjoint(white)
    assert {"P*1h", "L*1h", "N*1g"} <= white


def test_forced_promotion() -> None:
    # A pawn reaching the last rank and a knight reaching the last two must promote.
    position = Position("4k4/P8/9/7N1/9/9/9/9/4K4 b - 1")
    moves = legal_usi(position)
    assert "9b9a+" in moves and "9b9a" not in moves
    assert {"2d1b+", "2d3b+"} <= moves and not {"2d1b", "2d3b"} & moves


def test_optional_promotion_generates_both_moves() -> None:
    # Entering the zone with a silver, a pawn, a rook or a bishop: both choices are legal.
    position = Position("4k4/9/9/P6S1/9/9/9/1B6R/4K4 b - 1")
    moves = legal_usi(position)
    for usi in ("2d2c", "9d9c", "1h1c", "8h3c"):
        assert usi in moves and usi + "+" in moves
    # A move wholly outside the zone never promotes.
    assert "1h1e+" not in moves and "1h1e" in moves


def test_pinned_piece_may_only_move_along_the_pin() -> None:
    position = Position("4k4/9/9/9/4r4/9/9/4G4/4K4 b - 1")
    moves = legal_usi(position)
    assert {"5h4h", "5h6h", "5h4g", "5h6g"}.isdisjoint(moves)
    assert "5h5g" in moves


def test_king_may_not_move_into_check() -> None:
    position = Position("4k4/9/9/9/9/9/9/3r5/4K4 b - 1")  # rook on 6h covers the 6-file
    moves = legal_usi(position)
    assert "5i6i" not in moves and "5i5h" not in moves and "5i4i" in moves


def test_checkmate_is_a_loss_for_the_side_to_move() -> None:
    position = Position("4k4/9/4P4/9/9/9/9/9/4K4 b G 1")
    position.push_usi("G*5b")
    assert position.is_check() and position.is_checkmate()
    assert position.outcome() == Outcome(Color.BLACK, Termination.CHECKMATE)
    assert position.legal_moves() == []
    with pytest.raises(GameOverError, match="checkmate"):
        position.push_usi("5a4a")


def test_no_legal_move_without_check_is_a_loss() -> None:
    # White's king on 1a is not attacked, but every square it could go to is.
    position = Position("8k/6S2/9/7G1/9/9/9/9/4K4 b - 1")
    position.push_usi("2d2c")
    assert not position.is_check()
    assert position.outcome() == Outcome(Color.BLACK, Termination.NO_LEGAL_MOVES)


def test_repeating_actions_are_the_moves_back_into_earlier_positions() -> None:
    position = Position()
    assert len(position.repeating_actions()) == 0
    play(position, "5i4h 5a4b 4h5i")
    # 5a4b's reverse 4b5a brings back the start; nothing else White can play was seen before.
    back = move_to_action(Move.from_usi("4b5a"), Color.WHITE)
    assert position.repeating_actions().tolist() == [back]
    position.push_usi("4b5a")
    assert position.repeating_actions().tolist() == [move_to_action(Move.from_usi("5i4h"),
                                                                    Color.BLACK)]
    assert set(position.repeating_actions()) <= set(position.legal_actions())


def test_sennichite_only_at_the_fourth_occurrence() -> None:
    position = Position()
    cycle = "5i4h 5a4b 4h5i 4b5a"
    for occurrence in (2, 3):
        play(position, cycle)
        assert position.repetition_count() == occurrence - 1
        assert position.outcome() is None
    # cshogi's own test already calls the 2nd occurrence a draw; ours waits for the 4th.
    board = cshogi.Board()
    for usi in cycle.split():
        board.push_usi(usi)
    assert board.is_draw() == cshogi.REPETITION_DRAW
    play(position, "5i4h 5a4b 4h5i")
    assert position.outcome() is None
    position.push_usi("4b5a")
    assert position.repetition_count() == 3
    assert position.outcome() == Outcome(None, Termination.SENNICHITE)
    with pytest.raises(GameOverError, match="sennichite"):
        position.push_usi("7g7f")


def test_position_key_covers_board_hands_and_side_to_move() -> None:
    # Repetitions are counted on cshogi's zobrist key: it must tell these apart.
    sfens = ["4k4/9/9/9/9/9/9/9/4K4 b P 1", "4k4/9/9/9/9/9/9/9/4K4 b L 1",
             "4k4/9/9/9/9/9/9/9/4K4 w P 1", "4k4/9/9/9/9/9/9/9/4K4 b p 1",
             "4k4/9/9/9/9/9/9/9/4K4 b 2P 1", "4k4/9/9/9/9/9/9/9/3K5 b P 1"]
    assert len({cshogi.Board(s).zobrist_hash() for s in sfens}) == len(sfens)
    # The move number is not part of the key.
    assert (cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 b P 1").zobrist_hash()
            == cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 b P 9").zobrist_hash())


@pytest.mark.parametrize(("sfen", "cycle"), [
    # The checker has just moved when the position occurs the 4th time.
    ("4k4/9/9/9/4R4/9/9/9/K8 w - 1", "5a4a 5e4e 4a5a 4e5e"),
    # The checker is to move when it does.
    ("5k3/9/9/9/4R4/9/9/9/K8 b - 1", "5e4e 4a5a 4e5e 5a4a"),
])
def test_perpetual_check_loses_for_the_checking_side(sfen: str, cycle: str) -> None:
    position = Position(sfen)
    for _ in range(3):
        play(position, cycle)
    assert position.repetition_count() == 3
    assert position.outcome() == Outcome(Color.WHITE, Termination.PERPETUAL_CHECK)


def test_repetition_with_checks_from_one_side_only_some_of_the_time_is_a_draw() -> None:
    # Black checks with one rook move of two: not perpetual, so a plain sennichite.
    position = Position("4k4/9/9/9/4R4/9/9/9/K8 w - 1")
    cycle = "5a4a 5e6e 4a5a 6e5e"  # 6e gives no check on 4a; 5e checks 5a
    for _ in range(3):
        play(position, cycle)
    assert position.outcome() == Outcome(None, Termination.SENNICHITE)


def test_max_moves_ends_the_game_as_a_draw() -> None:
    position = Position(max_moves=4)
    play(position, "7g7f 3c3d 2g2f")
    assert position.outcome() is None
    position.push_usi("4c4d")
    assert position.outcome() == Outcome(None, Termination.MAX_MOVES)
    with pytest.raises(GameOverError, match="max_moves"):
        position.push_usi("2f2e")


def test_mate_on_the_last_allowed_ply_is_checkmate_not_max_moves() -> None:
    position = Position("4k4/9/4P4/9/9/9/9/9/4K4 b G 1", max_moves=1)
    position.push_usi("G*5b")
    assert position.outcome() == Outcome(Color.BLACK, Termination.CHECKMATE)


IMPASSE_BLACK = "RRBB5/4K4/PPPPPPPP1/9/9/9/9/9/8k b - 1"  # 12 pieces in camp, 28 points


def test_impasse_27_point_declaration_wins_when_enabled() -> None:
    assert Position(IMPASSE_BLACK, impasse=True).outcome() == Outcome(Color.BLACK,
                                                                      Termination.IMPASSE)
    assert Position(IMPASSE_BLACK).outcome() is None  # the rule is off by default
    # 27 points is one short for Black, but enough for White.
    short = "RRBB5/4K4/PPPPPPP2/9/9/9/9/9/8k b - 1"
    assert Position(short, impasse=True).outcome() is None
    rotated = cshogi.rotate_sfen(short)  # the same position with colours swapped: White to move
    assert Position(rotated, impasse=True).outcome() == Outcome(Color.WHITE,
                                                                Termination.IMPASSE)


def test_impasse_needs_ten_pieces_in_camp_and_no_check() -> None:
    # Nine pieces in the camp: no declaration even with the points in hand.
    assert Position("RRBB5/4K4/PPPPP4/9/9/9/9/9/8k b 3P 1", impasse=True).outcome() is None
    # In check: no declaration.
    checked = "RRBBs4/4K4/PPPPPPPP1/9/9/9/9/9/8k b - 1"  # silver on 5a
    assert Position(checked, impasse=True).outcome() is None


def test_captured_promoted_piece_goes_to_hand_unpromoted() -> None:
    position = Position("4k4/9/9/9/9/4+r4/4G4/9/4K4 b - 1")
    position.push_usi("5g5f")
    assert position.sfen().split()[2] == "R"
    state = position.compact()
    assert state.hands[0, 1].tolist() == [0, 0, 0, 0, 0, 0, 1]  # White to move; Black has R
