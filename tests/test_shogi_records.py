"""KIF and CSA export, re-parsed by cshogi's own parsers."""

from __future__ import annotations

import cshogi
import cshogi.CSA
import cshogi.KIF
import numpy as np
import pytest

from shogi import Color, HeuristicPlayer, Position, RandomPlayer, Termination, to_csa, to_kif


def random_game(seed: int, plies: int, sfen: str | None = None) -> Position:
    position = Position(sfen)
    player = RandomPlayer(seed)
    while position.ply < plies and not position.is_game_over():
        position.push(player.choose(position))
    return position


def played(position: Position) -> list[str]:
    return [str(m) for m in position.moves]


def parse_kif(text: str) -> tuple[list[str], int | None]:
    parser = cshogi.KIF.Parser.parse_str(text)
    return [cshogi.move_to_usi(m) for m in parser.moves], parser.win


def parse_csa(text: str) -> tuple[str, list[str], int, str]:
    (parser,) = cshogi.CSA.Parser.parse_str(text)
    return parser.sfen, [cshogi.move_to_usi(m) for m in parser.moves], parser.win, parser.endgame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ongoing_random_game_reparses(seed: int) -> None:
    position = random_game(seed, 120)
    moves, _ = parse_kif(position.to_kif())
    assert moves == played(position)
    sfen, moves, _, _ = parse_csa(position.to_csa())
    assert moves == played(position)
    assert sfen.split()[:3] == position.start_sfen.split()[:3]
    # Module functions and methods agree.
    assert to_kif(position) == position.to_kif() and to_csa(position) == position.to_csa()


def test_random_games_to_the_end_reparse() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        position = random_game(int(rng.integers(1 << 30)), 10_000)
        assert position.is_game_over()
        assert parse_kif(position.to_kif())[0] == played(position)
        assert parse_csa(position.to_csa())[1] == played(position)


def heuristic_game_ending_in(reason: Termination) -> Position:
    for seed in range(50):
        position = Position()
        black, white = HeuristicPlayer(seed), HeuristicPlayer(seed + 1000)
        while not position.is_game_over():
            player = black if position.turn is Color.BLACK else white
            position.push(player.choose(position))
        outcome = position.outcome()
        if outcome is not None and outcome.reason is reason:
            return position
    raise AssertionError(f"no heuristic game ended in {reason}")


def test_checkmate_records_the_winner() -> None:
    position = heuristic_game_ending_in(Termination.CHECKMATE)
    outcome = position.outcome()
    assert outcome is not None and outcome.winner is not None
    expected_win = cshogi.BLACK_WIN if outcome.winner is Color.BLACK else cshogi.WHITE_WIN
    kif = position.to_kif()
    moves, win = parse_kif(kif)
    assert moves == played(position) and win == expected_win
    assert "詰み" in kif
    _, moves, win, endgame = parse_csa(position.to_csa())
    assert moves == played(position) and win == expected_win and endgame == "%TORYO"


def test_sennichite_and_perpetual_check_records() -> None:
    position = Position()
    for _ in range(3):
        for usi in ["5i4h", "5a4b", "4h5i", "4b5a"]:
            position.push_usi(usi)
    _, win = parse_kif(position.to_kif())
    assert win == cshogi.DRAW
    _, moves, win, endgame = parse_csa(position.to_csa())
    assert moves == played(position) and endgame == "%SENNICHITE" and win == cshogi.DRAW

    perpetual = Position("4k4/9/9/9/4R4/9/9/9/K8 w - 1")
    for _ in range(3):
        for usi in ["5a4a", "5e4e", "4a5a", "4e5e"]:
            perpetual.push_usi(usi)
    sfen, moves, win, endgame = parse_csa(perpetual.to_csa())
    assert sfen == perpetual.start_sfen
    assert moves == played(perpetual)
    assert endgame == "%+ILLEGAL_ACTION" and win == cshogi.WHITE_WIN  # the checker, Black, loses
    assert "反則負け" in perpetual.to_kif()


def test_csa_from_a_custom_position() -> None:
    matsuri = "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w RGgsn5p 1"
    position = random_game(5, 40, matsuri)
    sfen, moves, _, _ = parse_csa(position.to_csa())
    assert cshogi.Board(sfen).sfen() == cshogi.Board(matsuri).sfen()
    assert moves == played(position)
    # KIF writes the start as a board diagram.
    kif = position.to_kif()
    assert "後手番" in kif and "手合割" not in kif


def test_max_moves_record() -> None:
    capped = Position(max_moves=6)
    for usi in ["7g7f", "3c3d", "2g2f", "8c8d", "2f2e", "8d8e"]:
        capped.push_usi(usi)
    assert capped.is_game_over()
    assert "持将棋" in capped.to_kif()
    assert parse_csa(capped.to_csa())[3] == "%JISHOGI"


def test_impasse_record() -> None:
    position = Position("RRBB5/4K4/PPPPPPPP1/9/9/9/9/9/8k b - 1", impasse=True)
    sfen, moves, win, endgame = parse_csa(position.to_csa())
    assert sfen == position.start_sfen
    assert moves == [] and endgame == "%KACHI" and win == cshogi.BLACK_WIN
    assert "入玉勝ち" in position.to_kif()
