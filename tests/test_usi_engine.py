"""External USI engines as players (shogi/usi_engine.py): a fake engine that crashes, hangs or
answers illegally (tests/fake_usi_engine.py), the real Fairy-Stockfish where installed, and
the engine as train.opponent and evaluation opponent."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from actors.evaluation import Contestant, Evaluator, MatchResult, make_player, play_match
from keisei_ray.arena.evaluation import load_contestant
from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import load_config
from shogi import Color, Move, Outcome, Position, RandomPlayer, Termination
from shogi.duel import OpponentEnv, duel_opponent
from shogi.usi_engine import (
    FAIRY_STOCKFISH,
    GPSSHOGI,
    INSTALL_HINT,
    EnginePlayer,
    EngineSetupError,
    EngineSpec,
    EngineSpecError,
    describe_exit,
)

FAKE = Path(__file__).with_name("fake_usi_engine.py")
needs_stockfish = pytest.mark.skipif(
    shutil.which(FAIRY_STOCKFISH) is None,
    reason=f"Fairy-Stockfish is not installed (`{INSTALL_HINT}`)")
needs_gps = pytest.mark.skipif(
    shutil.which(GPSSHOGI) is None, reason=f"GPSShogi is not installed (`{INSTALL_HINT}`)")


def fake(mode: str, *extra: str) -> str:
    return f"usi:{sys.executable} {FAKE} {mode}," + ",".join(("timeout=5", *extra))


class Random:
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.player = RandomPlayer(seed)

    def choose(self, positions: Sequence[Position]) -> list[Move]:
        return [self.player.choose(p) for p in positions]


def match(spec: str, games: int = 4) -> tuple[MatchResult, EnginePlayer]:
    engine = EnginePlayer(spec, name="engine")
    try:
        result = play_match(Random(), engine, games, max_moves=40, games_at_once=2)
    finally:
        engine.close()
    return result, engine


# ----------------------------------------------------------------------------- specs


def test_spec_syntax() -> None:
    spec = EngineSpec.parse("usi:/usr/games/fairy-stockfish,nodes=500,Skill+Level=-20,"
                            "UCI_Elo=1400,name=weak,timeout=2.5")
    assert spec.command == ("/usr/games/fairy-stockfish",)
    assert spec.limit == ("nodes", 500)
    assert spec.options == (("Skill Level", "-20"), ("UCI_Elo", "1400"))
    assert spec.name == "weak" and spec.timeout_s == 2.5
    assert EngineSpec.parse("usi:engine --fast").command == ("engine", "--fast")
    assert EngineSpec.parse("usi:engine").limit == ("depth", 1)
    assert EngineSpec.parse("sf-d2").limit == ("depth", 2) and EngineSpec.parse("sf-d2").name \
        == "sf-d2"
    byoyomi = EngineSpec.parse("usi:gps,byoyomi=300,LimitDepth=4")
    assert byoyomi.go == "go btime 0 wtime 0 byoyomi 300"
    assert byoyomi.timeout_s == pytest.approx(10.3)  # the safety net comes on top of the clock
    assert EngineSpec.parse("usi:x,nodes=9").go == "go nodes 9"
    assert EngineSpec.parse("gps-d5").options == (("LimitDepth", "5"), ("BookDepth", "0"),
                                                 ("Thread", "1"))
    for bad, message in (("usi:", "names no command"), ("usi:x,depth=0", "positive integer"),
                         ("usi:x,byoyomi=2000,timeout=2", "must exceed the byoyomi"),
                         ("usi:x,depth=1,nodes=3", "not two"), ("usi:x,Hash", "key=value"),
                         ("usi:x,timeout=-1", "timeout"), ("stockfish", "must start with")):
        with pytest.raises(EngineSpecError, match=message):
            EngineSpec.parse(bad)


def test_config_accepts_engine_opponents_and_names_bad_ones() -> None:
    assert load_config(None, ["train.opponent=sf-d1"]).train.opponent == "sf-d1"
    assert load_config(None, ["train.opponent=mate"]).train.opponent == "mate"
    with pytest.raises(ConfigError, match="train.opponent"):
        load_config(None, ["train.opponent=stockfish"])
    with pytest.raises(ConfigError, match="depth must be a positive integer"):
        load_config(None, ["train.opponent=usi:x,depth=no"])


def test_missing_engine_is_refused_with_the_install_command() -> None:
    with pytest.raises(ValueError, match="apt-get install fairy-stockfish"):
        load_contestant("usi:/nonexistent/engine,depth=1")


# ----------------------------------------------------------------------------- fake engine


def test_fake_engine_plays_legal_games() -> None:
    result, engine = match(fake("legal"))
    assert result.games == 4 and not engine.failures
    assert not any("engine" in k or "illegal" in k for k in result.reasons)


@pytest.mark.parametrize(("mode", "reason"), [
    ("crash 3", "engine_crash"), ("illegal", "illegal_move"), ("garbage", "malformed_move"),
    ("empty", "malformed_move"), ("resign", "resign"), ("win", "illegal_move")])
def test_engine_failures_lose_the_game_and_the_next_game_goes_on(mode: str, reason: str) -> None:
    result, engine = match(fake(mode))
    # Every game ends, lost by the engine for the reason named; the match is not stopped.
    assert result.games == 4 and result.wins == 4
    assert result.reasons == {f"win_{reason}": 4}
    if reason != "resign":
        assert engine.failures == {reason: 4}


def test_a_malformed_answer_restarts_the_process(tmp_path: Path) -> None:
    # An engine that garbles a move (Fairy-Stockfish past move 256) may be about to crash:
    # it loses that game, and the next move is asked of a fresh process.
    engine = EnginePlayer(fake("garbleonce", "name=x").replace("garbleonce,",
                                                               f"garbleonce {tmp_path / 'g'},"))
    position = Position()
    for _ in range(2):
        assert not isinstance(engine.choose_one(position), Outcome)
    first = engine.process._proc
    assert engine.choose_one(position) == Outcome(Color.WHITE, Termination.MALFORMED_MOVE)
    assert engine.failures == {"malformed_move": 1}
    assert not isinstance(engine.choose_one(position), Outcome)
    assert engine.process._proc is not first


def test_engine_crash_restarts_the_process() -> None:
    engine = EnginePlayer(fake("crash", "name=x").replace("crash,", "crash 2,"))
    position = Position()
    assert not isinstance(engine.choose_one(position), Outcome)  # first go answered
    first = engine.process._proc
    lost = engine.choose_one(position)
    assert lost == Outcome(Color.WHITE, Termination.ENGINE_CRASH)
    assert not isinstance(engine.choose_one(position), Outcome)  # a new process answers
    assert engine.process._proc is not first
    engine.close()
    assert not engine.process.running


@pytest.mark.timeout(120)
def test_a_hanging_engine_times_out_and_is_killed(caplog: pytest.LogCaptureFixture) -> None:
    engine = EnginePlayer(fake("hang").replace("timeout=5", "timeout=0.5"))
    proc = None
    position = Position()
    position.push_usi("7g7f")
    try:
        engine.process.start()
        proc = engine.process._proc
        with caplog.at_level(logging.WARNING, logger="shogi.usi_engine"):
            assert engine.choose_one(position) == Outcome(Color.BLACK,
                                                          Termination.ENGINE_TIMEOUT)
        assert proc is not None and proc.poll() is not None  # killed
        # The warning carries the exact command the engine hung on, to replay it by hand.
        assert "it was asked: position startpos moves 7g7f" in caplog.text
    finally:
        engine.close()


@pytest.mark.timeout(60)
def test_an_engine_past_its_safety_net_is_stopped_and_its_move_taken() -> None:
    # Fairy-Stockfish at depth 1 in some lost positions searches on until `stop`.
    engine = EnginePlayer(fake("stoponly").replace("timeout=5", "timeout=0.5"))
    try:
        assert engine.choose_one(Position()) in Position().legal_moves()
        assert engine.failures == {} and engine.process.running
    finally:
        engine.close()


def test_an_engine_that_never_starts_loses_without_hanging() -> None:
    engine = EnginePlayer(f"usi:{sys.executable} -c pass")
    assert engine.choose_one(Position()).reason in (
        Termination.ENGINE_CRASH, Termination.ENGINE_TIMEOUT)
    engine.close()


def test_an_engine_that_knows_only_byoyomi_aborts_on_go_depth_and_says_so() -> None:
    # GPSShogi's failure: `go depth 1` (the default limit) makes it abort. The client must
    # not lose game after game to it silently: after SETUP_FAILURES it stops, quoting the
    # engine's own words and the signal.
    engine = EnginePlayer(fake("timeonly"))
    try:
        first = engine.choose_one(Position())
        assert first == Outcome(Color.WHITE, Termination.ENGINE_CRASH)
        assert engine.choose_one(Position()) == first
        with pytest.raises(EngineSetupError, match=r"(?s)without answering.*SIGABRT.*"
                           r"unknown option in go depth.*'go depth 1'"):
            engine.choose_one(Position())
    finally:
        engine.close()
    # Asked the way it understands, the same engine plays whole games.
    result, engine = match(fake("timeonly", "byoyomi=100"))
    assert result.games == 4 and not engine.failures and engine.answered > 0


def test_a_random_share_of_moves_bypasses_the_engine() -> None:
    assert EngineSpec.parse("usi:x,random=0.2").random_share == 0.2
    for bad in ("usi:x,random=1", "usi:x,random=-0.1", "usi:x,random=lots"):
        with pytest.raises(EngineSpecError, match="random must be a share"):
            EngineSpec.parse(bad)
    engine = EnginePlayer(fake("legal", "random=0.5"))
    try:
        position = Position()
        first = position.legal_moves()[0]  # the fake engine's every answer
        answers = [engine.choose_one(position) for _ in range(60)]
    finally:
        engine.close()
    others = sum(a != first for a in answers)
    assert 15 <= others <= 45
    assert engine.answered <= 60 - others  # those moves never reached the engine


def test_exit_codes_are_described() -> None:
    assert describe_exit(-6) == "killed by SIGABRT" and describe_exit(3) == "code 3"


def test_failures_after_a_first_answer_lose_games_and_never_raise() -> None:
    engine = EnginePlayer(fake("crash", "name=x").replace("crash,", "crash 2,"))
    try:
        for _ in range(6):  # answer, crash, answer, crash, ...: never a setup error
            engine.choose_one(Position())
        assert engine.failures == {"engine_crash": 3}
    finally:
        engine.close()


@pytest.mark.slow
def test_duel_against_a_crashing_engine_keeps_training_games_going() -> None:
    opponent = duel_opponent(fake("crash", "name=c").replace("crash,", "crash 4,"), 0)
    env = OpponentEnv(4, opponent, max_moves=60)
    finished = []
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs = env.observe()
        actions = [int(obs.legal_actions[lo + rng.integers(hi - lo)])
                   for lo, hi in zip(obs.legal_offsets[:-1], obs.legal_offsets[1:], strict=True)]
        step = env.step(np.array(actions))
        finished += [(g.outcome, c) for g, c in zip(step.finished, step.agent_colors,
                                                    strict=True)]
    opponent.close()
    crashes = [o for o, c in finished if o.reason is Termination.ENGINE_CRASH]
    assert crashes and all(o.winner == c for o, c in finished
                           if o.reason is Termination.ENGINE_CRASH)


# ----------------------------------------------------------------------------- real engines


@needs_stockfish
def test_fairy_stockfish_beats_random_in_evaluation() -> None:
    cfg = load_config(None, ["evaluation.games_at_once=2", "env.max_moves=200"])
    sf = load_contestant("sf-d1")
    assert sf == Contestant("sf-d1", engine="sf-d1")
    result = Evaluator(cfg).match(sf, load_contestant("random"), 2, seed=0)
    assert result.wins == 2, result.reasons
    assert result.as_black[0] == result.as_white[0] == 1  # colours alternated


@needs_stockfish
def test_stockfish_skill_option_reaches_the_engine() -> None:
    # Skill Level -20 plays much worse than full strength at the same depth.
    cfg = load_config(None, ["evaluation.games_at_once=4", "env.max_moves=256"])
    result = Evaluator(cfg).match(load_contestant("sf-d1"), load_contestant("sf-skill-20"), 4,
                                  seed=1)
    assert result.wins >= 3, result.reasons


@needs_stockfish
def test_make_player_builds_engines_and_closes_them() -> None:
    player = make_player(load_contestant("sf-d1"), Config())
    assert isinstance(player, EnginePlayer)
    move = player.choose([Position()])[0]
    assert not isinstance(move, Outcome) and player.process.running
    player.close()
    assert not player.process.running


@needs_gps
@pytest.mark.slow  # GPSShogi reads 100 MB of tables per start: seconds, 20 s under load
@pytest.mark.timeout(300)
def test_gpsshogi_plays_at_a_fixed_depth_and_beats_random() -> None:
    # Started as the gauntlet starts it (byoyomi + LimitDepth): it answers usi, plays legal
    # moves and wins; `go depth` would have aborted it.
    cfg = load_config(None, ["evaluation.games_at_once=2", "env.max_moves=200"])
    gps = load_contestant("gps-d4")
    result = Evaluator(cfg).match(gps, load_contestant("random"), 2, seed=0)
    assert result.wins == 2, result.reasons
    with pytest.raises(EngineSetupError, match="SIGABRT.*unknown option in go depth"):
        EnginePlayer(f"usi:{GPSSHOGI},depth=4").choose([Position()] * 3)


def test_a_missing_training_opponent_engine_is_refused_by_name() -> None:
    with pytest.raises(EngineSpecError, match="train.opponent 'usi:/nonexistent/sf'.*apt-get"):
        duel_opponent("usi:/nonexistent/sf", 0)


@needs_stockfish
@pytest.mark.timeout(300)
def test_self_play_worker_trains_against_the_real_engine() -> None:
    from actors.self_play import SelfPlayWorker
    from learner.model import export_weights

    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=8",
                             "train.games_per_worker=4", "train.opponent_share=0.5",
                             "train.opponent=sf-d1", "env.max_moves=12"])
    worker = SelfPlayWorker(cfg, worker_id=0)
    summary, _ = worker.collect(export_weights(worker.model), 0)
    assert summary.transitions > 0 and summary.opponent_games > 0  # games at the cap ended
    assert worker.duels is not None and isinstance(worker.duels.opponent.engine, EnginePlayer)
    assert worker.duels.opponent.engine.process.running
    worker.duels.opponent.close()


@pytest.mark.slow
@needs_stockfish
@pytest.mark.timeout(300)
def test_engine_opponent_inside_ray_evaluation_actors(ray_local: None) -> None:
    from keisei_ray.arena.evaluation import run_match

    cfg = load_config(None, ["evaluation.games_at_once=2", "env.max_moves=200"])
    result = run_match(cfg, load_contestant("sf-d1"), load_contestant("random"), 4, workers=2)
    assert result.games == 4 and result.wins == 4, result.reasons
