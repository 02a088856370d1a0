"""The gauntlet (keisei_ray/arena/gauntlet.py) and the rating of its ladder
(keisei_ray/arena/ladder_rating.py): the fit with the rungs held fixed, the stored ladder
ratings, engine failures left out, the plot, the scheduler, and `keisei-ray gauntlet` end to
end against the real engine."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from actors.evaluation import Contestant, GameRecord, MatchResult
from keisei_ray.arena import gauntlet as gauntlet_module
from keisei_ray.arena.elo import ELO_PER_NAT, PRIOR_DRAWS, Z95, EloStore
from keisei_ray.arena.evaluation import load_contestant, wilson_interval
from keisei_ray.arena.gauntlet import (
    RUNGS,
    GauntletError,
    GauntletResult,
    GauntletRow,
    failed_games,
    fit_fixed,
    gauntlet,
    load_ratings,
    play_clean,
    plot_gauntlet,
    ratings_path,
    spread,
    without_failures,
)
from keisei_ray.arena.ladder import LadderRow, ladder_figure
from keisei_ray.arena.ladder_rating import (
    LadderRating,
    ladder_pairs,
    play_openings,
    random_opening,
    rate_ladder,
)
from keisei_ray.cli import main
from keisei_ray.config import ModelConfig
from keisei_ray.config_loading import load_config
from keisei_ray.store.model_file import save_model
from learner.model import build_model, export_weights
from shogi.usi_engine import FAIRY_STOCKFISH, INSTALL_HINT

FAKE = Path(__file__).with_name("fake_usi_engine.py")
OLD_RATINGS = {"random": 0.0, "sf-skill-20": 598.7, "heuristic": 1144.0, "sf-skill-5": 976.1,
               "mate": 1250.9, "sf-skill-3": 1757.4, "sf-skill0": 1943.3, "sf-d1": 2272.9,
               "sf-d4": 2413.3}
"""The ladder's ratings before the re-rating (the issue's example was fitted on them)."""


def result(opponent: str, wins: int, draws: int, losses: int) -> MatchResult:
    return MatchResult("model", opponent, wins, draws, losses)


def test_fit_with_fixed_rungs_has_the_known_values() -> None:
    # 75% against a rung at +100: 100 + 400 log10(3), no prior.
    rating = fit_fixed([result("a", 30, 0, 10)], {"a": 100.0})
    assert rating.elo == pytest.approx(100 + 400 * math.log10(3), abs=1e-6)
    assert rating.bound is None
    # n games at p: half-width 1.96 * 400 / ln 10 / sqrt(n p (1 - p)).
    assert rating.ci95 == pytest.approx(1.959964 * 400 / math.log(10) / math.sqrt(40 * 0.1875),
                                        rel=1e-5)
    # Even scores against two rungs symmetric about 50: the middle.
    both = fit_fixed([result("a", 5, 0, 5), result("b", 4, 2, 4)], {"a": 0.0, "b": 100.0})
    assert both.elo == pytest.approx(50.0, abs=1e-6) and both.games == 20
    with pytest.raises(GauntletError, match="'c' has no stored rating"):
        fit_fixed([result("c", 1, 0, 0)], {"a": 0.0})


def test_a_weak_model_is_not_lifted_by_the_rungs_it_lost_to() -> None:
    # The model: 0/1/3 against random, every game lost against the other rungs.
    # With one virtual draw per rung it was rated +280 ± 285; its own games say a 12.5%
    # score against random, i.e. 400 log10(1/7) = -338 Elo, and losses elsewhere only lower it.
    results = [result("random", 0, 1, 3)] + [result(r, 0, 0, 20) for r in OLD_RATINGS
                                              if r != "random"]
    rating = fit_fixed(results, OLD_RATINGS)
    own = 400 * math.log10(0.125 / 0.875)
    assert own - 60.0 < rating.elo <= own + 1e-6  # (20 losses to sf-skill-20 cost 37 Elo)
    assert rating.bound is None and rating.games == 164


def test_all_lost_or_all_won_is_a_bound_beyond_the_rungs() -> None:
    lost = fit_fixed([result("a", 0, 0, 10), result("b", 0, 0, 10)], {"a": 500.0, "b": 900.0})
    assert lost.bound == "below" and math.isfinite(lost.elo) and lost.elo < 500.0
    won = fit_fixed([result("a", 10, 0, 0), result("b", 10, 0, 0)], {"a": 500.0, "b": 900.0})
    assert won.bound == "above" and math.isfinite(won.elo) and won.elo > 900.0
    # More games, a firmer bound: it moves away from the rung.
    more = fit_fixed([result("a", 0, 0, 100)], {"a": 500.0})
    assert more.elo < fit_fixed([result("a", 0, 0, 10)], {"a": 500.0}).elo


def test_wilson_interval_holds_the_score_and_stays_within_0_and_1() -> None:
    # The values: a lower bound of 2.8e-17 at 0 of 6, an upper of 0.9999999999999999
    # at 10 of 10 (a negative error bar for matplotlib).
    for wins, games in ((0, 6), (10, 10), (0, 1), (50, 50), (0, 100), (3, 7)):
        low, high = wilson_interval(wins, games)
        assert 0.0 <= low <= wins / games <= high <= 1.0
    assert wilson_interval(0, 6)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def perfect_and_zero() -> GauntletResult:
    rows = [GauntletRow("random", 0.0, result("random", 6, 0, 0)),
            GauntletRow("heuristic", 1144.0, result("heuristic", 3, 1, 2)),
            GauntletRow("sf-d1", 2272.9, result("sf-d1", 0, 0, 6)),
            GauntletRow("sf-d4", 2413.3, result("sf-d4", 0, 0, 6))]
    return GauntletResult("model", rows, fit_fixed([r.result for r in rows], OLD_RATINGS), 1.0)


def test_plot_with_rungs_at_0_and_100_percent(tmp_path: Path) -> None:
    # `gauntlet --games 6` crashed here after playing every game: negative error bars.
    assert plot_gauntlet(perfect_and_zero(), tmp_path / "g.png").stat().st_size > 1000


def test_rung_labels_are_spread_apart_in_order() -> None:
    crowded = [0.1, 0.3, 0.31, 0.32, 0.33, 0.9, 0.95, 1.0]
    spots = spread(crowded, gap=0.08)
    assert len(spots) == len(crowded)
    assert all(b - a >= 0.08 - 1e-9 for a, b in itertools.pairwise(spots))
    assert spots[0] >= 0.0 and spots[-1] <= 1.0
    assert spread([0.2, 0.6], gap=0.1) == pytest.approx([0.2, 0.6])  # nothing to move
    assert spread([], gap=0.1) == []


def _drawn_extents(figure: Any, texts: list[Any]) -> list[Any]:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    # A label's own text (Text's extent: an Annotation's adds its leader line).
    return [Text.get_window_extent(t, renderer) if isinstance(t, Text)
            else t.get_window_extent(renderer) for t in texts]


def test_rung_labels_of_a_crowded_gauntlet_do_not_overlap() -> None:
    # The labels used to sit beside the points and overlapped where rungs are close.
    crowded = {r: e for r, e in zip(RUNGS, [0, 200, 400, 600, 700, 760, 1150, 1190, 1230, 1700,
                                            1900, 2050, 2300, 2400, 2550, 2900, 3100],
                                    strict=False)}
    rows = [GauntletRow(r, e, result(r, 3, 0, 3)) for r, e in crowded.items()]
    figure = gauntlet_module.gauntlet_figure(
        GauntletResult("model", rows, fit_fixed([x.result for x in rows], crowded), 1.0))
    labels = [t for t in figure.axes[0].texts if t.get_text() in crowded]
    assert len(labels) == len(rows)
    boxes = _drawn_extents(figure, labels)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_ladder_legend_stands_clear_of_the_plot() -> None:
    store = EloStore()
    for k in range(8):
        store.record(f"ts-{k}", "random", 20, 0, 0)
        store.record(f"ts-{k}", "heuristic", 2 + 2 * k, 0, 18 - 2 * k)
    store.record("heuristic", "random", 30, 0, 0)
    rows = [LadderRow(f"ts-{k}", k * 1000, store.ratings()[f"ts-{k}"], {}) for k in range(8)]
    figure = ladder_figure(rows, store)
    axes = figure.axes[0]
    legend, frame = _drawn_extents(figure, [axes.get_legend(), axes])
    assert not legend.overlaps(frame)  # it covered the curve's last points before


def test_a_failed_plot_loses_neither_the_table_nor_the_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(result: GauntletResult, path: Path) -> Path:
        raise ValueError("'yerr' must not contain negative values")

    monkeypatch.setattr(gauntlet_module, "plot_gauntlet", broken)
    ratings = tmp_path / "ratings.json"
    ratings.write_text(json.dumps({"ratings": {"random": {"elo": 0.0},
                                               "heuristic": {"elo": 1144.0}}}))
    monkeypatch.setattr(gauntlet_module, "ratings_path", lambda: ratings)
    png = tmp_path / "out" / "g.png"
    with pytest.raises(SystemExit) as info:
        main(["gauntlet", "mate", "--rungs", "random,heuristic", "-n", "2", "--plot", str(png),
              "env.max_moves=60"])
    captured = capsys.readouterr()
    assert info.value.code == 1
    assert "Gauntlet of mate" in captured.out and "gauntlet Elo" in captured.out
    assert "the plot" in captured.err and "are complete" in captured.err
    report = json.loads(png.with_suffix(".json").read_text())
    assert [r["rung"] for r in report["rungs"]] == ["random", "heuristic"]
    assert all(r["games"] == 2 for r in report["rungs"])


def test_stored_ratings_cover_the_ladder() -> None:
    ratings = load_ratings()
    assert set(RUNGS) <= set(ratings) and ratings["random"] == 0.0
    document = json.loads(ratings_path().read_text())
    assert "--rate-ladder" in document["how"] and document["matches"]
    assert ratings["heuristic"] > ratings["random"]


def test_gauntlet_shows_the_raw_policy_and_its_search_side_by_side(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    config = ModelConfig(size="tiny")
    model = save_model(tmp_path / "tiny.pt", export_weights(build_model(config)), config,
                       {"timestep": 0})
    ratings = tmp_path / "ratings.json"
    ratings.write_text(json.dumps({"ratings": {"random": {"elo": 0.0},
                                               "mix10": {"elo": 300.0}}}))
    monkeypatch.setattr(gauntlet_module, "ratings_path", lambda: ratings)
    png = tmp_path / "g.png"
    with pytest.raises(SystemExit) as info:
        main(["gauntlet", str(model), "--search", "4", "--rungs", "random,mix10", "-n", "2",
              "--json", "--plot", str(png), "env.max_moves=40"])
    assert info.value.code in (0, None)
    document = json.loads(capsys.readouterr().out)
    assert document["search_simulations"] == 4
    assert [p["player"] for p in document["players"]] == ["tiny.pt,sims=0", "tiny.pt,sims=4"]
    assert all([r["rung"] for r in p["rungs"]] == ["random", "mix10"]
               for p in document["players"])
    assert json.loads(png.with_suffix(".json").read_text()) == document
    figure = gauntlet_module.gauntlet_figure([
        GauntletResult(p["player"], [GauntletRow(r["rung"], r["rung_elo"], result(
            r["rung"], r["wins"], r["draws"], r["losses"])) for r in p["rungs"]],
            fit_fixed([result("random", 1, 0, 1)], {"random": 0.0}), 1.0)
        for p in document["players"]])
    assert len(figure.axes[0].containers) == 2  # one series of score bars per player
    # A searched player needs a model: a scripted one is a usage error.
    with pytest.raises(SystemExit) as info:
        main(["gauntlet", "heuristic", "--search", "4", "--rungs", "random"])
    assert info.value.code == 2


def test_an_engine_that_cannot_play_stops_the_gauntlet_with_its_cause(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ratings = tmp_path / "ratings.json"
    ratings.write_text(json.dumps({"ratings": {"random": {"elo": 0.0}}}))
    monkeypatch.setattr(gauntlet_module, "ratings_path", lambda: ratings)
    with pytest.raises(SystemExit) as info:
        main(["gauntlet", f"usi:{sys.executable} {FAKE} timeonly,name=gpslike", "--rungs",
              "random", "-n", "4", "--plot", str(tmp_path / "g.png")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "without answering a single move" in err and "unknown option in go depth" in err


def test_ladder_pairs_link_each_rung_to_the_next_ones() -> None:
    assert ladder_pairs(["a", "b", "c"], reach=2) == [("b", "a"), ("c", "a"), ("c", "b")]
    assert ladder_pairs(["a", "b", "c"], reach=1) == [("b", "a"), ("c", "b")]
    with pytest.raises(ValueError, match="reach"):
        ladder_pairs(["a", "b"], reach=0)


def test_rate_ladder_and_gauntlet_on_scripted_rungs(tmp_path: Path) -> None:
    cfg = load_config(None, ["env.max_moves=120"])
    rungs = ("random", "heuristic", "mate")
    document = rate_ladder(cfg, 4, rungs=rungs, reach=2)
    assert [(m["player"], m["opponent"]) for m in document["matches"]] == [
        ("heuristic", "random"), ("mate", "random"), ("mate", "heuristic")]
    assert all(m["wins"] + m["draws"] + m["losses"] == 4 for m in document["matches"])
    assert document["ratings"]["random"]["elo"] == 0.0 and document["finished"]
    ratings = {k: v["elo"] for k, v in document["ratings"].items()}
    done = gauntlet(cfg, Contestant.baseline("heuristic"), 4, rungs=("random", "mate"),
                    ratings=ratings)
    assert [row.rung for row in done.rows] == ["random", "mate"]
    assert all(row.result.games == 4 for row in done.rows)
    assert sum(done.rows[0].result.as_black) == 2  # colours alternated
    assert math.isfinite(done.rating.elo)
    assert plot_gauntlet(done, tmp_path / "g.png").stat().st_size > 1000
    # The player's own rung is left out.
    assert [r.rung for r in gauntlet(cfg, Contestant.baseline("mate"), 2, rungs=rungs,
                                     ratings=ratings).rows] == ["random", "heuristic"]
    with pytest.raises(GauntletError, match="rungs without a stored rating: mate"):
        gauntlet(cfg, Contestant.baseline("heuristic"), 2, rungs=("mate",),
                 ratings={"random": 0.0})


def test_the_gauntlet_stops_climbing_after_rungs_it_cannot_score_against() -> None:
    cfg = load_config(None, ["env.max_moves=200"])
    ratings = {"random": 0.0, "mix10": 300.0, "heuristic": 1100.0, "mate": 1250.0}
    done = gauntlet(cfg, Contestant.baseline("random"), 2, rungs=tuple(ratings),
                    ratings=ratings, climb=1)
    # random scores nothing against heuristic-like play: it stops at the first zero.
    assert done.skipped and done.rows[-1].result.score == 0.0
    assert [r.rung for r in done.rows] + list(done.skipped) == ["mix10", "heuristic", "mate"]


def test_random_openings_are_reproducible_and_varied() -> None:
    first = random_opening(1)
    assert first == random_opening(1) and first.split()[-1] == "5"  # 4 plies played
    assert len({random_opening(seed) for seed in range(20)}) == 20


def test_each_opening_is_played_with_both_colours() -> None:
    cfg = load_config(None, ["env.max_moves=60"])
    done = play_openings(cfg, Contestant.baseline("heuristic"), Contestant.baseline("random"),
                         6, seed=3, first_game=4)
    assert done.games == 6 and len(done.records) == 6
    starts = [r.start_sfen for r in done.records]
    assert starts[0] == starts[1] and starts[2] == starts[3] and starts[0] != starts[2]
    assert [r.black for r in done.records] == ["heuristic", "random"] * 3
    with pytest.raises(ValueError, match="even"):
        play_openings(cfg, Contestant.baseline("heuristic"), Contestant.baseline("random"), 3,
                      seed=3, first_game=0)


def test_rating_with_a_target_plays_until_every_interval_is_within_it() -> None:
    cfg = load_config(None, ["env.max_moves=160"])
    rungs = ("random", "mix10", "mix30")
    saved: list[dict[str, object]] = []
    document = rate_ladder(cfg, 4, rungs=rungs, reach=2, target_ci=250.0,
                           checkpoint=saved.append)
    assert all(entry["ci95"] is not None and entry["ci95"] <= 250.0
               for entry in document["ratings"].values())
    played = sum(m["wins"] + m["draws"] + m["losses"] for m in document["matches"])
    assert played > 12  # more than the first 4 games per pair
    assert saved and not saved[-1]["finished"] and len(saved) >= 4  # progress after each task
    # A later run continues from the document: its games count, and new ones are added.
    more = rate_ladder(cfg, 4, rungs=rungs, reach=2, target_ci=200.0, start=document)
    again = sum(m["wins"] + m["draws"] + m["losses"] for m in more["matches"])
    assert again > played
    assert all(entry["ci95"] <= 200.0 for entry in more["ratings"].values())
    # With a shorter reach, a pair further apart still counts in the fit, and gets no games.
    near = rate_ladder(cfg, 2, rungs=rungs, reach=1, start=document)
    far = [m for m in near["matches"] if (m["player"], m["opponent"]) == ("mix30", "random")]
    assert far == [m for m in document["matches"]
                   if (m["player"], m["opponent"]) == ("mix30", "random")]


def test_the_scheduler_leaves_lopsided_pairs_alone() -> None:
    # Without the limit it poured thousands of cheap games into 94-98% pairs.
    state = LadderRating(load_config(None, []), ("random", "a", "b"), 2, 2, 10.0, None)
    for pair, (wins, losses) in {("a", "random"): (99, 1), ("b", "random"): (199, 1),
                                 ("b", "a"): (60, 40)}.items():
        tally = state.tally[pair]
        tally.wins, tally.losses, tally.seconds = wins, losses, 0.01 * (wins + losses)
    task = state.next_task()
    assert task is not None and task[0] == ("b", "a")


def test_a_plan_is_the_fewest_chunks_that_reach_the_target() -> None:
    # One pair: the rung's interval is Z95 / sqrt(games x p(1 - p)) in nats, at the fitted
    # score p (an independent computation of what the plan projects).
    state = LadderRating(load_config(None, []), ("random", "a"), 1, 2, 40.0, None)
    tally = state.tally[("a", "random")]
    tally.wins, tally.losses, tally.seconds = 30, 10, 40.0  # 1 s a game
    elo = state.store().ratings()["a"].elo
    p = 1.0 / (1.0 + math.exp(-elo / ELO_PER_NAT))

    def half_width(games: int) -> float:
        return Z95 * ELO_PER_NAT / math.sqrt((games + PRIOR_DRAWS) * p * (1.0 - p))

    plan = state.plan()
    more = plan.games[("a", "random")]
    chunk = state.chunk(("a", "random"))  # 240 games: 240 s of play at 1 s a game
    assert plan.reached and more % chunk == 0 and more >= chunk
    assert half_width(40 + more) <= 40.0 < half_width(40 + more - chunk)
    assert plan.ci95["a"] == pytest.approx(half_width(40 + more))
    assert plan.seconds == {("a", "random"): pytest.approx(more * 1.0)} and not plan.unpriced
    assert tally.pending == 0 and (tally.wins, tally.losses) == (30, 10)  # nothing changed


def test_a_plan_says_when_the_target_is_out_of_reach() -> None:
    # The only pair is lopsided (the scheduler plays it no more): the plan adds nothing.
    state = LadderRating(load_config(None, []), ("random", "a"), 1, 2, 40.0, None)
    state.tally[("a", "random")].wins = 200
    plan = state.plan()
    assert not plan.reached and plan.total == 0 and plan.ci95["a"] > 40.0


def test_rate_ladder_plan_prints_the_forecast_and_plays_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = tmp_path / "ratings.json"
    start.write_text(json.dumps({"matches": [
        {"player": "mix10", "opponent": "random", "wins": 15, "draws": 0, "losses": 5,
         "seconds": 2.0}]}))
    before = start.read_text()
    try:
        main(["gauntlet", "--rate-ladder", "--rungs", "random,mix10", "--target-ci", "80",
              "--continue-from", str(start), "--plan"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    assert "mix10 vs random" in out and "CPU-hours" in out and "widest interval then" in out
    assert start.read_text() == before and sorted(tmp_path.iterdir()) == [start]
    with pytest.raises(SystemExit) as info:
        main(["gauntlet", "--rate-ladder", "--plan", "--continue-from", str(start)])
    assert info.value.code == 2
    assert "--plan needs --target-ci" in capsys.readouterr().err


@pytest.mark.parametrize(("mode", "limit", "reason"), [
    ("hangonce", ",timeout=1", "engine_timeout"), ("garbleonce", "", "malformed_move")])
def test_games_an_engine_failed_in_are_left_out_and_replayed(tmp_path: Path, mode: str,
                                                             limit: str, reason: str) -> None:
    # The first engine process hangs (times out) or answers `bestmove 04_07_` at its third
    # move: that game says nothing about strength, so it is neither a win for random nor
    # counted at all. (A well-formed illegal move still is a loss: test_usi_engine.)
    cfg = load_config(None, ["env.max_moves=40", "evaluation.games_at_once=2"])
    flag = tmp_path / "failed"
    engine = load_contestant(f"usi:{sys.executable} {FAKE} {mode} {flag}{limit},name=fake")
    clean, excluded = play_clean(cfg, Contestant.baseline("random"), engine, 4, seed=0)
    assert flag.exists() and excluded == 1
    assert clean.games == 4 and not failed_games(clean)
    assert f"win_{reason}" not in clean.reasons


def test_without_failures_rebuilds_the_match_from_its_records() -> None:
    records = [GameRecord("a", "b", "startpos", ["7g7f"] * 3, 0, "checkmate"),
               GameRecord("b", "a", "startpos", ["7g7f"] * 5, 1, "engine_timeout"),
               GameRecord("a", "b", "startpos", ["7g7f"] * 7, None, "max_moves")]
    match = MatchResult("a", "b", 2, 1, 0, {"win_checkmate": 1, "win_engine_timeout": 1,
                                             "draw_max_moves": 1}, records=records)
    clean = without_failures(match)
    assert (clean.wins, clean.draws, clean.losses) == (1, 1, 0)
    assert clean.as_black == [1, 1, 0] and clean.as_white == [0, 0, 0]
    assert clean.reasons == {"win_checkmate": 1, "draw_max_moves": 1} and clean.plies == 10
    with pytest.raises(ValueError, match="records"):
        without_failures(MatchResult("a", "b", 1, 0, 0, {"win_engine_crash": 1}))


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
    played = [r["rung"] for r in figures["rungs"]]
    assert played + figures["skipped"] == list(RUNGS)  # climbing stops after two zeros
    assert all(r["games"] == 2 for r in figures["rungs"])
    assert [r["score"] for r in figures["rungs"][-2:]] == [0.0, 0.0] or not figures["skipped"]
    assert math.isfinite(figures["elo"]) and plot.stat().st_size > 1000
    assert json.loads(plot.with_suffix(".json").read_text()) == figures


def test_a_rating_that_rounds_to_zero_never_prints_as_minus_zero() -> None:
    from keisei_ray.arena.gauntlet import FixedRating, _elo_cell

    near_zero = FixedRating("m", -0.3, 80.0, 10, 0.5)
    assert _elo_cell(near_zero) == "+0 ± 80"
    assert _elo_cell(FixedRating("m", -0.4, 0.0, 10, 0.0, bound="below")) == "< +0"
