"""`keisei-ray evaluate` and `keisei-ray ladder` end to end (in process, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actors.evaluation import MatchResult
from keisei_ray.arena.elo import elo_difference
from keisei_ray.arena.evaluation import MatchSummary, wilson_interval
from keisei_ray.arena.ladder import run_models
from keisei_ray.config import ModelConfig
from keisei_ray.store.model_file import save_model
from learner.model import build_model, export_weights
from tests.test_cli import run_cli

FAST = ["env.max_moves=40"]


def tiny_model(path: Path, seed: int, timestep: int | None) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(size="tiny")
    meta = {} if timestep is None else {"timestep": timestep}
    return save_model(path, export_weights(build_model(config)), config, meta)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(0.8389, abs=1e-4)


def test_evaluate_prints_the_score_and_checks(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    code, out, _ = run_cli(["evaluate", "heuristic", "random", "-n", "6", "--min-win-rate",
                            "0.5", "--score-above", "0.5", "--records", str(tmp_path / "games"),
                            "env.max_moves=300"], capsys)
    assert code == 0, out
    assert "heuristic vs random: 6 games (colours alternated)" in out
    assert "score " in out and "95% interval" in out and "Elo difference +" in out
    assert "PASS: win rate" in out and "PASS: score" in out
    kifs = sorted((tmp_path / "games").glob("*.kif"))
    assert [p.name for p in kifs] == ["001-heuristic-vs-random.kif",
                                      "002-random-vs-heuristic.kif"]
    assert len(list((tmp_path / "games").glob("*.svg"))) == 2


def test_evaluate_json_and_a_failed_check(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.pt", 0, 10)
    code, out, _ = run_cli(["evaluate", str(model), "heuristic", "-n", "4", "--json",
                            "--score-above", "0.99", *FAST], capsys)
    assert code == 1  # a random-weight network does not beat the heuristic
    data = json.loads(out)
    assert data["player"] == "m.pt" and data["opponent"] == "heuristic"
    assert data["games"] == 4 == data["wins"] + data["draws"] + data["losses"]
    assert data["as_black"][0] + data["as_black"][1] + data["as_black"][2] == 2
    assert list(data["checks"].values()) == [False]
    assert list(data["checks"]) == [f"score {100 * data['score']:.1f}% (required: above 99.0%)"]
    low, high = data["score_ci95"]
    assert low <= data["score"] <= high


def test_evaluate_bad_input_is_one_line(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    code, _, err = run_cli(["evaluate", "random", "random", "-n", "2"], capsys)
    assert code == 2 and "two different players, got 'random' twice" in err
    code, _, err = run_cli(["evaluate", str(tmp_path / "x.pt"), "random"], capsys)
    assert code == 2 and "x.pt': not found (no model file, checkpoint or run folder" in err
    code, _, err = run_cli(["evaluate", "heurstic", "random"], capsys)
    assert code == 2 and "player 'heurstic': not found" in err
    assert err.strip().endswith("did you mean 'heuristic'?")
    code, _, err = run_cli(["evaluate", "heuristic", "random", "-n", "0"], capsys)
    assert code == 2 and "--games must be at least 1" in err
    assert "Traceback" not in err


def test_match_summary_lines() -> None:
    result = MatchResult("a", "b", wins=75, draws=0, losses=25, reasons={"win_checkmate": 75,
                                                                         "loss_checkmate": 25})
    summary = MatchSummary.of(result)
    # 75 of 100 points plus the prior's virtual draw: 75.5 of 101.
    assert summary.elo.elo == pytest.approx(elo_difference(75.5 / 101))
    text = "\n".join(summary.lines())
    assert "+75 =0 -25" in text and "win checkmate 75" in text and "loss checkmate 25" in text
    # A difference that rounds to zero reads +0, never -0 (1000 wins, 1001 losses: -0.35 Elo).
    even = MatchSummary.of(MatchResult("a", "b", wins=1000, draws=0, losses=1001))
    assert -0.5 < even.elo.elo < 0
    assert "Elo difference +0 ± 15 (95%)" in even.lines()


@pytest.mark.slow
def test_ladder_rates_the_models_of_a_run(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny_model(run / "exports" / "early.pt", 1, 1000)
    tiny_model(run / "exports" / "late.pt", 2, 3000)
    tiny_model(run / "model-2000.pt", 3, None)  # the timestep from the name
    broken = run / "checkpoints" / "ckpt-000000004000"
    broken.mkdir(parents=True)
    (broken / "learner.pt").write_bytes(b"not a checkpoint")  # skipped with a warning
    assert [(m.name, m.timestep) for m in run_models(run)] == [
        ("ts-1000", 1000), ("ts-2000", 2000), ("ts-3000", 3000)]
    code, out, _ = run_cli(["ladder", str(run), "-n", "2", *FAST], capsys)
    assert code == 0, out
    for name in ("ts-1000", "ts-2000", "ts-3000"):
        assert name in out
    assert "heuristic: Elo" in out
    png = run / "ladder.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(["ladder", str(tmp_path / "empty")], capsys)
    assert code == 2 and "not found" in err
    (tmp_path / "nothing").mkdir()
    code, _, err = run_cli(["ladder", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no checkpoints or model files" in err
