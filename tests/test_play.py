"""`keisei-ray play`: the terminal game through a captured Rich console, then as a subprocess
fed on stdin."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cshogi
import cshogi.KIF
import pytest
from rich.console import Console

from actors.evaluation import GameRecord
from actors.players import BaselinePlayer
from keisei_ray.arena.play import TerminalGame, hands_of, hint, render_board
from keisei_ray.arena.records import record_kif
from shogi import Color, Outcome, Position, Termination

MATE_IN_ONE = "3nkn3/9/4P4/9/9/9/9/9/4K4 b G 1"  # G*5b mates


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=120, color_system=None, force_terminal=False), buffer


def reader(lines: list[str]) -> Callable[[str], str]:
    feed = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return read


def test_board_is_drawn_in_usi_coordinates() -> None:
    position = Position()
    position.push_usi("7g7f")
    text = render_board(position, position.moves[-1]).plain
    lines = text.splitlines()
    assert lines[0] == "White in hand: -"
    assert lines[1].split() == [str(f) for f in range(9, 0, -1)]
    assert lines[2].split() == ["vL", "vN", "vS", "vG", "vK", "vG", "vS", "vN", "vL", "a"]
    assert lines[8].split() == ["P", "P", ".", "P", "P", "P", "P", "P", "P", "g"]
    assert lines[7].split()[2] == "P"  # the pawn now on 7f
    assert "ply 1, White to move" in text


def test_hands_are_read_from_the_position() -> None:
    position = Position("4k4/9/9/9/9/9/9/9/4K4 b 2PG3p 1")
    assert hands_of(position) == {Color.BLACK: {"P": 2, "G": 1}, Color.WHITE: {"P": 3}}
    assert "Black in hand: P2 G" in render_board(position).plain


def test_hints_name_the_closest_legal_moves() -> None:
    position = Position()
    assert hint(position, "7g7e") == "legal moves from 7g: 7g7f"
    assert hint(position, "P*5e") == "you have no P to drop"
    assert hint(position, "5e5d").startswith("no piece of yours on 5e")
    assert hint(position, "3c3d").startswith("no piece of yours on 3c")  # White's pawn
    assert hint(position, "8i7g") == "the piece on 8i has no legal move"  # boxed-in knight
    assert hint(position, "8i9h") == ("the piece on 8i has no legal move; "
                                      "legal moves to 9h: 9i9h")
    assert hint(position, "2h").startswith("legal moves from 2h:")
    assert hint(position, "zz").startswith("expected a USI move such as 7g7f")


def test_a_game_with_refused_input_undo_and_resignation() -> None:
    con, buffer = console()
    game = TerminalGame(BaselinePlayer("random", 1), Color.BLACK, con)
    result = game.run(reader(["help", "7g7e", "zz", "moves", "7g7f", "undo", "2g2f", "resign"]))
    out = buffer.getvalue()
    assert result == "loss"
    assert "illegal move '7g7e': legal moves from 7g: 7g7f" in out
    assert "illegal move 'zz': expected a USI move" in out
    assert "9i9h" in out  # the 'moves' listing (no other output names a lance move)
    assert out.count("random plays") == 2  # once after 7g7f, once after 2g2f
    assert game.position.ply == 2 and game.position.moves[0].usi() == "2g2f"  # undo worked
    assert "you resign" in out


def test_winning_by_mate_and_saving_the_game(tmp_path: Path) -> None:
    con, buffer = console()
    game = TerminalGame(BaselinePlayer("random"), Color.BLACK, con,
                        position=Position(MATE_IN_ONE))
    assert game.run(reader(["G*5b"])) == "win"
    assert "you win (checkmate) after 1 plies" in buffer.getvalue()
    path = game.save_kif(tmp_path / "game.kif")
    parser = cshogi.KIF.Parser.parse_str(path.read_text(encoding="utf-8"))
    assert [cshogi.move_to_usi(m) for m in parser.moves] == ["G*5b"]
    assert parser.names == ["you", "random"]


def test_agent_moves_first_when_the_person_plays_white() -> None:
    con, buffer = console()
    game = TerminalGame(BaselinePlayer("heuristic"), Color.WHITE, con)
    assert game.run(reader([])) == "abandoned"  # input ended at the first prompt
    assert game.position.ply == 1 and "heuristic plays" in buffer.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_play_command_on_stdin(tmp_path: Path) -> None:
    kif = tmp_path / "game.kif"
    proc = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "play", "random", "--color", "black",
         "--save", str(kif)],
        input="7g7f\n7g7f\nresign\n", capture_output=True, text=True, timeout=110,
        check=False)
    assert proc.returncode == 0, proc.stderr
    assert "random plays" in proc.stdout
    assert "illegal move '7g7f'" in proc.stdout  # the pawn is no longer on 7g
    assert "you resign" in proc.stdout
    assert kif.is_file() and "７六歩" in kif.read_text(encoding="utf-8")


@pytest.mark.slow
def test_play_command_rejects_a_bad_colour_and_model(tmp_path: Path) -> None:
    bad_colour = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "play", "random", "--color", "green"],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad_colour.returncode == 2 and "--color" in bad_colour.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "play", str(tmp_path / "none.pt")],
        capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr + bad_colour.stderr


class Resigner:
    """An engine-like player that resigns at its first move."""

    name = "resigner"

    def choose(self, positions: list[Position]) -> list[Outcome]:
        return [Outcome(p.turn.opponent(), Termination.RESIGN) for p in positions]


@pytest.mark.parametrize(("lines", "agent", "ending", "win"), [
    (["7g7f", "resign"], BaselinePlayer("random"), ["   3 投了", "まで2手で後手の勝ち"],
     cshogi.WHITE_WIN),
    (["7g7f"], Resigner(), ["   2 投了", "まで1手で先手の勝ち"], cshogi.BLACK_WIN),
    (["7g7f"], BaselinePlayer("random"), ["   3 中断", "まで2手で中断"], None),
], ids=["you-resign", "the-agent-resigns", "abandoned"])
def test_a_saved_game_has_its_result_lines(tmp_path: Path, lines: list[str], agent: Any,
                                           ending: list[str], win: int | None) -> None:
    # Endings the board does not show get the result lines evaluation records have.
    game = TerminalGame(agent, Color.BLACK, console()[0])
    game.run(reader(lines))
    text = game.save_kif(tmp_path / "game.kif").read_text(encoding="utf-8")
    assert text.splitlines()[-2:] == ending
    parser = cshogi.KIF.Parser.parse_str(text)
    assert parser.win == win
    assert parser.endgame == ("%CHUDAN" if win is None else "%TORYO")


def test_an_engine_resignation_in_an_evaluation_record_has_its_result_lines() -> None:
    record = GameRecord("sf-d1", "ts-10", cshogi.Board().sfen(), ["7g7f", "3c3d"], 1, "resign")
    assert record_kif(record).splitlines()[-2:] == ["   3 投了", "まで2手で後手の勝ち"]
    forfeit = GameRecord("a", "b", cshogi.Board().sfen(), ["7g7f"], 0, "engine_timeout")
    assert record_kif(forfeit).splitlines()[-2:] == ["   2 反則負け", "まで1手で後手の反則負け"]
