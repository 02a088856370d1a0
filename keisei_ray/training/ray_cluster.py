"""Ray from the driver's side: joining or starting Ray, the learner's device, and what room the
cluster's nodes have for self-play workers."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from keisei_ray.config import Config, ConfigError

log = logging.getLogger(__name__)

NAMESPACE = "keisei"


class TrainingError(RuntimeError):
    """Training cannot go on (the message says why and what to do)."""


# ----------------------------------------------------------------------------- Ray session


@dataclass(frozen=True)
class RaySession:
    started_here: bool  # True: this process owns the Ray instance and shuts it down
    address: str
    dashboard_url: str | None


def connect_ray(address: str | None, *, num_cpus: int | None = None,
                include_dashboard: bool = True) -> RaySession:
    """Join the running Ray of this process, a cluster at `address`, or start a local one."""
    if ray.is_initialized():
        return RaySession(started_here=False, address=ray.get_runtime_context().gcs_address,
                          dashboard_url=None)
    if address is None:
        # "local": a new embedded Ray, never silently a cluster someone started on this host.
        ctx = ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                       namespace=NAMESPACE, include_dashboard=include_dashboard,
                       log_to_driver=True, runtime_env=worker_runtime_env())
    else:
        ctx = ray.init(address=address, namespace=NAMESPACE, log_to_driver=True,
                       runtime_env=worker_runtime_env())
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log.info("Ray dashboard: http://%s (token: `ray get-auth-token`)", url)
    return RaySession(started_here=True, address=address or "local",
                      dashboard_url=f"http://{url}" if url else None)


def worker_runtime_env() -> dict[str, Any]:
    """The environment of this job's actors: glibc capped at 2 malloc arenas.

    Fewer heaps for the threads of an actor (glibc's default is up to 8 per core) hold less
    freed memory. The cap alone did not stop the learner's memory creeping up in a soak; the
    learner's periodic heap trim does (training/heap.py, docs/soak.md). A value the user
    already set is kept.
    """
    return {"env_vars": {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}}


def resolve_device(config: Config) -> str:
    """The learner's device: cuda when asked for (or auto) and the cluster has a GPU."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    wanted = config.train.device
    if wanted == "cuda" and gpus < 1:
        raise ConfigError("train.device: cuda was asked for but the Ray cluster has no GPU "
                          "(use train.device=auto or cpu)")
    return "cuda" if wanted == "cuda" or (wanted == "auto" and gpus >= 1) else "cpu"


def _alive_nodes() -> dict[str, str]:
    """Node id -> address of every node the cluster has alive."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


def _resources_here(available: bool) -> dict[str, dict[str, float]]:
    state = ray._private.state
    return dict(state.available_resources_per_node() if available
                else state.total_resources_per_node())


_resources_in_cluster = ray.remote(num_cpus=0)(_resources_here)


def resources_per_node(*, available: bool) -> dict[str, dict[str, float]]:
    """Node id -> available (or total) resources of every alive node. A Ray Client driver
    (`ray://`) cannot reach the state API, so a zero-CPU task asks from inside the cluster."""
    if ray.util.client.ray.is_connected():
        resources: dict[str, dict[str, float]] = ray.get(_resources_in_cluster.remote(available))
        return resources
    return _resources_here(available)


def worker_resource(config: Config) -> str | None:
    """The custom resource each self-play worker takes: `cluster.worker_resource` when the
    cluster advertises it or the autoscaler is asked for nodes with it; None: any node."""
    name = config.cluster.worker_resource
    if ray.cluster_resources().get(name, 0) > 0 or config.cluster.request_workers > 0:
        return name
    return None


def worker_room(config: Config, resources_per_node: Mapping[str, Mapping[str, float]],
                resource: str | None) -> int:
    """Self-play workers that `resources_per_node` hold: on every node with the worker
    resource (any node when it is None), as many as its CPUs hold."""
    cpus = config.train.worker_cpus
    room = 0
    for resources in resources_per_node.values():
        fit = resources.get("CPU", 0.0) / cpus
        if resource is not None:
            fit = min(fit, resources.get(resource, 0.0))
        room += math.floor(fit + 1e-9)
    return room


