"""Env benchmark: VecEnv random-policy plies/s against the raw cshogi random-playout ceiling.

Both run in this process, one after the other, for `seconds` each. The VecEnv figure includes
everything a self-play worker gets from the env: compact states, legal-action CSR, results.
"""

from __future__ import annotations

import logging
import random
import time

import cshogi

from shogi import VecEnv

logger = logging.getLogger(__name__)


def bench_vecenv(num_games: int, seconds: float, seed: int, max_moves: int = 512) -> float:
    """VecEnv plies per second with uniformly random actions drawn from its legal CSR."""
    env = VecEnv(num_games, max_moves=max_moves, seed=seed)
    for _ in range(5):  # warm caches and allocator
        env.step(env.random_actions())
    steps = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        env.step(env.random_actions())
        steps += 1
    return steps * num_games / elapsed


def bench_raw_cshogi(seconds: float, seed: int, max_moves: int = 512) -> float:
    """Plies per second of one cshogi board pushing random legal moves, nothing else."""
    rng = random.Random(seed)
    board = cshogi.Board()
    plies = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(256):
            moves = list(board.legal_moves)
            if not moves or board.move_number > max_moves:
                board.reset()
                continue
            board.push(moves[rng.randrange(len(moves))])
            plies += 1
    return plies / elapsed


def bench_env(num_games: int = 64, seconds: float = 3.0, seed: int = 0) -> dict[str, float]:
    """Measure VecEnv and raw cshogi throughput in this process; return the figures."""
    if num_games < 1 or seconds <= 0:
        raise ValueError(f"need num_games >= 1 and seconds > 0, got {num_games!r}, {seconds!r}")
    vecenv = bench_vecenv(num_games, seconds, seed)
    raw = bench_raw_cshogi(seconds, seed)
    figures = {
        "num_games": float(num_games),
        "vecenv_plies_per_s": vecenv,
        "raw_cshogi_plies_per_s": raw,
        "vecenv_to_raw_ratio": vecenv / raw,
    }
    logger.debug("env benchmark: %s", figures)
    return figures
