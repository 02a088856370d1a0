"""Property-based fuzz targets for every parser and decoder that faces foreign input.

Each `Target` pairs a Hypothesis strategy (random, truncated, mutated and hostile inputs) with
a `check` that runs the parser on one case and asserts the contract: the input either parses
to a correct result (round-trips where one exists) or raises the owning module's own error,
with a bounded one-line-able message; never another exception, a hang, an allocation beyond
the stated bound, or silently wrong data. `tests/test_fuzz_*.py` run the targets with a small
`max_examples`; `keisei-ray bench fuzz --seconds N` runs them for a time budget each
(`fuzz_run.run_target`). The targets: `fuzz_text.py` (SFEN, USI, configs) and `fuzz_files.py`
(codec, records, checkpoints, model files). Hypothesis is a dev extra: importing these
modules without it raises ImportError, which the CLI turns into a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from shogi import (
    Position,
    RandomPlayer,
)

MAX_MESSAGE = 2_000
"""Longest error message a parser may produce (it is one CLI line; input is quoted clipped)."""
MAX_DECODE_ALLOC = 64 << 20
"""Most bytes `decode` may allocate for one hostile input of a few KB."""

# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One fuzz target: what to generate and what must hold for every generated case."""

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    doc: str = ""


@dataclass
class TargetReport:
    name: str
    cases: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


def _message_ok(exc: BaseException) -> None:
    text = str(exc)
    assert text, f"{type(exc).__name__} without a message"
    assert len(text) <= MAX_MESSAGE, f"{type(exc).__name__} message of {len(text)} chars"


# ----------------------------------------------------------------------------- games


def random_game(seed: int, plies: int, sfen: str | None = None) -> Position:
    """A position after up to `plies` random legal moves (fewer if the game ends)."""
    position = Position(sfen)
    player = RandomPlayer(seed)
    for _ in range(plies):
        if position.is_game_over():
            break
        position.push(player.choose(position))
    return position


_games = st.builds(random_game, st.integers(0, 2**31 - 1), st.integers(0, 120))

