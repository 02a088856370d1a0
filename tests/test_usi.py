"""The USI engine: the protocol state machine directly, then full games through cshogi's own
USI client (`cshogi.usi.Engine` and the `cshogi.cli` match runner) driving
`python -m keisei_ray.cli usi MODEL` as a subprocess."""

from __future__ import annotations

import math
import re
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cshogi
import cshogi.cli
import pytest
import torch
from cshogi.usi import Engine, InfoListener

from actors.evaluation import Contestant
from keisei_ray.arena.usi import UsiEngine, value_to_cp
from keisei_ray.config import ModelConfig
from keisei_ray.config_loading import load_config
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
    """An engine fed line by line, its answers collected; it plays the raw policy unless
    given `simulations` (usi.simulations)."""

    def __init__(self, contestant: Contestant | None = None, simulations: int = 0,
                 overrides: tuple[str, ...] = ()) -> None:
        self.lines: list[str] = []
        config = load_config(overrides=[f"usi.simulations={simulations}", *overrides])
        self.engine = UsiEngine(contestant or tiny_contestant(), self.lines.append,
                                max_moves=512, config=config)

    def send(self, *commands: str) -> list[str]:
        start = len(self.lines)
        for command in commands:
            self.engine.handle(command)
            words = command.split()
            searching = self.engine.options.simulations > 0
            if not (searching and words[:1] == ["go"] and ("infinite" in words or
                                                          "ponder" in words)):
                assert self.engine.wait(60), command  # answered, or holding (raw policy)
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


# ----------------------------------------------------------------------------- searching

INFO = re.compile(r"^info depth (\d+) seldepth (\d+) nodes (\d+) nps (\d+) time (\d+) "
                  r"score (cp -?\d+|mate -?\d+|mate [+-]) pv ((?:\S+ ?)+)$")


def infos(lines: list[str]) -> list[re.Match[str]]:
    """The `info` lines of a search, each checked against the USI grammar GUIs parse."""
    found = [line for line in lines if line.startswith("info ") and
             not line.startswith("info string")]
    matches = [INFO.match(line) for line in found]
    assert found and all(matches), found
    return [m for m in matches if m is not None]


def test_search_answers_within_the_byoyomi_with_info_lines() -> None:
    s = Session(simulations=10_000)
    assert s.engine.options.simulations == 10_000  # usi.simulations: searching by default
    s.send("isready", "usinewgame", "position startpos moves 7g7f 3c3d")
    started = time.monotonic()
    answer = s.send("go btime 0 wtime 0 byoyomi 700")
    elapsed = time.monotonic() - started
    # Within the byoyomi as a rule; the 1 s of grace cshogi's runner gives covers a machine
    # stall (see test_searching_engine_keeps_the_clock_through_cshogi_usi_client).
    assert elapsed < 1.7, answer
    last = infos(answer)[-1]
    move = bestmove(answer)
    assert last[7].split()[0] == move and int(last[3]) > 1  # searched, not one forward
    board = Position()
    for usi in ("7g7f", "3c3d"):
        board.push_usi(usi)
    assert move in {m.usi() for m in board.legal_moves()}
    # `go nodes N` searches N simulations exactly; the raw policy is one option away.
    assert int(infos(s.send("go nodes 40"))[-1][3]) == 40
    s.send("setoption name Simulations value 0", "isready", "position startpos")
    assert infos(s.send("go byoyomi 700"))[-1][3] == "1"


def test_search_infinite_and_ponder_think_until_told() -> None:
    s = Session(simulations=1_000_000)
    legal = {m.usi() for m in Position().legal_moves()}
    s.send("setoption name USI_Ponder value true", "isready", "position startpos")
    assert not any(line.startswith("bestmove") for line in s.send("go infinite"))
    time.sleep(0.5)
    assert s.engine.thinking
    answer = s.send("stop")
    assert bestmove(answer) in legal and int(infos(s.lines)[-1][3]) > 1
    # With USI_Ponder the answer names the expected reply; pondering on it ends with
    # ponderhit, after which the move takes the clock's time (byoyomi here), no more.
    answer = s.send("go btime 0 wtime 0 byoyomi 500")
    (line,) = [text for text in answer if text.startswith("bestmove")]
    words = line.split()
    assert len(words) == 4 and words[2] == "ponder", line
    s.send(f"position startpos moves {words[1]} {words[3]}")
    s.send("go ponder btime 0 wtime 0 byoyomi 500")
    time.sleep(0.3)
    assert s.engine.thinking
    started = time.monotonic()
    answer = s.send("ponderhit")
    assert time.monotonic() - started < 1.5  # on the clock, not its million simulations
    board = Position()
    for usi in (words[1], words[3]):
        board.push_usi(usi)
    assert bestmove(answer) in {m.usi() for m in board.legal_moves()}


def test_search_reports_a_mate_and_plays_it() -> None:
    s = Session(simulations=10_000)
    s.send("isready", f"position sfen {MATE_IN_ONE}")
    answer = s.send("go btime 0 wtime 0 byoyomi 500")
    assert bestmove(answer) == "G*5b"
    assert infos(answer)[-1][6] == "mate 1"


def test_search_takes_max_moves_to_draw_as_the_game_end() -> None:
    # At ply 39 of a game capped at 40, every move but a mate ends it drawn: the searched
    # value is exactly a draw, where without the cap the network's own value shows.
    moves = " ".join(random_game(39))
    s = Session(simulations=10_000)
    s.send("isready", f"position startpos moves {moves}")
    assert infos(s.send("go nodes 64"))[-1][6] != "cp 0"
    s.send("setoption name MaxMovesToDraw value 40", "isready", f"position startpos moves {moves}")
    answer = s.send("go nodes 64")
    assert infos(answer)[-1][6] == "cp 0"
    assert s.engine.search is not None and s.engine.search.searcher.max_moves == 40


def test_search_options_and_bad_values() -> None:
    s = Session(simulations=10_000)
    options = [line for line in s.send("usi") if line.startswith("option")]
    for name in ("Simulations", "NetworkDelay", "CPuct", "Gumbel", "GumbelMoves",
                 "LeavesPerForward", "MatePlies", "ReuseTree"):
        assert any(line.startswith(f"option name {name} type ") for line in options), name
    assert s.send("setoption name CPuct value 2.5", "setoption name Gumbel value false",
                  "setoption name GumbelMoves value 8", "setoption name LeavesPerForward value 4",
                  "setoption name MatePlies value 5", "setoption name ReuseTree value false",
                  "setoption name NetworkDelay value 400", "isready") == ["readyok"]
    o = s.engine.options
    assert (o.search.c_puct, o.search.gumbel, o.search.gumbel_moves, o.search.leaves_per_forward,
            o.search.mate_plies, o.search.reuse_tree, o.network_delay_ms) == (
                2.5, False, 8, 4, 5, False, 400)
    assert s.engine.search is not None and s.engine.search.settings.c_puct == 2.5
    for command in ("setoption name CPuct value -1", "setoption name CPuct value fast",
                    "setoption name MatePlies value 2", "setoption name GumbelMoves value 0",
                    "setoption name Simulations value -5", "setoption name Gumbel value maybe",
                    "setoption name NetworkDelay value soon"):
        answer = s.send(command)
        assert len(answer) == 1 and answer[0].startswith("info string error:"), (command, answer)
    assert s.engine.options.search.c_puct == 2.5 and s.engine.options.search.mate_plies == 5
    s.send("position startpos")
    assert bestmove(s.send("go nodes 16")) in {m.usi() for m in Position().legal_moves()}
    # A model spec's own search settings (model.pt,sims=N) set the engine's defaults.
    own = replace(tiny_contestant(), search=(("simulations", 64), ("c_puct", 3.0)))
    options = Session(own, simulations=10_000).engine.options
    assert options.simulations == 64 and options.search.c_puct == 3.0


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


def play_timed_game(agent: Engine, opponent: Engine, clock: dict[str, int],
                    plies: int) -> tuple[list[str], list[float], list[list[str]]]:
    """One game, the agent Black, with cshogi's USI client: `clock` holds the `go` times
    (btime/wtime/binc/winc or byoyomi, ms). In sudden death the agent's main time runs down
    by what its moves took, by the rule of cshogi's match runner (an answer less than 1 s
    late is not a loss: that second absorbs the machine's scheduling stalls, see below).
    Returns the moves, the agent's seconds per move (from `go` sent to `bestmove` read) and
    the lines of each of its `go`s."""
    for engine in (agent, opponent):
        engine.isready()
        engine.usinewgame()
    board = cshogi.Board()
    moves: list[str] = []
    seconds: list[float] = []
    outputs: list[list[str]] = []
    times = dict(clock)
    while not board.is_game_over() and len(moves) < plies:
        ours = board.turn == cshogi.BLACK
        engine = agent if ours else opponent
        engine.position(moves)
        lines: list[str] = []
        started = time.perf_counter()
        move, _ = engine.go(listener=lines.append, **times)
        took = time.perf_counter() - started
        if ours:
            seconds.append(took)
            outputs.append(lines)
            if "byoyomi" not in times:  # sudden death: its clock, as a runner keeps it
                times["btime"] += times.get("binc", 0) - math.ceil(took * 1000)
                assert times["btime"] > -1000, f"the agent lost on time at ply {len(moves)}"
                times["btime"] = max(times["btime"], 0)
        if move in ("win", "resign"):
            break
        parsed = board.move_from_usi(move)
        assert board.is_legal(parsed), f"illegal bestmove {move!r} after {moves}"
        board.push(parsed)
        moves.append(move)
    for engine in (agent, opponent):
        engine.gameover()
    return moves, seconds, outputs


def agent_mated(moves: list[str]) -> bool:
    """Whether the agent (Black) played the last of `moves` and left White mated."""
    board = cshogi.Board()
    for move in moves:
        board.push_usi(move)
    return len(moves) % 2 == 1 and board.is_game_over()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_searching_engine_keeps_the_clock_through_cshogi_usi_client(
        tmp_path: Path, model_file: Path) -> None:
    """`keisei-ray usi MODEL` searches by default; through cshogi's USI client it answers
    byoyomi moves within the byoyomi as a rule (1 s grace for the rest, as cshogi's runner
    gives), and in sudden death with a small increment its clock never runs out; its `info`
    lines parse.

    On the 2-core machine these tests were written on, shared by a training run and other
    jobs (load ~18), one forward of the tiny network now and then stalled for 0.4-0.65 s of
    wall time: no engine can answer within the byoyomi through such a stall whatever its
    margin, so single answers may exceed it (in the whole suite under load ~18 one answer once
    took 2.3 s); the median may not, nor a second answer past the grace."""
    agent = Engine(engine_script(tmp_path, "agent.sh", str(model_file)))
    opponent = Engine(engine_script(tmp_path, "random.sh", "random"))
    try:
        assert agent.name.startswith("keisei-ray") and "tiny.pt" in agent.name
        moves, seconds, outputs = play_timed_game(
            agent, opponent, {"btime": 0, "wtime": 0, "byoyomi": 1000}, plies=40)
        # A stall of the whole machine can hold one answer past the grace; two cannot be luck.
        assert len(seconds) == 20 and sorted(seconds)[-2] < 2.0, seconds
        assert sorted(seconds)[10] < 1.0, seconds  # byoyomi 1 s less NetworkDelay (0.25 s)
        for lines in outputs:
            best = lines[-1].split()[1]
            last = infos(lines)[-1]
            assert last[7].split()[0] == best and int(last[3]) > 1  # it searched
        listener = InfoListener()
        for line in outputs[-1]:
            listener(line)
        assert isinstance(listener.score, int) and listener.pv[0] == best  # cshogi parses it
        moves, seconds, _ = play_timed_game(
            agent, opponent, {"btime": 3000, "wtime": 3000, "binc": 100, "winc": 100},
            plies=60)
        # No resignation, no flag: played to the end, or to the agent's mate of the random
        # opponent (its search finds one now and then).
        assert len(moves) == 60 or agent_mated(moves), moves
    finally:
        agent.quit()
        opponent.quit()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ponder_through_cshogi_usi_client(tmp_path: Path, model_file: Path) -> None:
    """With USI_Ponder the searching engine names its expected reply; a `go ponder` on it
    searches until `ponderhit` (then answers on the clock) or `stop` (then at once)."""
    agent = Engine(engine_script(tmp_path, "agent.sh", str(model_file)))
    pool = ThreadPoolExecutor(1)
    try:
        agent.setoption("USI_Ponder", "true")
        agent.isready()
        agent.usinewgame()
        board = cshogi.Board()
        agent.position([])
        # 200 simulations (however busy the machine) give a principal variation of 2+ moves.
        best, expected = agent.go(nodes=200)
        assert expected is not None, "no ponder move"
        for ending in ("ponderhit", "stop"):
            line = [best, expected]
            for usi in line:
                board.push_usi(usi)
            board_moves = [cshogi.move_to_usi(m) for m in board.history]
            agent.position(board_moves)
            lines: list[str] = []
            future = pool.submit(agent.go, ponder=True, btime=0, wtime=0, byoyomi=1000,
                                 listener=lines.append)
            deadline = time.monotonic() + 60
            while not any(text.startswith("info depth") for text in lines):
                assert time.monotonic() < deadline and not future.done(), lines
                time.sleep(0.05)  # pondering: its first info line is out
            started = time.perf_counter()
            if ending == "ponderhit":
                agent.ponderhit()
            else:
                agent.stop()
            best, expected = future.result(timeout=60)
            took = time.perf_counter() - started
            assert took < (2.0 if ending == "ponderhit" else 1.0), (ending, took)
            assert board.is_legal(board.move_from_usi(best)), (board_moves, best)
            assert expected is not None
    finally:
        pool.shutdown()
        agent.quit()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_match_with_the_cshogi_match_runner(tmp_path: Path, model_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """cshogi's match runner, sudden death with a small increment: every `go` gets one
    `bestmove`, and nobody loses on time or by an illegal move. (Its `ponder=True` mode is
    left out: the runner sends `stop` from one thread while another may not have sent the
    `go ponder` yet, so an engine can receive them the wrong way round and ponder on.)"""
    agent = engine_script(tmp_path, "agent.sh", str(model_file))
    opponent = engine_script(tmp_path, "random.sh", "random")
    result = cshogi.cli.main(agent, opponent, games=2, time=6_000, inc=100, draw=60,
                             keep_process=True, csa=str(tmp_path), debug=True,
                             print_summary=False)
    printed = capsys.readouterr().out
    assert result["total"] == 2
    assert result["engine1_name"].startswith("keisei-ray")
    # No illegal move and no loss on time on either side, in either colour.
    assert "反則負け" not in printed and "切れ負け" not in printed, printed
    assert len(list(tmp_path.glob("*.csa"))) == 2
    ours = [line[2:] for line in printed.splitlines() if line.startswith("1:")]
    assert not [line for line in ours if line.startswith("info string error")], ours
    assert sum(line.startswith("go") for line in ours) == \
        sum(line.startswith("bestmove") for line in ours) > 20, ours
    assert infos(ours)  # the searching engine's info lines, as the runner read them


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
    result = cshogi.cli.main(agent, opponent, options1=options, games=2, byoyomi=300, draw=24,
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_usi_command_takes_usi_and_search_overrides(model_file: Path) -> None:
    def run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keisei_ray.cli", "usi", str(model_file),
                               *args], input=stdin, capture_output=True, text=True,
                              timeout=300, check=False)

    done = run("usi.simulations=0", "usi.network_delay_ms=100", "search.c_puct=2",
               stdin="usi\nisready\nposition startpos\ngo byoyomi 1000\nquit\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "option name Simulations type spin default 0 min 0 max 10000000" in out
    assert "option name NetworkDelay type spin default 100 min 0 max 60000" in out
    assert "option name CPuct type string default 2.0" in out
    assert infos(out)[-1][3] == "1" and bestmove(out)  # the raw policy: one forward
    refused = run("search.simulations=5", stdin="quit\n")
    assert refused.returncode == 2
    assert "'search.simulations' does not apply here" in refused.stderr
    assert "usi.simulations" in refused.stderr


# What cshogi's C++ mate search does in some positions ("Error! failedStep"): native code
# writing to file descriptor 1 itself, past sys.stdout; and a stray Python print beside it.
NOISY_ENGINE = """
import ctypes, sys
from shogi.search_board import SearchBoard
libc = ctypes.CDLL(None)
quiet = SearchBoard.may_mate
def may_mate(self, plies):
    libc.puts(b"Error! failedStep")
    libc.fflush(None)
    print("a stray print", flush=True)
    return quiet(self, plies)
SearchBoard.may_mate = may_mate
from keisei_ray.cli import main
main(sys.argv[1:])
"""
USI_ANSWERS = {"id", "option", "usiok", "readyok", "info", "bestmove"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_native_writes_to_stdout_never_reach_the_gui(model_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NOISY_ENGINE, "usi", str(model_file)],
        input="usi\nisready\nposition startpos\ngo nodes 16\nposition startpos moves 7g7f\n"
        "go nodes 16\nquit\n", capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert [line for line in out if line.split()[0] not in USI_ANSWERS] == [], out
    assert len([line for line in out if line.startswith("bestmove ")]) == 2, out
    assert "Error! failedStep" in done.stderr and "a stray print" in done.stderr
