"""The USI engine's search: one `go` answered by `actors.search.TreeSearch` within the clock
the GUI gives (`arena/usi_go.py`), with its `info` lines.

`GoJob` is one `go` and the signals the engine's reader thread sends its worker (`stop`,
`ponderhit`); `EngineSearch` searches it: pondering until `ponderhit` (then on the clock from
there, in the same tree) or `stop`, `infinite` until `stop`, else until the move's time, its
`nodes` or the `Simulations` are spent. How many simulations fit the time comes from the
speed measured at the warm-up and on the moves since; a search that spends its estimate early
goes on in the kept tree, and the deadline stops a slower one with its best move so far.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from actors.search import SearchResult, TreeSearch
from keisei_ray.arena.usi_go import GoLimits
from keisei_ray.config import SearchConfig
from shogi import Color, Position, ShogiError
from shogi.tactics import forced_mate

CP_PER_NAT = 600.0
"""Centipawns per unit of log-odds when turning a value into a `score cp`."""
WARM_UP_SIMULATIONS = 32
"""Simulations of each warm-up search (the network's first forwards, and its speed)."""
INFO_INTERVAL_S = 0.5
"""Seconds between `info` lines while searching."""
MIN_EXTENSION_MS = 20.0
"""A search that spent its estimated budget early goes on only if this much time is left."""


def value_to_cp(value: float) -> int:
    """A [-1, 1] value as centipawns on a logistic scale: 600 ln((1 + v) / (1 - v)).

    The expected score (value + 1) / 2 is kept within [1e-9, 1 - 1e-9], so a certain win
    reads as +12434 rather than infinity.
    """
    win = min(max((value + 1.0) / 2.0, 1e-9), 1.0 - 1e-9)
    return round(CP_PER_NAT * math.log(win / (1.0 - win)))


@dataclass
class GoJob:
    """One `go` answered by the worker thread, and the signals the reader thread sends it."""

    position: Position | None
    limits: GoLimits
    received: float  # time.monotonic() when `go` arrived: the clock runs from here
    stop: threading.Event = field(default_factory=threading.Event)  # stop, or idle needed
    ponder_end: threading.Event = field(default_factory=threading.Event)  # ponderhit or stop
    settled: threading.Event = field(default_factory=threading.Event)  # answered, or holding
    lock: threading.Lock = field(default_factory=threading.Lock)
    hit_at: float | None = None  # time.monotonic() of `ponderhit`: the clock runs from here
    answered: bool = False
    nodes_done: int = 0  # simulations of the searches of this `go` before the current one
    thread: threading.Thread | None = None

    def elapsed_ms(self) -> int:
        """Milliseconds since `go` arrived (at least 1)."""
        return max(1, int(1000 * (time.monotonic() - self.received)))


class EngineSearch:
    """A network's tree search for the USI engine; `write` takes its `info` lines."""

    def __init__(self, model: nn.Module, settings: SearchConfig, write: Callable[[str], None],
                 *, seed: int, max_moves: int, simulations: int) -> None:
        self.settings = settings
        self.write = write
        self.searcher = TreeSearch(model, settings, seed=seed, max_moves=max_moves)
        self.nps = 0.0  # simulations per second lately
        for _ in range(2):  # the first pays for allocations: the second measures the speed
            self.searcher.reset()
            started = time.monotonic()
            warm = self.searcher.search(Position(), simulations=min(WARM_UP_SIMULATIONS,
                                                                    simulations))
            seconds = time.monotonic() - started
        if warm.nodes > 0 and seconds > 0:
            self.nps = warm.nodes / seconds
        self.searcher.reset()

    def reset(self) -> None:
        """A new game: no tree of the last one."""
        self.searcher.reset()

    def answer(self, job: GoJob, position: Position, *, simulations: int, margin_ms: int,
               sample: bool, ponder: bool) -> str | None:
        """The move (with `ponder MOVE` when `ponder` and the principal variation has one)
        after the search's `info` lines; None when there is no time to search at all."""
        limits = job.limits
        cap = position.max_moves
        plies_left = None if cap is None else cap - position.ply
        black = position.turn == Color.BLACK
        most = simulations if limits.nodes is None else max(0, limits.nodes)

        def run(budget: int, deadline: float | None, stop: threading.Event) -> SearchResult:
            started = time.monotonic()
            result = self.searcher.search(
                position, simulations=budget, deadline=deadline, stop=stop,
                on_info=lambda r: self.info(job, position, r), info_interval_s=INFO_INTERVAL_S,
                sample=sample)
            seconds = time.monotonic() - started
            if result.nodes > 0 and seconds > 0.05:  # fast answers measure overheads only
                speed = result.nodes / seconds
                self.nps = speed if self.nps <= 0 else 0.5 * (self.nps + speed)
            return result

        def fits(ms: float) -> int:
            # As many simulations as fit the time at the speed seen lately (a Gumbel root
            # spreads its halving over them); the deadline still stops a slower search.
            return int(self.nps * ms / 1000.0) if self.nps > 0 else most

        def on_clock(start: float, stop: threading.Event) -> SearchResult | None:
            think_ms = limits.think_ms(black, margin_ms, plies_left)
            if think_ms is None:
                return run(most, None, stop)
            deadline = start + think_ms / 1000.0
            budget = min(most, fits(think_ms))
            if budget <= 0:
                return None
            result = run(budget, deadline, stop)
            while (self.settings.reuse_tree and result.nodes >= budget and not result.mate
                   and not stop.is_set()):
                job.nodes_done += result.nodes
                left_ms = 1000.0 * (deadline - time.monotonic())
                budget = min(most - job.nodes_done, fits(left_ms))
                if budget <= 0 or left_ms < MIN_EXTENSION_MS:
                    break
                result = run(budget, deadline, stop)
            return result

        found: SearchResult | None
        if limits.ponder:
            found = run(most, None, job.ponder_end)
            if job.hit_at is not None and not job.stop.is_set() and \
                    found.nodes < most and not found.mate:
                # ponderhit: the move is ours now; the kept tree goes on, on the clock.
                job.nodes_done += found.nodes
                found = on_clock(job.hit_at, job.stop) or found
        elif limits.infinite:
            found = run(most, None, job.stop)
        else:
            found = on_clock(job.received, job.stop)
            if found is None:
                return None
        self.info(job, position, found)
        if ponder and len(found.pv) >= 2:
            return f"{found.move} ponder {found.pv[1]}"
        return found.move

    def info(self, job: GoJob, position: Position, result: SearchResult) -> None:
        """One `info` line of a search's current best (nodes and time: the whole `go`'s)."""
        elapsed = job.elapsed_ms()
        nodes = job.nodes_done + result.nodes
        self.write(f"info depth {max(1, result.depth)} seldepth {max(1, result.seldepth)} "
                   f"nodes {nodes} nps {1000 * nodes // elapsed} time {elapsed} "
                   f"score {self.score(position, result)} "
                   f"pv {' '.join(result.pv or [result.move])}")

    def score(self, position: Position, result: SearchResult) -> str:
        """`mate N` for a mate the search proved (a mating move, or cshogi's mate search),
        else `cp` from the value (`value_to_cp`)."""
        if result.mate or result.depth <= 1 or result.value >= 1.0:
            line = position.copy()
            try:
                line.push_usi(result.move)
                over = line.outcome()
            except ShogiError:
                over = None
            if over is not None and over.winner == position.turn:
                return "mate 1"
            if result.mate:
                for plies in range(3, self.settings.mate_plies + 1, 2):
                    if forced_mate(position.copy(), plies) is not None:
                        return f"mate {plies}"
                return "mate +"
        return f"cp {value_to_cp(result.value)}"
