"""Adaptive batch sizes (`train.autotune`): keisei_ray.training.autotune's search applied to a run.

- Games per worker, at the start of a fresh run: a Ray task with a worker's CPUs plays a
  collect with each (games, steps) pair whose product is the configured one (so each collect
  ships as many transitions as configured) and keeps the pair with the most decisions/s. A
  resumed run keeps the values its checkpoint's config holds (its saved games need them).
- The learner's micro-batch (gradient accumulation: ppo.minibatch_size, the optimizer steps
  and their loss stay), after the first update and every `train.autotune_interval_s`: the
  learner actor measures samples/s of forward/backward passes per size, within 85% of the
  GPU's memory on a GPU.

The chosen values are written into the run's config (so checkpoints record them and resume
keeps them) and every change is logged.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import ray
import torch

from actors.self_play import SelfPlayWorker
from keisei_ray.config import Config
from keisei_ray.training.autotune import Measurement, TuneResult, games_candidates, search
from learner.model import export_weights

log = logging.getLogger(__name__)


def measure_games(config: Config, games: int, steps: int, *, collects: int = 2) -> Measurement:
    """Decisions per second of a self-play worker playing `games` games `steps` plies at a
    time (the first collect is a warm-up and not timed). Runs here, on the caller's CPUs."""
    data = config.model_dump()
    data["train"].update(games_per_worker=games, rollout_steps=steps)
    worker = SelfPlayWorker(Config.model_validate(data), worker_id=0)
    worker.load(export_weights(worker.model), 0)  # its own initial weights, as version 0
    seconds = 0.0
    decisions = 0
    for i in range(collects):
        start = time.perf_counter()
        worker.collect(None, 0)
        if i > 0:
            seconds += time.perf_counter() - start
            decisions += games * steps
    return Measurement(throughput=decisions / max(seconds, 1e-9))


def _tune_games_here(config: Config) -> TuneResult:
    torch.set_num_threads(max(1, math.ceil(config.train.worker_cpus)))
    pairs = dict(games_candidates(config.train.games_per_worker, config.train.rollout_steps))
    return search(list(pairs), lambda games: measure_games(config, games, pairs[games]))


def tune_games(config: Config) -> TuneResult:
    """Pick games_per_worker (and rollout_steps, keeping their product) on a worker's CPUs and
    write them into `config`; the search's result."""
    train = config.train
    task = ray.remote(_tune_games_here).options(num_cpus=train.worker_cpus)
    before = (train.games_per_worker, train.rollout_steps)
    result: TuneResult = ray.get(task.remote(config))
    pairs = dict(games_candidates(*before))
    train.games_per_worker, train.rollout_steps = result.best, pairs[result.best]
    log.info("autotune: games_per_worker %d x rollout_steps %d -> %d x %d (%.0f decisions/s "
             "per worker; tried %s)", *before, train.games_per_worker, train.rollout_steps,
             result.throughput, result.table())
    return result


class LearnerTuner:
    """Re-tunes the learner's micro-batch after the first update and then every interval."""

    def __init__(self, config: Config, *, resumed: bool) -> None:
        self.config = config
        self.enabled = config.train.autotune
        # A resumed run keeps its checkpoint's value until the first interval has passed.
        self._last = time.monotonic() if resumed else None

    def after_update(self, learner: Any) -> TuneResult | None:
        """Call with the learner idle (between updates)."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if self._last is not None and now - self._last < self.config.train.autotune_interval_s:
            return None
        self._last = now
        result: TuneResult | None = ray.get(learner.autotune_micro_batch.remote())
        if result is None:
            return None
        ppo = self.config.ppo
        before = ppo.micro_batch_size
        if before != result.best:
            ppo.micro_batch_size = result.best
            log.info("autotune: ppo.micro_batch_size %s -> %d (minibatch %d: %d pass(es) per "
                     "optimizer step; %.0f samples/s; tried %s)", before, result.best,
                     ppo.minibatch_size, math.ceil(ppo.minibatch_size / result.best),
                     result.throughput, result.table())
        else:
            log.debug("autotune: ppo.micro_batch_size stays %d (%s)", result.best,
                      result.table())
        return result
