"""The tree search's results pinned: moves, visit counts, principal variations and node counts
of fixed searches (the exact network of tests/test_search.py, fixed seeds), recorded from the
search before its bookkeeping was made cheaper (issue 21). Any change to what the search
decides shows here; a change of speed alone does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors.search import TreeSearch
from keisei_ray.config import SearchConfig
from shogi import Position
from tests.test_search import CYCLE, PERPETUAL, ExactNet, random_position, replay

GOLDEN = Path(__file__).with_name("search_golden.json")


def searched() -> dict[str, Any]:
    """Each case: the searches of a few positions together (one sampled), then three plies of
    one game searched move by move with the kept tree."""
    net = ExactNet(1)
    cases: dict[str, Any] = {}
    for gumbel in (True, False):
        config = SearchConfig(simulations=20, gumbel=gumbel, gumbel_moves=6,
                              leaves_per_forward=3, mate_plies=3)
        search = TreeSearch(net, config, seed=7)
        positions = [random_position(seed, plies) for seed, plies in ((11, 0), (12, 9),
                                                                        (13, 40))]
        positions.append(replay(Position(PERPETUAL), CYCLE * 2 + CYCLE[:3]))
        results = search.search_many(positions, sample=[False, True, False, False])
        game = random_position(14, 20)
        for _ in range(3):
            result = search.search(game)
            results.append(result)
            game.push_usi(result.move)
        cases["gumbel" if gumbel else "puct"] = [
            {"move": r.move, "visits": r.visits, "pv": r.pv, "nodes": r.nodes,
             "value": round(r.value, 6)} for r in results]
    return cases


def test_the_search_decides_as_recorded() -> None:
    assert searched() == json.loads(GOLDEN.read_text())
