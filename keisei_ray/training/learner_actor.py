"""The learner as a Ray actor: a thin wrapper of `learner.Learner`.

It resolves the workers' encoded batches (object refs handed over by the driver, never
copied through it), runs one PPO update, and publishes the new weights with a single
`ray.put` per update. The driver passes the returned weights ref on to the workers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from keisei_ray.config import Config
from keisei_ray.training.autotune import Measurement, TuneResult, micro_batch_candidates, search
from keisei_ray.training.heap import release_free_heap
from keisei_ray.training.metrics import LearnerMetrics
from learner import Learner
from learner.profiling import ProfileOutput, ProfileSession
from learner.throughput import device_memory_bound, micro_batch_trial

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """A policy version and its weights in the object store (wrapped: not auto-resolved)."""

    version: int
    weights: list[Any]  # [ObjectRef of {name: np.ndarray}]
    nbytes: int
    # Which learner made it: a restarted learner makes the versions after its checkpoint
    # again, with other weights (keisei_ray/training/restarts.py).
    lineage: int = 0


@dataclass(frozen=True)
class UpdateResult:
    metrics: dict[str, float]
    accepted: int  # transitions trained on (the driver's timestep increment)
    dropped: int  # batches dropped as too old
    max_lag: int  # largest policy lag among accepted batches
    busy_s: float  # seconds spent decoding and updating
    published: Published = field(repr=False)


class LearnerActor:
    """Ray actor class around a `Learner` (decorated with ray.remote by the driver)."""

    def __init__(self, config: Config, capacity: int, device: str, lineage: int = 0) -> None:
        torch.set_num_threads(config.train.learner_threads)
        self.config = config
        self.lineage = lineage
        self.learner = Learner(config, capacity=capacity, device=device)
        self.metrics = LearnerMetrics()
        self.profiler = ProfileSession()
        self._heap_trimmed_at = time.monotonic()
        log.info("learner ready on %s (capacity %d transitions)", self.learner.device, capacity)

    def node_id(self) -> str:
        """The node it runs on (the inference actor may be placed beside it)."""
        return str(ray.get_runtime_context().get_node_id())

    def publish(self) -> Published:
        with torch.profiler.record_function("broadcast"):
            version, weights = self.learner.weights(half=self.config.train.half_weights)
            nbytes = sum(int(a.nbytes) for a in weights.values())
            return Published(version=version, weights=[ray.put(weights)], nbytes=nbytes,
                             lineage=self.lineage)

    def update(self, *payloads: bytes) -> UpdateResult:
        start = time.perf_counter()
        metrics = self.learner.update(list(payloads))
        busy = time.perf_counter() - start
        self.metrics.record(busy, int(metrics["accepted"]), int(metrics["dropped_batches"]),
                            float(metrics.get("samples_per_s", 0.0)))
        published = self.publish()
        self._trim_heap()
        return UpdateResult(
            metrics=metrics,
            accepted=int(metrics["accepted"]),
            dropped=int(metrics["dropped_batches"]),
            max_lag=int(metrics.get("max_policy_lag", 0)),
            busy_s=busy,
            published=published,
        )

    def _trim_heap(self) -> None:
        # Else the heap keeps what updates freed and creeps up as it fragments (heap.py).
        # Not after every update: the next one faults the pages back in (bench trim).
        interval = self.config.train.learner_heap_trim_s
        if interval > 0 and time.monotonic() - self._heap_trimmed_at >= interval:
            release_free_heap()
            self._heap_trimmed_at = time.monotonic()

    def profile_start(self, memory: bool, with_stack: bool) -> None:
        self.profiler.start(memory=memory, with_stack=with_stack)

    def profile_stop(self, top_ops: int) -> ProfileOutput:
        return self.profiler.stop(top_ops)

    def autotune_micro_batch(self) -> TuneResult | None:
        """Pick ppo.micro_batch_size for the most samples/s within the device's memory, by
        trials on the buffer's current transitions (None: the buffer is empty). The minibatch,
        and so the optimizer steps and their loss, stay as configured."""
        if len(self.learner.buffer) == 0:
            return None
        result = search(micro_batch_candidates(self.learner.ppo.minibatch_size),
                        lambda size: Measurement(*micro_batch_trial(self.learner, size)),
                        memory_bound=device_memory_bound(self.learner))
        self.learner.ppo.micro_batch_size = result.best
        return result

    def reserve(self, capacity: int) -> None:
        self.learner.reserve(capacity)

    def state_dict(self) -> dict[str, Any]:
        # On the CPU: the driver (and the checkpoint files) must not need the learner's GPU.
        return _to_cpu(self.learner.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {key: _to_cpu(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_cpu(value) for value in tree)
    return tree
