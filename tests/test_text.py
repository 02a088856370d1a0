"""Figures and suggestions for people: signed numbers never read -0; "did you mean"."""

from __future__ import annotations

import math

from keisei_ray.text import did_you_mean, signed


def test_signed_never_prints_minus_zero() -> None:
    assert f"{-0.3:+.0f}" == "-0"  # what Python's format does, and what an Elo must not read
    assert signed(-0.3) == "+0" and signed(-0.04, 1) == "+0.0" and signed(-0.0) == "+0"
    assert signed(0.4) == "+0" and signed(-0.6) == "-1" and signed(12.345, 1) == "+12.3"
    assert signed(-93.0, 1) == "-93.0"
    assert signed(math.inf) == "+inf" and signed(-math.inf) == "-inf"
    assert signed(math.nan) == "nan"


def test_did_you_mean_names_only_the_closest() -> None:
    assert did_you_mean("heurstic", ["random", "heuristic", "mate"]) == (
        "; did you mean 'heuristic'?")
    assert did_you_mean("xyzzy", ["random", "heuristic"]) == ""
    # A shared section prefix does not make every key of the section a suggestion.
    keys = ["ppo.learning_rate", "ppo.final_learning_rate", "ppo.clip_range"]
    assert did_you_mean("ppo.learning_rat", keys) == "; did you mean 'ppo.learning_rate'?"
    assert did_you_mean("sf-d5", ["sf-d1", "sf-d2", "sf-d4"]) == (
        "; did you mean 'sf-d4', 'sf-d2' or 'sf-d1'?")
