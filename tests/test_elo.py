"""The Elo store by known values: Bradley-Terry maximum likelihood, Fisher intervals, prior."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from keisei_ray.arena.elo import (
    ANCHOR,
    ELO_PER_NAT,
    Z95,
    EloError,
    EloStore,
    Record,
    elo_difference,
    expected_score,
)


def store(prior: float = 0.0) -> EloStore:
    return EloStore(prior_draws=prior)


def test_score_and_difference_are_inverse() -> None:
    assert elo_difference(0.75) == pytest.approx(190.848, abs=1e-3)  # 400 log10 3
    assert elo_difference(0.5) == 0.0
    assert elo_difference(0.25) == pytest.approx(-190.848, abs=1e-3)
    for d in (-600.0, -35.5, 0.0, 120.0, 800.0):
        assert elo_difference(expected_score(d)) == pytest.approx(d)
    with pytest.raises(EloError, match="strictly between 0 and 1, got 1.0"):
        elo_difference(1.0)


def test_75_percent_is_plus_191_with_the_fisher_interval() -> None:
    s = store()
    s.record("ts-100", ANCHOR, wins=75, draws=0, losses=25)
    r = s.rating("ts-100")
    assert r.elo == pytest.approx(190.848, abs=1e-3)
    assert r.games == 100 and r.score == pytest.approx(0.75)
    expected_ci = Z95 * ELO_PER_NAT / math.sqrt(100 * 0.75 * 0.25)
    assert r.ci95 == pytest.approx(expected_ci, rel=1e-6)
    assert r.ci95 == pytest.approx(78.6, abs=0.1)
    assert s.rating(ANCHOR).elo == 0.0 and s.rating(ANCHOR).ci95 == 0.0


def test_draws_count_half() -> None:
    wins_only = store()
    wins_only.record("a", ANCHOR, 75, 0, 25)
    with_draws = store()
    with_draws.record("a", ANCHOR, 50, 50, 0)  # also 75 points of 100
    assert with_draws.rating("a").elo == pytest.approx(wins_only.rating("a").elo)


def test_symmetric_cases() -> None:
    s = store()
    s.record("a", ANCHOR, 30, 10, 30)
    assert s.rating("a").elo == pytest.approx(0.0, abs=1e-9)
    # Recording from the other side gives the same ratings.
    one, two = store(), store()
    one.record("a", ANCHOR, 60, 5, 35)
    two.record(ANCHOR, "a", 35, 5, 60)
    assert one.rating("a").elo == pytest.approx(two.rating("a").elo)
    assert one.rating("a").ci95 == pytest.approx(two.rating("a").ci95)
    # Mirror: a player losing 25-75 sits at -191.
    mirror = store()
    mirror.record("weak", ANCHOR, 25, 0, 75)
    assert mirror.rating("weak").elo == pytest.approx(-190.848, abs=1e-3)


def test_chain_adds_up_and_order_does_not_matter() -> None:
    games = [("b", ANCHOR, 75, 0, 25), ("c", "b", 75, 0, 25)]
    forward, backward = store(), store()
    for g in games:
        forward.record(*g)
    for g in reversed(games):
        backward.record(*g)
    assert forward.rating("b").elo == pytest.approx(190.848, abs=1e-3)
    assert forward.rating("c").elo == pytest.approx(381.697, abs=1e-3)
    for p in ("b", "c"):
        assert backward.rating(p).elo == pytest.approx(forward.rating(p).elo)
    # c is two links away: its interval is wider than b's.
    assert forward.rating("c").ci95 > forward.rating("b").ci95


def test_maximum_likelihood_with_a_cycle_matches_a_direct_fit() -> None:
    s = store()
    s.record("h", ANCHOR, 80, 0, 20)
    s.record("x", ANCHOR, 90, 0, 10)
    s.record("x", "h", 40, 20, 40)
    # At the optimum the expected points of each player equal its actual points.
    r = {p: s.rating(p).elo for p in ("h", "x")}
    r[ANCHOR] = 0.0

    def expected(a: str, b: str, n: int) -> float:
        return n * expected_score(r[a] - r[b])

    assert expected("h", ANCHOR, 100) + expected("h", "x", 100) == pytest.approx(80 + 50, abs=1e-6)
    assert expected("x", ANCHOR, 100) + expected("x", "h", 100) == pytest.approx(90 + 50, abs=1e-6)


def test_prior_keeps_perfect_scores_finite() -> None:
    s = EloStore()  # the default prior: one virtual draw per pair
    s.record("ts-1", ANCHOR, 200, 0, 0)
    r = s.rating("ts-1")
    assert math.isfinite(r.elo) and math.isfinite(r.ci95)
    assert r.elo == pytest.approx(elo_difference(200.5 / 201), abs=1e-6)
    assert r.games == 200 and r.score == 1.0
    no_prior = store()
    no_prior.record("ts-1", ANCHOR, 200, 0, 0)
    assert no_prior.rating("ts-1").ci95 == math.inf


def test_unconnected_players_have_no_rating() -> None:
    s = store()
    s.record("a", ANCHOR, 5, 0, 5)
    s.record("x", "y", 3, 0, 1)
    assert set(s.ratings()) == {ANCHOR, "a"}
    with pytest.raises(EloError, match="no rating for 'x'"):
        s.rating("x")


def test_bad_input_is_named() -> None:
    s = store()
    with pytest.raises(EloError, match="against itself"):
        s.record("a", "a", 1, 0, 0)
    with pytest.raises(EloError, match=r"integers >= 0, got \(1, -1, 0\)"):
        s.record("a", "b", 1, -1, 0)
    with pytest.raises(EloError, match="non-empty strings"):
        s.record("", "b", 1, 0, 0)
    with pytest.raises(EloError, match="prior_draws"):
        EloStore(prior_draws=-1)


def test_state_round_trip_through_json() -> None:
    s = EloStore()
    s.record("heuristic", ANCHOR, 40, 3, 21)
    s.record("ts-10", ANCHOR, 50, 2, 12)
    s.record("ts-10", "heuristic", 20, 4, 40)
    state = json.loads(json.dumps(s.state_dict()))
    restored = EloStore(prior_draws=5.0)
    restored.load_state_dict(state)
    assert restored.prior_draws == s.prior_draws
    assert restored.players == s.players
    assert sorted(restored.records(), key=str) == sorted(s.records(), key=str)
    for name, rating in s.ratings().items():
        assert restored.rating(name) == rating
    with pytest.raises(EloError, match="not an Elo store state"):
        restored.load_state_dict({"anchor": "random"})
    assert restored.ratings() == s.ratings()  # a bad state changed nothing


def test_records_and_from_records() -> None:
    s = store()
    s.record("a", ANCHOR, 3, 1, 2)
    s.record(ANCHOR, "a", 1, 0, 0)
    (record,) = s.records()
    assert record.games == 7
    again = EloStore.from_records([record], prior_draws=0.0)
    assert again.rating("a").elo == pytest.approx(s.rating("a").elo)
    assert Record("a", "b", 1, 2, 3).games == 6


def test_many_players_fit_is_consistent() -> None:
    rng = np.random.default_rng(0)
    true = {ANCHOR: 0.0, "h": 150.0, **{f"ts-{i}": 50.0 * i for i in range(1, 9)}}
    s = EloStore()
    names = list(true)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            n = 400
            wins = int(rng.binomial(n, expected_score(true[a] - true[b])))
            s.record(a, b, wins, 0, n - wins)
    for name, value in true.items():
        r = s.rating(name)
        assert abs(r.elo - value) < max(3 * r.ci95 / Z95, 1e-9), (name, r)


def test_warm_started_fit_equals_a_fresh_fit() -> None:
    games = [("h", ANCHOR, 40, 5, 19), ("ts-1", ANCHOR, 20, 10, 34), ("ts-1", "h", 5, 2, 57),
             ("ts-2", ANCHOR, 60, 0, 4), ("ts-2", "ts-1", 50, 6, 8), ("ts-2", "h", 30, 4, 30)]
    incremental = EloStore()
    for g in games:
        incremental.record(*g)
        incremental.ratings()  # each fit starts from the previous one
    fresh = EloStore.from_records([Record(*g) for g in games])
    for name, rating in fresh.ratings().items():
        assert incremental.rating(name).elo == pytest.approx(rating.elo, abs=1e-6)
        assert incremental.rating(name).ci95 == pytest.approx(rating.ci95, rel=1e-6)
