"""The USI `go` command: its limits, and how long the engine may think on a move.

`GoLimits.parse` reads the arguments (`btime wtime binc winc byoyomi movetime nodes depth
infinite ponder`); `think_ms` turns them into the time to spend on this move, never more than
the clock holds: what is left (shared over the moves still to play), the increment and the
byoyomi of this move, less `NetworkDelay` kept in hand for the pipe's and the GUI's delays.
"""

from __future__ import annotations

from dataclasses import dataclass

MOVES_TO_GO = 30
"""Our moves the time left is shared over when the GUI does not say (USI has no movestogo),
fewer near the move cap."""


class UsiError(ValueError):
    """A USI command the engine cannot accept (the message says why, quoting it)."""


_NUMBERS = ("btime", "wtime", "byoyomi", "binc", "winc", "movetime", "nodes", "depth")
_FLAGS = ("infinite", "ponder")
_LIMIT = 2**62  # a bound on the numbers a GUI may send (a day is 8.64e7 ms)


@dataclass(frozen=True)
class GoLimits:
    """What one `go` allows: times in milliseconds, counts, and the two waiting modes."""

    btime: int | None = None
    wtime: int | None = None
    binc: int | None = None
    winc: int | None = None
    byoyomi: int | None = None
    movetime: int | None = None
    nodes: int | None = None
    depth: int | None = None  # accepted; a tree search has no fixed depth
    infinite: bool = False  # think until `stop`
    ponder: bool = False  # think on the opponent's time until `ponderhit` or `stop`

    @classmethod
    def parse(cls, args: list[str]) -> GoLimits:
        """The limits of `go ARGS`; UsiError names the first bad argument."""
        values: dict[str, int | bool] = {}
        i = 0
        while i < len(args):
            word = args[i]
            if word in _FLAGS:
                values[word] = True
                i += 1
                continue
            if word not in _NUMBERS:
                raise UsiError(f"go: unknown argument {clip(word)!r}")
            if i + 1 >= len(args):
                raise UsiError(f"go: {word} needs a number")
            values[word] = parse_int(word, args[i + 1], -_LIMIT, _LIMIT)
            i += 2
        return cls(**values)  # type: ignore[arg-type]

    @property
    def waits(self) -> bool:
        """The answer waits for `stop` (or `ponderhit`) whatever the search does."""
        return self.infinite or self.ponder

    def think_ms(self, black: bool, margin_ms: int, plies_left: int | None = None
                 ) -> float | None:
        """Milliseconds to think on this move for the side (`black` or not) to move; None:
        no clock at all (the search stops at its simulations, `nodes` or `stop`).

        `margin_ms` is kept in hand; `plies_left` (to the move cap) shortens the horizon the
        time left is shared over.
        """
        if self.movetime is not None:
            return float(max(self.movetime - margin_ms, 0))
        left = self.btime if black else self.wtime
        inc = self.binc if black else self.winc
        if left is None and inc is None and self.byoyomi is None:
            return None
        left, inc, byoyomi = max(left or 0, 0), max(inc or 0, 0), max(self.byoyomi or 0, 0)
        moves = MOVES_TO_GO
        if plies_left is not None:
            moves = max(1, min(moves, (plies_left + 1) // 2))
        usable = left + inc + byoyomi - margin_ms  # all this move may take
        target = left / moves + inc + byoyomi - margin_ms
        return float(max(0.0, min(target, usable)))


def parse_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsiError(f"{name} expects an integer, got {clip(value)!r}") from None
    if not low <= number <= high:
        raise UsiError(f"{name} must be in {low}..{high}, got {number}")
    return number


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
