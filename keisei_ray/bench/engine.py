"""Benchmark of external-engine games: games/s of one evaluation worker (one process, one
engine subprocess) for engine rungs against `random` and against a fresh network.

The figures are returned (the CLI prints them); nothing here asserts a speed.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.evaluation import Contestant, Evaluator
from keisei_ray.arena.evaluation import load_contestant
from keisei_ray.config_loading import load_config
from learner.model import build_model, export_weights


def bench_engine_games(engines: tuple[str, ...] = ("sf-skill-20", "sf-d1"), games: int = 20,
                       size: str = "small", max_moves: int = 512,
                       seed: int = 0) -> dict[str, Any]:
    """Per engine: games/s, plies/s and engine moves/s of one worker against `random` and
    against an untrained `size` network (the gauntlet's case)."""
    torch.set_num_threads(1)
    config = load_config(None, [f"model.size={size}", f"env.max_moves={max_moves}",
                                f"evaluation.seed={seed}"])
    torch.manual_seed(seed)
    network = Contestant(f"net-{size}", config.model,
                         export_weights(build_model(config.model)))
    figures: dict[str, Any] = {"games per match": games, "max_moves": max_moves}
    evaluator = Evaluator(config)
    for spec in engines:
        engine = load_contestant(spec)
        for opponent in (load_contestant("random"), network):
            r = evaluator.match(engine, opponent, games, seed=seed, records=0)
            key = f"{engine.name} vs {opponent.name}"
            figures[f"{key}: games/s"] = round(r.games / r.seconds, 3)
            figures[f"{key}: plies/game"] = round(r.plies / r.games, 1)
            figures[f"{key}: engine moves/s"] = round(r.plies / 2 / r.seconds, 1)
            figures[f"{key}: score"] = round(r.score, 3)
    return figures
