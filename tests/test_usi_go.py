"""The USI `go` arguments and the time a move may take (keisei_ray/arena/usi_go.py)."""

from __future__ import annotations

import pytest

from keisei_ray.arena.usi_go import MOVES_TO_GO, GoLimits, UsiError


def test_parse_reads_every_argument() -> None:
    line = "ponder btime 1000 wtime 2000 binc 10 winc 20 byoyomi 300 movetime 50 nodes 7 depth 3"
    limits = GoLimits.parse(line.split())
    assert limits == GoLimits(1000, 2000, 10, 20, 300, 50, 7, 3, infinite=False, ponder=True)
    assert limits.waits and GoLimits.parse(["infinite"]).waits and not GoLimits().waits
    for bad, message in ((["btime"], "btime needs a number"),
                         (["btime", "soon"], "btime expects an integer, got 'soon'"),
                         (["wtime", "1", "fast"], "unknown argument 'fast'"),
                         (["nodes", str(2**63)], "nodes must be in")):
        with pytest.raises(UsiError, match=message):
            GoLimits.parse(bad)


def test_byoyomi_and_movetime_keep_the_margin() -> None:
    assert GoLimits(btime=0, wtime=0, byoyomi=1000).think_ms(True, 250) == 750
    assert GoLimits(byoyomi=100).think_ms(False, 250) == 0  # never below zero
    assert GoLimits(movetime=400, btime=10**6).think_ms(True, 100) == 300  # movetime rules
    # Main time left before byoyomi: a share of it on top.
    assert GoLimits(btime=60_000, byoyomi=1000).think_ms(True, 250) == \
        60_000 / MOVES_TO_GO + 750
    assert GoLimits().think_ms(True, 250) is None  # no clock: simulations or stop decide


def test_sudden_death_never_spends_more_than_the_clock_holds() -> None:
    # Black's clock is used for Black, White's for White; the increment of this move counts.
    limits = GoLimits(btime=30_000, wtime=3_000, binc=500, winc=0)
    assert limits.think_ms(True, 200) == 30_000 / MOVES_TO_GO + 500 - 200
    assert limits.think_ms(False, 50) == 3_000 / MOVES_TO_GO - 50
    assert limits.think_ms(False, 200) == 0  # less left than the margin: answer at once
    assert GoLimits(btime=-500, binc=100).think_ms(True, 50) == 50  # a late GUI: 0 left
    # Near the move cap the time left is shared over fewer moves, and never beyond it.
    assert GoLimits(btime=10_000).think_ms(True, 0, plies_left=4) == 10_000 / 2
    assert GoLimits(btime=10_000).think_ms(True, 0, plies_left=1) == 10_000
    # Every move thinking its budget, overrunning a search by 100 ms (under the margin) and
    # taking 10 ms to answer at once (the raw policy's forward), never flags in 300 moves
    # of ours with 10 s and no increment, or ever with an increment.
    for inc, moves in ((0, 300), (200, 2000)):
        left, margin = 10_000.0, 150
        for _ in range(moves):
            think = GoLimits(btime=int(left), binc=inc).think_ms(True, margin)
            assert think is not None
            left = left + inc - (think + 100 if think > 0 else 10)
            assert left > 0
