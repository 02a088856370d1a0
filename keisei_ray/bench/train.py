"""Benchmarks of the distributed loop: worker roofline, weight broadcast, end-to-end training.

Each function returns its figures (the CLI prints them); nothing here asserts a speed.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from actors.self_play import SelfPlayWorker
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.training.driver import Trainer
from learner.features import encode_planes, legal_mask, to_tensors
from learner.model import act, build_model, export_weights, load_weights


def bench_worker(size: str = "small", games: int = 64, steps: int = 32, seconds: float = 5.0,
                 threads: int = 1, attack_planes: bool = False,
                 policy_head: str = "relative") -> dict[str, Any]:
    """Self-play decisions/s of one worker vs pure batched inference of its model.

    Same model, same batch size (the worker's games), same thread count, one process. The
    inference side runs `act` (forward + masked sampling) on a fixed batch of real positions
    whose planes and mask were built beforehand; the worker side is everything a collect
    does: env steps, features, inference, GAE, encoding.
    """
    torch.set_num_threads(threads)
    config = load_config(None, [f"model.size={size}", f"train.games_per_worker={games}",
                                f"train.rollout_steps={steps}",
                                f"model.attack_planes={str(attack_planes).lower()}",
                                f"model.policy_head={policy_head}"])
    worker = SelfPlayWorker(config, worker_id=0)
    weights = export_weights(worker.model)
    worker.collect(weights, 0)  # warm-up, and positions from a real game state
    obs = worker.obs
    planes = encode_planes(to_tensors(obs.state), config.env.max_moves,
                           config.model.attack_planes)
    mask = legal_mask(obs.legal_offsets, obs.legal_actions, games)
    model = worker.model

    def rate(fn: Any, per_call: int) -> float:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            calls += 1
        return calls * per_call / (time.perf_counter() - start)

    inference = rate(lambda: act(model, planes, mask), games)
    transitions = 0

    def one_collect() -> None:
        nonlocal transitions
        summary, _ = worker.collect(None, 0)
        transitions += summary.transitions

    collects, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one_collect()
        collects += 1
    worker_rate = transitions / (time.perf_counter() - start)
    return {"model": size, "games (batch)": games, "threads": threads,
            "inference decisions per s": inference, "worker decisions per s": worker_rate,
            "ratio": worker_rate / inference}


def bench_teacher(simulations: list[int], size: str = "small", games: int = 32,
                  steps: int = 16, collects: int = 2, warmup: int = 1,
                  full_search_share: float = 1.0, cheap_simulations: int = 0,
                  threads: int = 1, seed: int = 0) -> dict[str, Any]:
    """Self-play worker decisions/s and wire bytes per transition with search as a teacher
    (`train.search.simulations`) at each budget of `simulations` (0: no search), one process.

    Per budget a fresh worker (same seed, same games to start with) plays `warmup` collects,
    then `collects` timed ones; the bytes are the encoded batches of the timed collects.
    """
    torch.set_num_threads(threads)
    figures: dict[str, Any] = {"model": size, "games (batch)": games, "plies per collect": steps,
                               "threads": threads, "full search share": full_search_share,
                               "cheap simulations": cheap_simulations}
    for n in simulations:
        config = load_config(None, [f"model.size={size}", f"train.games_per_worker={games}",
                                    f"train.rollout_steps={steps}", f"train.seed={seed}",
                                    f"train.search.simulations={n}",
                                    f"train.search.full_search_share={full_search_share}",
                                    f"train.search.cheap_simulations="
                                    f"{min(cheap_simulations, n) if n else 0}"])
        worker = SelfPlayWorker(config, worker_id=0)
        worker.load(export_weights(worker.model), 0)
        for _ in range(warmup):
            worker.collect(None, 0)
        transitions = nbytes = 0
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(collects):
            summary, payload = worker.collect(None, 0)
            transitions += summary.transitions
            nbytes += len(payload)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        label = f"N={n}" if n else "no search"
        figures[f"{label}: decisions per s"] = transitions / seconds
        # Per CPU second of this process: steadier than the wall clock on a shared machine.
        figures[f"{label}: decisions per CPU s"] = transitions / max(cpu_seconds, 1e-9)
        figures[f"{label}: bytes per transition"] = nbytes / transitions
    return figures


class _Holder:
    """A stand-in worker for the broadcast benchmark: a model that loads published weights."""

    def __init__(self, size: str) -> None:
        torch.set_num_threads(1)
        self.model = build_model(load_config(None, [f"model.size={size}"]).model)

    def load(self, weights_box: list[Any]) -> float:
        load_weights(self.model, ray.get(weights_box[0]))
        return time.time()


def bench_broadcast(sizes: tuple[str, ...] = ("small", "large"), workers: int = 8,
                    repeats: int = 5, half: bool = False) -> dict[str, Any]:
    """Time from `ray.put` of new weights to all workers having loaded them (one node)."""
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=max(2, workers), include_dashboard=False)
    figures: dict[str, Any] = {"workers": workers, "half": half}
    try:
        for size in sizes:
            holder_cls: Any = ray.remote(num_cpus=0)(_Holder)
            holders = [holder_cls.remote(size) for _ in range(workers)]
            model = build_model(load_config(None, [f"model.size={size}"]).model)
            weights = export_weights(model, half=half)
            ray.get([h.load.remote([ray.put(weights)]) for h in holders])  # warm-up
            times = []
            for _ in range(repeats):
                start = time.time()
                ref = ray.put(export_weights(model, half=half))
                ray.get([h.load.remote([ref]) for h in holders])
                times.append(time.time() - start)
            params = sum(p.numel() for p in model.parameters())
            figures[f"{size} parameters"] = params
            figures[f"{size} MB"] = sum(a.nbytes for a in weights.values()) / 1e6
            figures[f"{size} broadcast ms (median)"] = 1e3 * float(np.median(times))
            figures[f"{size} broadcast ms (best)"] = 1e3 * min(times)
            for h in holders:
                ray.kill(h)
    finally:
        if started_here:
            ray.shutdown()
    return figures


def bench_training(preset: str = "local", workers: tuple[int, ...] = (1, 2),
                   timesteps: int = 20_000, overrides: tuple[str, ...] = (), *,
                   compare: tuple[tuple[str, ...], ...] = (), seconds: float | None = None,
                   rounds: int = 1, num_cpus: int | None = None) -> dict[str, Any]:
    """End-to-end steps/s of a preset with N workers, and the learner's and workers' idle share.

    Arms: each override set of `compare` (the first the baseline; none: one arm of the preset
    as it is), named by its overrides. Each worker count is run once per arm and round, the
    arms alternated (round-robin, so that a shared machine's load falls on each alike); the
    figures are medians over the rounds, with each arm's ratio to the first. `seconds` ends
    each run by time (train.max_minutes) instead of by timesteps. `num_cpus` starts Ray with
    that many CPUs (a larger machine simulated: the CPUs are not really there).
    """
    arms: dict[str, tuple[str, ...]] = {" ".join(arm) or "base": arm for arm in compare}
    if len(arms) < len(compare):
        raise ValueError(f"bench arms must differ, got {list(compare)}")
    arms = arms or {"": ()}
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, num_cpus=num_cpus)
    figures: dict[str, Any] = {"preset": preset, "cpus": ray.cluster_resources().get("CPU")}
    try:
        for n in workers:
            runs: dict[str, list[Any]] = {arm: [] for arm in arms}
            for _ in range(rounds):
                for arm, arm_overrides in arms.items():
                    extra = list(arm_overrides)
                    if seconds is not None:
                        extra += [f"train.max_minutes={seconds / 60}",
                                  "train.total_timesteps=1000000000"]
                    config: Config = load_config(None, [
                        f"train.num_workers={n}", f"train.total_timesteps={timesteps}",
                        # N workers share the machine with the learner: do not reserve its CPU.
                        "train.learner_cpus=0", *overrides, *extra], preset=preset)
                    with tempfile.TemporaryDirectory() as tmp:
                        runs[arm].append(Trainer(config, Path(tmp)).run())
            for arm, results in runs.items():
                key = f"N={n} {arm}".rstrip()
                figures[f"{key} steps per s"] = float(np.median(
                    [r.steps_per_s for r in results]))
                figures[f"{key} learner idle"] = float(np.median(
                    [1.0 - r.learner_busy for r in results]))
                figures[f"{key} workers idle"] = float(np.median(
                    [max(0.0, 1.0 - r.worker_busy) for r in results]))
                figures[f"{key} updates"] = sum(r.state.updates for r in results)
            names = list(arms)
            if len(names) > 1:
                base = figures[f"N={n} {names[0]} steps per s"]
                for arm in names[1:]:
                    figures[f"N={n} {arm} / {names[0]}"] = (
                        figures[f"N={n} {arm} steps per s"] / base)
    finally:
        if started_here:
            ray.shutdown()
    if math.isfinite(figures.get("N=1 steps per s", math.nan)) and "N=2 steps per s" in figures:
        figures["N=2 / N=1"] = figures["N=2 steps per s"] / figures["N=1 steps per s"]
    return figures
