"""Benchmarks of evaluation: games per second per worker, training throughput with background
evaluation on vs off, and the USI engine's `go` latency.

Each function measures and returns its figures (the CLI prints them); nothing here asserts a
speed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from actors.evaluation import Contestant, Evaluator
from keisei_ray.arena.background import BackgroundEvaluation
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import Callback, EvaluationDone, UpdateDone
from keisei_ray.store.model_file import save_model
from keisei_ray.training.driver import Trainer
from learner.model import build_model, export_weights
from shogi import Position, RandomPlayer


def bench_games(size: str = "small", games: int = 64, opponents: tuple[str, ...] = (
        "random", "heuristic"), max_moves: int = 512, threads: int = 1,
        seed: int = 0) -> dict[str, Any]:
    """Games/s of one evaluation worker: a fresh `size` network against each opponent.

    A random-weight network is the slow case against `random`: most games run to the move
    cap. Both sides' plies count in plies/s; network decisions/s counts only the network's.
    """
    torch.set_num_threads(threads)
    config = load_config(None, [f"model.size={size}", f"env.max_moves={max_moves}",
                                f"evaluation.seed={seed}"])
    torch.manual_seed(seed)
    policy = Contestant(size, config.model, export_weights(build_model(config.model)))
    evaluator = Evaluator(config)
    figures: dict[str, Any] = {"model": size, "games per match": games, "threads": threads,
                               "max_moves": max_moves,
                               "games at once": config.evaluation.games_at_once}
    for opponent in opponents:
        result = evaluator.match(policy, Contestant.baseline(opponent), games, seed=seed,
                                 records=0)
        figures[f"vs {opponent}: games per s"] = result.games / result.seconds
        figures[f"vs {opponent}: plies per s"] = result.plies / result.seconds
        figures[f"vs {opponent}: mean plies"] = result.plies / result.games
        figures[f"vs {opponent}: seconds"] = result.seconds
    return figures


class _Throughput(Callback):
    def __init__(self) -> None:
        self.last: UpdateDone | None = None
        self.evaluations = 0

    def on_update_done(self, event: UpdateDone) -> None:
        self.last = event

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        self.evaluations += 1


def bench_training_with_evaluation(preset: str = "local", timesteps: int = 20_000,
                                   interval: int = 5_000, games: int = 32, repeats: int = 1,
                                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Training steps/s of one preset with background evaluation off and on, alternated
    `repeats` times (off, on, off, on, ...: slow drifts of a shared machine hit both).

    Steps/s is the driver's own figure at the last update (collection and updates only: the
    final wait for a running evaluation is not training time, so it is off here). The
    default interval is 10x denser than the schema's (`evaluation.interval_timesteps`), which
    makes the measured slowdown an upper bound for default runs.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False)
    figures: dict[str, Any] = {"preset": preset, "timesteps": timesteps,
                               "evaluation interval": interval, "games per opponent": games,
                               "cpus": ray.cluster_resources().get("CPU")}
    rates: dict[bool, list[float]] = {False: [], True: []}
    finished = 0
    try:
        for _ in range(repeats):
            for on in (False, True):
                config: Config = load_config(None, [
                    f"train.total_timesteps={timesteps}",
                    f"evaluation.interval_timesteps={interval}", f"evaluation.games={games}",
                    "evaluation.final_wait_s=0", *overrides], preset=preset)
                meter = _Throughput()
                with tempfile.TemporaryDirectory() as tmp:
                    callbacks: list[Callback] = [meter]
                    if on:
                        callbacks.insert(0, BackgroundEvaluation(config, Path(tmp)))
                    Trainer(config, Path(tmp), callbacks=callbacks).run()
                if meter.last is None:
                    raise RuntimeError(f"the {preset} run finished without a single update")
                rates[on].append(meter.last.steps_per_s)
                finished += meter.evaluations
    finally:
        if started_here:
            ray.shutdown()
    for on, label in ((False, "off"), (True, "on")):
        figures[f"steps per s, evaluation {label}"] = float(np.mean(rates[on]))
        figures[f"steps per s, evaluation {label} (each run)"] = ", ".join(
            f"{r:.0f}" for r in rates[on])
    figures["evaluation matches finished"] = finished
    off, on_rate = figures["steps per s, evaluation off"], figures["steps per s, evaluation on"]
    figures["slowdown"] = 1.0 - on_rate / off if off > 0 else float("nan")
    return figures


def bench_usi_latency(size: str = "small", repeats: int = 200, seed: int = 0) -> dict[str, Any]:
    """Milliseconds from `go` to `bestmove` of `keisei-ray usi` playing the raw policy
    (`usi.simulations=0`; a searching engine takes the time it is given), a subprocess on
    real pipes, over positions of a random game; plus the start-up and `isready` times."""
    config = load_config(None, [f"model.size={size}"])
    torch.manual_seed(seed)
    rng = RandomPlayer(seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model(Path(tmp) / f"{size}.pt",
                           export_weights(build_model(config.model)), config.model)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "keisei_ray.cli", "usi", str(model), "usi.simulations=0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def ask(command: str, until: str) -> float:
            began = time.perf_counter()
            stdin.write(command + "\n")
            stdin.flush()
            for line in stdout:
                if line.startswith(until):
                    return time.perf_counter() - began
            raise RuntimeError(f"the engine exited while answering {command!r}")

        try:
            ask("usi", "usiok")
            startup = time.perf_counter() - start
            ready = ask("isready", "readyok")
            position = Position()
            moves: list[str] = []
            latencies = []
            for _ in range(repeats):
                if position.is_game_over():
                    position, moves = Position(), []
                stdin.write("position startpos" + (f" moves {' '.join(moves)}" if moves else "")
                            + "\n")
                latencies.append(ask("go btime 10000 wtime 10000 byoyomi 1000", "bestmove"))
                move = rng.choose(position)
                position.push(move)
                moves.append(move.usi())
            stdin.write("quit\n")
            stdin.flush()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    ms = 1e3 * np.array(latencies)
    return {"model": size, "go calls": repeats, "start-up to usiok ms": 1e3 * startup,
            "isready ms": 1e3 * ready, "go median ms": float(np.median(ms)),
            "go p90 ms": float(np.percentile(ms, 90)), "go max ms": float(ms.max())}
