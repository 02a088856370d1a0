"""One `make_player` for evaluation, gauntlet, `usi` and `play`: every setting from the config,
and the overrides given to `usi` / `play` take effect (or are refused by name)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.evaluation import Contestant, Evaluator, make_player
from actors.players import BaselinePlayer, PolicyPlayer
from keisei_ray.arena.usi import UsiEngine
from keisei_ray.config import Config, ModelConfig
from keisei_ray.config_loading import load_config
from keisei_ray.store.model_file import save_model
from learner.model import build_model, export_weights


def tiny() -> Contestant:
    torch.manual_seed(0)
    config = ModelConfig(size="tiny")
    return Contestant("tiny.pt", config, export_weights(build_model(config)))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    config = ModelConfig(size="tiny")
    torch.manual_seed(4)
    return save_model(tmp_path / "tiny.pt", export_weights(build_model(config)), config,
                      {"timestep": 0})


def test_network_players_take_every_setting_from_the_config() -> None:
    cfg = load_config(None, ["evaluation.greedy=false", "evaluation.temperature=2.5",
                             "evaluation.sample_plies=3", "evaluation.avoid_repetition=false",
                             "env.max_moves=300"])
    player = make_player(tiny(), cfg)
    assert isinstance(player, PolicyPlayer)
    assert (player.greedy, player.temperature, player.sample_plies, player.avoid_repetition,
            player.max_moves) == (False, 2.5, 3, False, 300)
    default = make_player(tiny(), Config())
    assert isinstance(default, PolicyPlayer)
    assert default.sample_plies == Config().evaluation.sample_plies == 8
    # The file's own ply cap wins over the env's (it scales an input plane).
    assert make_player(Contestant("m", tiny().model, tiny().weights, 100), cfg).max_moves \
        == 100
    assert isinstance(make_player(Contestant.baseline("mate"), cfg), BaselinePlayer)
    assert isinstance(Evaluator(cfg).player(tiny(), 0), PolicyPlayer)


def test_usi_options_start_from_the_config() -> None:
    lines: list[str] = []
    cfg = load_config(None, ["evaluation.greedy=false", "evaluation.sample_plies=0",
                             "evaluation.seed=5", "env.impasse=27"])
    engine = UsiEngine(tiny(), lines.append, config=cfg)
    engine.handle("usi")
    assert "option name Greedy type check default false" in lines
    assert "option name SamplePlies type spin default 0 min 0 max 512" in lines
    assert "option name Seed type spin default 5 min 0 max 2147483647" in lines
    assert "option name Impasse type check default true" in lines
    engine.handle("isready")
    player = engine.player
    assert isinstance(player, PolicyPlayer)
    assert (player.greedy, player.sample_plies) == (False, 0)
    engine.handle("setoption name SamplePlies value 4")
    engine.handle("isready")
    assert isinstance(engine.player, PolicyPlayer) and engine.player.sample_plies == 4


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keisei_ray.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_usi_command_applies_overrides_and_refuses_the_others(model_file: Path) -> None:
    done = run_cli("usi", str(model_file), "evaluation.sample_plies=0",
                   "evaluation.greedy=false", stdin="usi\nquit\n")
    assert done.returncode == 0, done.stderr
    assert "option name SamplePlies type spin default 0 min 0 max 512" in done.stdout
    assert "option name Greedy type check default false" in done.stdout
    refused = run_cli("usi", str(model_file), "evaluation.games=3", stdin="quit\n")
    assert refused.returncode == 2
    assert "'evaluation.games' does not apply" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_play_command_applies_overrides(model_file: Path) -> None:
    # env.max_moves=2: the agent opens as Black, one reply, and the game ends at the cap.
    done = run_cli("play", str(model_file), "--color", "white", "env.max_moves=2",
                   stdin="moves\n3c3d\n")
    assert done.returncode == 0, done.stderr
    assert "draw (max moves) after 2 plies" in done.stdout
    refused = run_cli("play", str(model_file), "train.seed=1", stdin="resign\n")
    assert refused.returncode == 2 and "'train.seed' does not apply" in refused.stderr
