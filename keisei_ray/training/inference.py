"""The inference actor from the driver's side (`inference.*`): its device and placement, the
learner's GPU share beside it, and replacing it when it is gone for good.

The actor itself is actors/inference.py. Ray restarts a crashed one (`inference.max_restarts`);
one killed for good (or out of restarts) is replaced here between rounds, after a worker
reported that it lost it. Nothing counted is lost either way: a worker that loses the actor
finishes its collect with its own copy of the policy.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.inference import InferenceActor, InferenceStats
from actors.self_play import BatchSummary
from keisei_ray.config import Config, ConfigError
from keisei_ray.training.ray_cluster import TrainingError

log = logging.getLogger(__name__)

_PING_TIMEOUT_S = 10.0  # a live actor answers `ready` within this, even a busy one


def inference_device(config: Config) -> str:
    """The inference actor's device: cuda when asked for (or auto) and the cluster has a GPU."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    wanted = config.inference.device
    if wanted == "cuda" and gpus <= 0:
        raise ConfigError("inference.device: cuda was asked for but the Ray cluster has no GPU "
                          "(use inference.device=auto or cpu)")
    return "cuda" if wanted == "cuda" or (wanted == "auto" and gpus > 0) else "cpu"


def learner_gpus(config: Config, learner_device: str) -> float:
    """The GPU share the learner asks Ray for: its whole GPU, less the inference actor's share
    when that shares it (inference on cuda with placement=learner)."""
    if learner_device != "cuda":
        return 0.0
    inference = config.inference
    if (inference.enabled and inference.placement == "learner"
            and inference_device(config) == "cuda"):
        return 1.0 - inference.num_gpus
    return 1.0


def actor_options(config: Config, device: str, learner_node: str | None,
                  name: str) -> dict[str, Any]:
    """Ray options of the inference actor: its CPUs, its GPU share on cuda (Ray's num_gpus:
    the actor sees only the GPU Ray gave it), and beside the learner with placement=learner
    (soft: should the learner's node be gone, anywhere)."""
    inference = config.inference
    options: dict[str, Any] = {
        "name": name, "num_cpus": inference.num_cpus,
        "num_gpus": inference.num_gpus if device == "cuda" else 0,
        "max_restarts": inference.max_restarts,
        "max_task_retries": 0,  # a worker that loses a call plays it with its own copy
    }
    if inference.placement == "learner" and learner_node is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(learner_node, soft=True)
    return options


class InferenceService:
    """Creates the inference actor, hands its handle out, replaces it when it is gone."""

    def __init__(self, config: Config, learner: Any) -> None:
        self.config = config
        self.device = inference_device(config)
        self.learner_node: str | None = (ray.get(learner.node_id.remote())
                                         if config.inference.placement == "learner" else None)
        self._names = (f"keisei/inference-{i}" for i in itertools.count())
        self.handle: Any = None
        self.replaced = 0  # actors replaced after one was gone for good
        self.lost_rounds = 0  # rounds in which a worker lost the actor

    def start(self) -> None:
        """A new actor; waits until it is up (TrainingError if it finds no room in time)."""
        name = next(self._names)
        self.handle = InferenceActor.options(
            **actor_options(self.config, self.device, self.learner_node, name)
        ).remote(self.config, self.device)
        timeout = self.config.cluster.start_timeout_s
        try:
            node = ray.get(self.handle.ready.remote(), timeout=timeout)
        except GetTimeoutError as exc:
            ray.kill(self.handle, no_restart=True)
            raise TrainingError(f"the inference actor was not placed in {timeout:.0f} s: no "
                                f"node has inference.num_cpus={self.config.inference.num_cpus} "
                                f"CPU(s) free{self._gpu_words()}") from exc
        log.info("inference actor %s on %s, node %s", name, self.device, node)

    def _gpu_words(self) -> str:
        if self.device != "cuda":
            return ""
        return f" and inference.num_gpus={self.config.inference.num_gpus} of a GPU"

    def after_round(self, summaries: Iterable[BatchSummary]) -> None:
        """When a worker lost the actor this round: replace it if it is gone for good (Ray
        restarts a crashed one by itself)."""
        if not any(s.inference_lost for s in summaries):
            return
        self.lost_rounds += 1
        try:
            ray.get(self.handle.ready.remote(), timeout=_PING_TIMEOUT_S)
            log.info("the inference actor answers again (Ray restarted it)")
            return
        except (ActorUnavailableError, GetTimeoutError):
            log.info("the inference actor is restarting: workers use their own copies meanwhile")
            return
        except RayActorError as exc:
            log.warning("the inference actor is gone (%s); starting a new one",
                        type(exc).__name__)
        ray.kill(self.handle, no_restart=True)
        self.replaced += 1
        self.start()

    def stats(self) -> InferenceStats | None:
        """The live actor's figures (None when it does not answer)."""
        try:
            stats: InferenceStats = ray.get(self.handle.stats.remote(), timeout=_PING_TIMEOUT_S)
        except (RayActorError, ActorUnavailableError, GetTimeoutError):
            return None
        return stats

    def shutdown(self) -> None:
        if self.handle is None:
            return
        stats = self.stats()
        if stats is not None and stats.batches:
            log.info("inference actor: %d forwards of %.1f positions on average (largest %d), "
                     "%d version loads", stats.batches, stats.rows / stats.batches,
                     stats.max_rows, stats.versions_loaded)
        ray.kill(self.handle, no_restart=True)
        self.handle = None
