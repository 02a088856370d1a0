"""The gauntlet (keisei_ray/arena/gauntlet.py): the fit with the rungs held fixed, the stored ladder
ratings, rating a ladder, and `keisei-ray gauntlet` end to end against the real engine."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.evaluation import Contestant, MatchResult
from keisei_ray.arena.gauntlet import (
    RUNGS,
    GauntletError,
    fit_fixed,
    gauntlet,
    ladder_pairs,
    load_ratings,
    plot_gauntlet,
    rate_ladder,
    ratings_path,
)
from keisei_ray.config import ModelConfig
from keisei_ray.config_loading import load_config
from keisei_ray.store.model_file import save_model
from learner.model import build_model, export_weights
from shogi.usi_engine import FAIRY_STOCKFISH, INSTALL_HINT


def result(opponent: str, wins: int, draws: int, losses: int) -> MatchResult:
    return MatchResult("model", opponent, wins, draws, losses)


def test_fit_with_fixed_rungs_has_the_known_values() -> None:
    # 75% against a rung at +100: 100 + 400 log10(3) without the prior.
    rating = fit_fixed([result("a", 30, 0, 10)], {"a": 100.0}, prior_draws=0.0)
    assert rating.elo == pytest.approx(100 + 400 * math.log10(3), abs=1e-6)
    # n games at p: half-width 1.96 * 400 / ln 10 / sqrt(n p (1 - p)).
    assert rating.ci95 == pytest.approx(1.959964 * 400 / math.log(10) / math.sqrt(40 * 0.1875),
                                        rel=1e-5)
    # Even scores against two rungs symmetric about 50: the middle.
    both = fit_fixed([result("a", 5, 0, 5), result("b", 4, 2, 4)], {"a": 0.0, "b": 100.0})
    assert both.elo == pytest.approx(50.0, abs=1e-6) and both.games == 20
    # A perfect score stays finite (one virtual draw).
    assert math.isfinite(fit_fixed([result("a", 20, 0, 0)], {"a": 0.0}).elo)
    with pytest.raises(GauntletError, match="'c' has no stored rating"):
        fit_fixed([result("c", 1, 0, 0)], {"a": 0.0})


def test_stored_ratings_cover_the_ladder() -> None:
    ratings = load_ratings()
    assert set(RUNGS) <= set(ratings) and ratings["random"] == 0.0
    document = json.loads(ratings_path().read_text())
    assert "--rate-ladder" in document["how"] and document["matches"]
    assert ratings["heuristic"] > ratings["random"]


def test_ladder_pairs_link_each_rung_to_the_next_ones() -> None:
    assert ladder_pairs(["a", "b", "c"], reach=2) == [("b", "a"), ("c", "a"), ("c", "b")]
    assert ladder_pairs(["a", "b", "c"], reach=1) == [("b", "a"), ("c", "b")]


def test_rate_ladder_and_gauntlet_on_scripted_rungs(tmp_path: Path) -> None:
    cfg = load_config(None, ["env.max_moves=120", "evaluation.games_at_once=4"])
    rungs = ("random", "heuristic", "mate")
    document = rate_ladder(cfg, 4, rungs=rungs, reach=2)
    assert [m["player"] for m in document["matches"]] == ["heuristic", "mate", "mate"]
    assert document["ratings"]["random"]["elo"] == 0.0
    ratings = {k: v["elo"] for k, v in document["ratings"].items()}
    done = gauntlet(cfg, Contestant.baseline("heuristic"), 4, rungs=("random", "mate"),
                    ratings=ratings)
    assert [row.rung for row in done.rows] == ["random", "mate"]
    assert all(row.result.games == 4 for row in done.rows)
    assert done.rows[0].result.as_black[0] + done.rows[0].result.as_black[2] \
        + done.rows[0].result.as_black[1] == 2  # colours alternated
    assert math.isfinite(done.rating.elo)
    assert plot_gauntlet(done, tmp_path / "g.png").stat().st_size > 1000
    # The player's own rung is left out.
    assert [r.rung for r in gauntlet(cfg, Contestant.baseline("mate"), 2, rungs=rungs,
                                     ratings=ratings).rows] == ["random", "heuristic"]
    with pytest.raises(GauntletError, match="rungs without a stored rating: mate"):
        gauntlet(cfg, Contestant.baseline("heuristic"), 2, rungs=("mate",),
                 ratings={"random": 0.0})


@pytest.mark.skipif(shutil.which(FAIRY_STOCKFISH) is None,
                    reason=f"Fairy-Stockfish is not installed (`{INSTALL_HINT}`)")
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gauntlet_command_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig(size="tiny")
    model = save_model(tmp_path / "tiny.pt", export_weights(build_model(config)), config,
                       {"timestep": 0})
    plot = tmp_path / "gauntlet.png"
    done = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "gauntlet", str(model), "-n", "2", "--json",
         "--plot", str(plot), "env.max_moves=160"],
        capture_output=True, text=True, timeout=580, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert [r["rung"] for r in figures["rungs"]] == list(RUNGS)
    assert all(r["games"] == 2 for r in figures["rungs"])
    assert math.isfinite(figures["elo"]) and plot.stat().st_size > 1000
    engine_rungs = [r for r in figures["rungs"] if r["rung"].startswith("sf-d")]
    assert all(r["wins"] == 0 for r in engine_rungs), engine_rungs  # an untrained net never
    # beats Fairy-Stockfish
