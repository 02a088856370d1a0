"""Words and numbers for people: signed figures that never read `-0`, and "did you mean".

Plain functions with no project imports, so every layer that prints or refuses something
(config errors, player names, Elo in logs and tables) says it the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


def signed(value: float, digits: int = 0) -> str:
    """`value` with its sign and `digits` decimals (`+12`, `-3.5`); one that rounds to zero
    is `+0` (Python's format writes `-0` for -0.3), and a non-finite one `nan` / `+inf`."""
    if math.isnan(value):
        return "nan"
    text = f"{value:+.{digits}f}"
    if math.isfinite(value) and float(text) == 0.0:
        return "+" + text[1:]
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` naming the choices closest to `word` (difflib's ratio of at
    least 0.6, and within 0.1 of the closest: a shared `section.` prefix makes every key of a
    section look alike; at most three), or `""` when none is close."""
    options = list(dict.fromkeys(choices))
    matches = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    if not matches:
        return ""
    best = difflib.SequenceMatcher(None, word, matches[0]).ratio()
    close = [repr(c) for c in matches
             if difflib.SequenceMatcher(None, word, c).ratio() >= best - 0.1]
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"; did you mean {listed}?"
