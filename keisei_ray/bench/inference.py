"""`bench inference`: self-play decisions/s per worker core, each worker's own forward vs the
inference actor (issue 23 item 5), for several model sizes and worker counts on one machine.

Simulated workers are real `SelfPlayWorker`s (env steps, features or requests, GAE, encoding:
all of a collect), each driven by a thread of this process; with the actor, every worker's
positions go through one `InferenceActor` on this machine's Ray (as in training: Ray calls
with the compact states). Per-core figures divide decisions by CPU seconds: the workers'
(this process: every worker thread and the Ray client threads beside them) and, apart, the
actor's (its process). Nothing here asserts a speed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from actors.inference import InferenceActor, InferenceStats, RemotePolicy, fetch_weights
from actors.self_play import SelfPlayWorker
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.training.ray_cluster import connect_ray
from learner.model import build_model, export_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceFigures:
    """One measurement: `workers` simulated workers of model `size`, local or via the actor."""

    size: str
    workers: int
    mode: str  # "local" (each worker's own forward) or "actor"
    decisions_per_s: float  # all workers together, wall clock
    per_worker_core: float  # decisions per CPU second of the workers' process
    actor_cpu_ms: float  # the actor's CPU ms per 1,000 decisions (0 for local)
    mean_batch: float  # positions per forward (the worker's games for local)
    seconds: float


def _drive(workers: Sequence[SelfPlayWorker], collect: Any, seconds: float,
           min_collects: int) -> tuple[int, float, float]:
    """Collect on every worker in its own thread until `seconds` passed and each did
    `min_collects`; (decisions, wall seconds, this process's CPU seconds)."""
    counts = [0] * len(workers)
    done = [0] * len(workers)
    errors: list[BaseException] = []
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    deadline = start_wall + seconds

    def run(i: int) -> None:
        try:
            while time.perf_counter() < deadline or done[i] < min_collects:
                summary = collect(workers[i])
                counts[i] += summary.transitions
                done[i] += 1
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts), time.perf_counter() - start_wall, time.process_time() - start_cpu


def _measure(config: Config, size: str, n: int, mode: str, weights: dict[str, Any],
             box: list[Any], server: Any, seconds: float) -> InferenceFigures:
    workers = [SelfPlayWorker(config, worker_id=i) for i in range(n)]
    if mode == "local":
        def collect(worker: SelfPlayWorker) -> Any:
            return worker.collect(weights, 0)[0]
    else:
        fetch = functools.partial(fetch_weights, box)

        def collect(worker: SelfPlayWorker) -> Any:
            worker.remote = RemotePolicy(server, worker.worker_id, 0, 0, box,
                                         config.inference.timeout_s)
            summary = worker.collect(fetch, 0)[0]
            if summary.inference_lost:
                raise RuntimeError("the inference actor was lost during the benchmark")
            return summary
    _drive(workers, collect, 0.0, 1)  # warm-up: weights, first forwards
    before: InferenceStats | None = ray.get(server.stats.remote()) if mode == "actor" else None
    decisions, wall, cpu = _drive(workers, collect, seconds, 2)
    actor_cpu, batch = 0.0, float(config.train.games_per_worker)
    if before is not None:
        after: InferenceStats = ray.get(server.stats.remote())
        actor_cpu = after.cpu_s - before.cpu_s
        batch = (after.rows - before.rows) / max(after.batches - before.batches, 1)
    return InferenceFigures(size=size, workers=n, mode=mode, decisions_per_s=decisions / wall,
                            per_worker_core=decisions / max(cpu, 1e-9),
                            actor_cpu_ms=1e6 * actor_cpu / max(decisions, 1),
                            mean_batch=batch, seconds=wall)


def bench_inference(sizes: Sequence[str] = ("small", "large"),
                    workers: Sequence[int] = (1, 4, 16), games: int = 16, steps: int = 4,
                    seconds: float = 3.0, max_wait_ms: float = 2.0,
                    actor_threads: int = 1) -> list[InferenceFigures]:
    """Decisions/s of `workers` simulated workers per model size, local vs the actor (CPU)."""
    torch.set_num_threads(1)  # one core per worker, as a worker actor has
    session = connect_ray(None, include_dashboard=False)
    rows: list[InferenceFigures] = []
    try:
        for size in sizes:
            config = load_config(None, [
                f"model.size={size}", f"train.games_per_worker={games}",
                f"train.rollout_steps={steps}", "inference.enabled=true",
                f"inference.num_cpus={actor_threads}", f"inference.max_wait_ms={max_wait_ms}"])
            weights = export_weights(build_model(config.model))
            box = [ray.put(weights)]
            server = InferenceActor.options(num_cpus=0).remote(config, "cpu")
            ray.get(server.ready.remote())
            try:
                for n in workers:
                    for mode in ("local", "actor"):
                        rows.append(_measure(config, size, n, mode, weights, box, server,
                                             seconds))
                        log.info("%s", rows[-1])  # long runs: each figure as it comes
            finally:
                ray.kill(server)
    finally:
        if session.started_here:
            ray.shutdown()
    return rows
