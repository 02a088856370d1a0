"""`keisei-ray bench search`: what the tree search costs beside its network.

For each model size and number of trees searched at once (1: the USI engine; 64: a match),
a fresh network searches mid-game positions (random games, 40 plies in) with the schema's
search settings; the figures are simulations/s and leaf evaluations/s, the mean batch of a
forward, and pure batched inference of the same model at that batch size (features + forward
from compact states of the same positions: the network's share of the search, nothing else).
The tree's own share of the time is 1 - (time in features + forward) / total time. Every rate
is given per wall-clock second and per CPU second of this process: on a machine shared with
other work the CPU-time figures are the ones that compare (the wall-clock ones move with the
load). Measures and returns its figures; nothing here asserts a speed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from actors.search import TreeSearch
from keisei_ray.config import load_config
from learner.features import encode_planes, to_tensors
from learner.model import build_model
from shogi import CompactState, Position


def midgame_positions(count: int, plies: int = 40, seed: int = 0) -> list[Position]:
    """`count` positions after `plies` random moves from the start (distinct games)."""
    positions = []
    for k in range(count):
        rng = random.Random(seed * 100_003 + k)
        position = Position()
        while position.ply < plies:
            moves = position.legal_moves()
            if not moves:
                break
            position.push(rng.choice(moves))
        if position.is_game_over():
            position.pop()
        positions.append(position)
    return positions


class _Inference:
    """Features + forward at one batch size (the positions repeated), timed round by round."""

    def __init__(self, model: torch.nn.Module, positions: Sequence[Position], batch: int,
                 max_moves: int) -> None:
        self.model, self.batch, self.max_moves = model, batch, max_moves
        self.state = CompactState.concat([positions[k % len(positions)].compact()
                                          for k in range(batch)])
        self.best_wall = self.best_cpu = 0.0  # positions per second, the best round

    @torch.inference_mode()
    def round(self, forwards: int = 3) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(forwards):
            self.model(encode_planes(to_tensors(self.state), self.max_moves))
        done = forwards * self.batch
        self.best_wall = max(self.best_wall, done / (time.perf_counter() - start))
        self.best_cpu = max(self.best_cpu, done / max(time.process_time() - cpu, 1e-9))


@dataclass
class _Call:
    """One timed search_many call."""

    wall: float
    cpu: float
    network_wall: float
    network_cpu: float
    simulations: int
    evaluations: int
    forwards: int


def _timed_call(search: TreeSearch, positions: list[Position]) -> _Call:
    network, network_cpu = search.network_seconds, search.network_cpu_seconds
    evaluated, forwarded = search.evaluations, search.forwards
    start, cpu = time.perf_counter(), time.process_time()
    results = search.search_many(positions)
    return _Call(time.perf_counter() - start, time.process_time() - cpu,
                 search.network_seconds - network, search.network_cpu_seconds - network_cpu,
                 sum(r.nodes for r in results), search.evaluations - evaluated,
                 search.forwards - forwarded)


def bench_search(sizes: Sequence[str] = ("tiny", "small"), trees: Sequence[int] = (1, 64),
                 simulations: int = 64, seconds: float = 3.0, threads: int = 1, seed: int = 0,
                 overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Search throughput per (size, trees), and its ratio to pure batched inference.

    Each case searches its positions again and again (fresh trees: `search.reuse_tree` off)
    for about `seconds`, `simulations` per position, taking turns with rounds of pure
    inference at the search's mean batch; each side reports its best, per clock (the load of
    a shared machine only slows things down). `overrides` are further `search.*` settings.
    """
    torch.set_num_threads(threads)
    config = load_config(None, [f"search.simulations={simulations}",
                                "search.reuse_tree=false", *overrides])
    figures: dict[str, Any] = {"threads": threads, "simulations per move": simulations,
                               "gumbel": config.search.gumbel,
                               "leaves per forward": config.search.leaves_per_forward,
                               "mate plies": config.search.mate_plies}
    for size in sizes:
        torch.manual_seed(seed)
        model = build_model(load_config(None, [f"model.size={size}"]).model).eval()
        for count in trees:
            positions = midgame_positions(count, seed=seed)
            search = TreeSearch(model, config.search, seed=seed, max_moves=config.env.max_moves)
            first = _timed_call(search, positions)  # warm-up, and the batch size
            batch = max(1, round(first.evaluations / max(first.forwards, 1)))
            inference = _Inference(model, positions, batch, config.env.max_moves)
            inference.round(1)  # warm-up
            # Search and inference take turns, so both meet the same load of a shared machine.
            calls: list[_Call] = []
            begin = time.perf_counter()
            while time.perf_counter() - begin < seconds or len(calls) < 3:
                calls.append(_timed_call(search, positions))
                inference.round()
            by_wall = max(calls, key=lambda c: c.simulations / c.wall)
            by_cpu = max(calls, key=lambda c: c.simulations / max(c.cpu, 1e-9))
            key = f"{size}, {count} tree{'s' if count > 1 else ''}"
            figures[f"{key}: searches timed"] = len(calls)
            figures[f"{key}: mean batch per forward"] = first.evaluations / max(first.forwards, 1)
            for clock, best, total, net, pure in (
                    ("wall", by_wall, by_wall.wall, by_wall.network_wall, inference.best_wall),
                    ("CPU", by_cpu, by_cpu.cpu, by_cpu.network_cpu, inference.best_cpu)):
                figures[f"{key}: simulations per {clock} s"] = best.simulations / total
                figures[f"{key}: leaf evaluations per {clock} s"] = best.evaluations / total
                figures[f"{key}: inference positions per {clock} s (batch {batch})"] = pure
                figures[f"{key}: simulations / inference ({clock})"] = \
                    best.simulations / total / pure
                figures[f"{key}: leaf evaluations / inference ({clock})"] = \
                    best.evaluations / total / pure
                figures[f"{key}: tree's own share of {clock} time"] = 1.0 - net / total
    return figures
