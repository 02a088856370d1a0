"""The USI engine: the protocol state machine directly, then full games through cshogi's own
USI client (`cshogi.usi.Engine` and the `cshogi.cli` match runner) driving
`python -m keisei_ray.cli usi MODEL` as a subprocess."""

from __future__ import annotations

import math
import stat
import sys
from pathlib import Path

import cshogi
import cshogi.cli
import pytest
import torch
from cshogi.usi import Engine

from actors.evaluation import Contestant
from keisei_ray.arena.usi import UsiEngine, value_to_cp
from keisei_ray.config import ModelConfig
from keisei_ray.store.model_file import save_model
from learner.model import build_model, export_weights
from shogi import Color, Move, Position, RandomPlayer, move_to_action

MATED = "3nkn3/4G4/4P4/9/9/9/9/9/4K4 w - 1"  # White to move is checkmated
MATE_IN_ONE = "3nkn3/9/4P4/9/9/9/9/9/4K4 b G 1"  # G*5b mates
IMPASSE = "RBGGGGSS1/PPPPPPPPP/4K4/9/9/9/9/9/4k4 b RB2S4N4L9p 1"  # Black may declare


def tiny_contestant(seed: int = 0, policy_head: str = "relative") -> Contestant:
    torch.manual_seed(seed)
    config = ModelConfig(size="tiny", policy_head=policy_head)
    return Contestant("tiny.pt", config, export_weights(build_model(config)))


class Session:
    """An engine fed line by line, its answers collected."""

    def __init__(self, contestant: Contestant | None = None) -> None:
        self.lines: list[str] = []
        self.engine = UsiEngine(contestant or tiny_contestant(), self.lines.append,
                                max_moves=512)

    def send(self, *commands: str) -> list[str]:
        start = len(self.lines)
        for command in commands:
            self.engine.handle(command)
            assert self.engine.wait(60), command  # answered, or holding for stop/ponderhit
        return self.lines[start:]


def bestmove(lines: list[str]) -> str:
    (move,) = [line.split()[1] for line in lines if line.startswith("bestmove")]
    return move


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("info string error:")]


def test_handshake_and_a_legal_move() -> None:
    s = Session()
    answer = s.send("usi")
    assert answer[0].startswith("id name keisei-ray") and "tiny.pt" in answer[0]
    assert answer[-1] == "usiok"
    assert any(line.startswith("option name Greedy type check") for line in answer)
    assert "option name AvoidRepetition type check default true" in answer
    assert s.send("isready") == ["readyok"]
    s.send("usinewgame", "position startpos moves 7g7f 3c3d")
    answer = s.send("go btime 1000 wtime 1000 byoyomi 100")
    info, last = answer[-2], answer[-1]
    assert info.startswith("info depth 1") and " score cp " in info
    move = bestmove(answer)
    assert info.endswith(f"pv {move}") and last == f"bestmove {move}"
    position = Position()
    for usi in ("7g7f", "3c3d"):
        position.push_usi(usi)
    assert move in {m.usi() for m in position.legal_moves()}
    # Greedy by default, after evaluation.sample_plies (8) sampled plies: from ply 8 on the
    # same position gives the same move.
    line = "position startpos moves 7g7f 3c3d 2g2f 8c8d 2f2e 8d8e 6i7h 4a3b"
    s.send(line)
    first = bestmove(s.send("go byoyomi 100"))
    s.send(line)
    assert bestmove(s.send("go byoyomi 100")) == first


def test_sfen_positions_and_game_ends() -> None:
    s = Session()
    s.send("position sfen " + MATED)
    assert s.send("go") == ["bestmove resign"]
    s.send(f"position sfen {MATE_IN_ONE} moves G*5b")  # the same mate, reached by a move
    assert s.send("go btime 0 wtime 0") == ["bestmove resign"]
    assert s.send(f"position sfen {MATE_IN_ONE}", "go mate 1000") == ["checkmate G*5b"]
    # A fourfold repetition ends the game by our rules; if the GUI still asks, play on legally.
    s.send("position startpos moves " + " ".join(["5i5h", "5a5b", "5h5i", "5b5a"] * 3))
    answer = s.send("go byoyomi 100")
    assert "info string the game is over by our rules (sennichite); playing on" in answer
    assert bestmove(answer) in {m.usi() for m in Position().legal_moves()}
    # Impasse: declared only when the option is on.
    s.send(f"position sfen {IMPASSE}")
    assert bestmove(s.send("go")) not in ("win", "resign")
    s.send("setoption name Impasse value true", f"position sfen {IMPASSE}")
    assert s.send("go") == ["bestmove win"]


def test_avoid_repetition_option() -> None:
    # A tiny network pushed towards 2h1h: with the absolute head its policy channel (action %
    # 160, "to 1h") is shared by no other legal move of the start position; it gets a large bias.
    contestant = tiny_contestant(policy_head="absolute")
    action = move_to_action(Move.from_usi("2h1h"), Color.BLACK)
    contestant.weights["policy_head.1.bias"][action % 160] = 50.0
    s = Session(contestant)
    cycle = "position startpos moves " + " ".join(["2h1h", "8b9b", "1h2h", "9b8b"] * 2)
    s.send("position startpos")
    assert bestmove(s.send("go byoyomi 100")) == "2h1h"  # a new position: its favourite
    s.send("setoption name AvoidRepetition value false", "isready", cycle)
    assert bestmove(s.send("go byoyomi 100")) == "2h1h"  # back into the position after ply 1
    s.send("setoption name AvoidRepetition value true", "isready", cycle)
    assert bestmove(s.send("go byoyomi 100")) != "2h1h"


def test_malformed_and_illegal_input_never_breaks_the_engine() -> None:
    s = Session()
    bad = [
        "hello world",
        "position",
        "position fen 9/9 b - 1",
        "position sfen lnsgkgsnl/9 b - 1",
        "position startpos moves 7g7f 7g7f",
        "position startpos moves 7g7f zz",
        "position startpos 7g7f",
        "setoption name Temperature value hot",
        "setoption name Temperature value -1",
        "setoption name Greedy value maybe",
        "setoption name AvoidRepetition value sometimes",
        "setoption name Threads value 0",
        "setoption Greedy true",
        "position sfen " + "x" * 5000,
    ]
    for command in bad:
        answer = s.send(command)
        assert len(answer) == 1 and answer[0].startswith("info string error:"), (command, answer)
    # After a rejected position, `go` has nothing valid to play: it resigns, legally.
    assert s.send("go")[-1] == "bestmove resign"
    assert errors(s.send("position startpos moves 7g7f 7g7f"))
    assert any("move 2" in line for line in s.lines[-1:])
    # Unknown options are only a warning; bad go arguments are reported and answered anyway.
    assert s.send("setoption name Foo value 1")[0].startswith("info string warning")
    s.send("position startpos")
    answer = s.send("go btime soon")
    assert errors(answer) and bestmove(answer) in {m.usi() for m in Position().legal_moves()}
    # Non-ASCII and control characters are quoted as ASCII escapes, never crash anything.
    (line,) = s.send("position startpos moves ７g７f\x00")
    assert line.startswith("info string error:") and line.isascii() and "\\uff17" in line


def test_go_infinite_waits_for_stop_and_ponder_for_ponderhit() -> None:
    s = Session()
    legal = {m.usi() for m in Position().legal_moves()}
    s.send("position startpos")
    assert not any(line.startswith("bestmove") for line in s.send("go infinite"))
    assert s.engine.thinking and s.send("isready") == ["readyok"]  # answered while thinking
    answer = s.send("stop")
    assert bestmove(answer) in legal
    assert s.send("stop") == []  # nothing held any more
    assert not any(line.startswith("bestmove") for line in s.send("go ponder btime 100 "
                                                                  "wtime 100"))
    assert bestmove(s.send("ponderhit")) in legal
    assert s.send("ponderhit", "stop") == []  # answered already
    # A runner ends the game while the engine ponders: the pondering `go` still gets its one
    # answer (a client is waiting for it), without a warning.
    s.send("go ponder")
    answer = s.send("gameover lose")
    assert bestmove(answer) in legal and len(answer) == 1
    # A command that needs the engine idle while it thinks: answered first, with a warning.
    s.send("go infinite")
    answer = s.send("position startpos moves 7g7f")
    assert answer[0] == "info string warning: 'position' while thinking: stopping first"
    assert bestmove(answer) in legal
    assert s.send("go infinite", "quit")[-1].startswith("bestmove") and s.engine.quit


def test_sampling_option_and_internal_errors_still_answer_legally(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Session()
    s.send("setoption name Greedy value false", "setoption name Temperature value 3.5",
           "setoption name Seed value 9", "isready")
    legal = {m.usi() for m in Position().legal_moves()}
    moves = {bestmove(s.send("position startpos", "go")) for _ in range(20)}
    assert moves <= legal and len(moves) > 1  # sampled

    def broken(*args: object) -> None:
        raise RuntimeError("simulated failure")

    assert s.engine.player is not None
    monkeypatch.setattr(s.engine.player, "decide", broken)
    answer = s.send("position startpos", "go")
    assert any("internal error in 'go': RuntimeError: simulated failure" in line
               for line in answer)
    assert bestmove(answer) in legal


def test_baseline_engines_and_quit() -> None:
    s = Session(Contestant.baseline("heuristic"))
    s.send("position sfen " + MATE_IN_ONE)
    assert s.send("go") == ["bestmove G*5b"]
    s.send("quit")
    assert s.engine.quit


def random_game(plies: int, seed: int = 1) -> list[str]:
    """`plies` legal USI moves from the start, a game that has not ended after them."""
    position, player = Position(), RandomPlayer(seed)
    while position.ply < plies:
        position.push(player.choose(position))
        assert not position.is_game_over()
    return [m.usi() for m in position.moves]


def score_cp(lines: list[str]) -> int:
    (info,) = [line for line in lines if line.startswith("info depth")]
    words = info.split()
    return int(words[words.index("cp") + 1])


def test_max_moves_to_draw_caps_the_game_and_scales_the_ply_plane() -> None:
    moves = " ".join(random_game(38))
    s = Session()
    s.send("isready", f"position startpos moves {moves}")
    assert s.engine.position is not None and s.engine.position.max_moves is None  # 0: no cap
    uncapped = score_cp(s.send("go byoyomi 100"))
    assert s.engine.player is not None and s.engine.player.max_moves == 512  # the config's
    # YaneuraOu's name, then dlshogi's alias: the same cap, no warning or error either way.
    for name in ("MaxMovesToDraw", "Draw_Ply"):
        assert s.send(f"setoption name {name} value 40", "isready") == ["readyok"]
        s.send(f"position startpos moves {moves}")
        assert s.engine.position is not None and s.engine.position.max_moves == 40
        answer = s.send("go byoyomi 100")
        assert s.engine.player.max_moves == 40  # the ply plane is 38 / 40, not 38 / 512
        assert score_cp(answer) != uncapped
    # A GUI that plays on past the cap it set gets legal moves, and is told why.
    forty = random_game(40)
    s.send("position startpos moves " + " ".join(forty[:39]))
    assert s.engine.position is not None and s.engine.position.max_moves == 40
    answer = s.send("position startpos moves " + " ".join(forty))
    assert answer == ["info string 40 plies played, MaxMovesToDraw is 40: playing on without "
                      "the cap"]
    board = Position()
    for usi in forty:
        board.push_usi(usi)
    assert bestmove(s.send("go byoyomi 100")) in {m.usi() for m in board.legal_moves()}
    s.send("setoption name MaxMovesToDraw value 0", f"position startpos moves {moves}")
    assert score_cp(s.send("go byoyomi 100")) == uncapped


def test_standard_options_hash_threads_ponder() -> None:
    s = Session()
    options = [line for line in s.send("usi") if line.startswith("option")]
    for name in ("USI_Hash", "USI_Ponder", "Threads", "MaxMovesToDraw"):
        assert any(line.startswith(f"option name {name} type ") for line in options), name
    threads = torch.get_num_threads()
    try:
        assert s.send("setoption name USI_Hash value 4096", "setoption name USI_Ponder value true",
                      "setoption name Threads value 2", "isready") == ["readyok"]
        assert torch.get_num_threads() == 2
        assert s.engine.options.hash_mb == 4096 and s.engine.options.ponder
    finally:
        torch.set_num_threads(threads)
    for command in ("setoption name USI_Hash value 0", "setoption name USI_Hash value lots",
                    "setoption name USI_Ponder value perhaps", "setoption name Threads value x",
                    "setoption name MaxMovesToDraw value -1",
                    "setoption name MaxMovesToDraw value 1e3", "setoption name Draw_Ply value"):
        answer = s.send(command)
        assert len(answer) == 1 and answer[0].startswith("info string error:"), (command, answer)
    assert s.engine.options.max_moves_to_draw == 0 and s.engine.options.hash_mb == 4096
    s.send("position startpos")
    assert bestmove(s.send("go byoyomi 100")) in {m.usi() for m in Position().legal_moves()}


def test_value_to_cp_is_monotone_and_clamped() -> None:
    assert value_to_cp(0.0) == 0
    assert value_to_cp(0.5) > value_to_cp(0.1) > 0 > value_to_cp(-0.1)
    assert value_to_cp(1.0) == -value_to_cp(-1.0) == 12434  # finite at certainty
    assert value_to_cp(0.5) == round(600 * math.log(3))  # 75% expected score


# ----------------------------------------------------------------------------- real client


def engine_script(tmp_path: Path, name: str, model: str) -> str:
    """An executable that starts `keisei-ray usi MODEL` (cshogi runs engines by path)."""
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m keisei_ray.cli usi "{model}"\n',
                    encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    config = ModelConfig(size="tiny")
    torch.manual_seed(4)
    return save_model(tmp_path / "tiny.pt", export_weights(build_model(config)), config,
                      {"timestep": 0})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_full_game_through_cshogi_usi_client(tmp_path: Path, model_file: Path) -> None:
    agent = Engine(engine_script(tmp_path, "agent.sh", str(model_file)))
    opponent = Engine(engine_script(tmp_path, "heuristic.sh", "heuristic"))
    try:
        assert agent.name.startswith("keisei-ray") and "tiny.pt" in agent.name
        for engine in (agent, opponent):
            engine.setoption("Seed", 3)
            engine.isready()
            engine.usinewgame()
        board = cshogi.Board()
        moves: list[str] = []
        answers = {"win", "resign"}
        result = None
        while not board.is_game_over() and len(moves) < 300:
            engine = agent if board.turn == cshogi.BLACK else opponent
            engine.position(moves)
            move, _ = engine.go(byoyomi=1000)
            if move in answers:
                result = move
                break
            parsed = board.move_from_usi(move)
            assert board.is_legal(parsed), f"illegal bestmove {move!r} after {moves}"
            board.push(parsed)
            moves.append(move)
        # The heuristic mates a random-weight network: the game ends in a mate (or, if the
        # network ever got mated on its move, its resignation).
        assert board.is_game_over() or result == "resign", moves
    finally:
        agent.quit()
        opponent.quit()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_match_with_the_cshogi_match_runner(tmp_path: Path, model_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    agent = engine_script(tmp_path, "agent.sh", str(model_file))
    opponent = engine_script(tmp_path, "random.sh", "random")
    result = cshogi.cli.main(agent, opponent, games=2, time=60_000, draw=160,
                             keep_process=True, csa=str(tmp_path), print_summary=False)
    printed = capsys.readouterr().out
    assert result["total"] == 2
    assert result["engine1_name"].startswith("keisei-ray")
    # No illegal move and no loss on time on either side, in either colour.
    assert "反則負け" not in printed and "切れ負け" not in printed, printed
    assert len(list(tmp_path.glob("*.csa"))) == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_match_runner_sets_the_standard_options(tmp_path: Path, model_file: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """cshogi's runner sets USI_Hash, Threads and MaxMovesToDraw, and sends gameover between
    games; the engine takes them all (no warning or error) and honours the cap: the runner
    here plays on to 24 plies, past the 20 it set, and the engine says so and plays on."""
    agent = engine_script(tmp_path, "agent.sh", str(model_file))
    opponent = engine_script(tmp_path, "random.sh", "random")
    options = {"USI_Hash": 256, "Threads": 1, "MaxMovesToDraw": 20}
    result = cshogi.cli.main(agent, opponent, options1=options, games=2, byoyomi=1000, draw=24,
                             keep_process=True, debug=True, print_summary=False)
    printed = capsys.readouterr().out
    assert result["total"] == 2
    ours = [line[2:] for line in printed.splitlines() if line.startswith("1:")]
    assert "setoption name MaxMovesToDraw value 20" in ours
    assert sum(line.startswith("gameover") for line in ours) == 2  # one game after the other
    assert not [line for line in ours if line.startswith(("info string error",
                                                          "info string warning"))], ours
    # Each of the engine's moves from ply 20 on (plies 20 and 22 as Black, 21 and 23 as
    # White), and none before: the cap is the engine's.
    past = [int(line.split()[2]) for line in ours if "MaxMovesToDraw is 20: playing on" in line]
    assert sorted(past) == [20, 21, 22, 23], ours
    assert "反則負け" not in printed and "切れ負け" not in printed, printed
