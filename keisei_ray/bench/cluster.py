"""Elasticity and scaling on a simulated multi-node cluster (`ray.cluster_utils.Cluster`).

Every "node" is a real raylet with its own object store on this machine: a head that runs the
driver, optionally a learner node (custom resource `learner`), and self-play nodes (custom
resource `selfplay`, as cluster.yaml gives them). The benchmark measures what the issue asks:
the time from a self-play node's loss until the pool is back to full strength on the remaining
capacity, the time from a node joining until its workers deliver batches, and end-to-end
steps/s with 1, 2 and 3 self-play nodes. Figures are returned, never asserted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import BatchCollected, Callback, UpdateDone
from keisei_ray.training.driver import Trainer, TrainResult

log = logging.getLogger(__name__)

NAMESPACE = "keisei-cluster"


@dataclass
class SimulatedCluster:
    """A head node, an optional learner node and self-play nodes, all on this machine."""

    cluster: Cluster
    cpus_per_node: int
    learner: Any | None  # ray._private.node.Node of the learner node, None: the head has it
    selfplay: list[Any] = field(default_factory=list)  # Nodes with the `selfplay` resource

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_selfplay_node(self) -> Any:
        """Start one more self-play node; returns once the cluster has registered it."""
        node = self.cluster.add_node(num_cpus=self.cpus_per_node,
                                     resources={"selfplay": 1000}, wait=True)
        self.selfplay.append(node)
        return node

    def add_learner_node(self) -> Any:
        """Start a node with the `learner` resource (a replacement for a lost one)."""
        self.learner = self.cluster.add_node(num_cpus=self.cpus_per_node,
                                             resources={"learner": 1}, wait=True)
        return self.learner

    def remove(self, node: Any, *, graceful: bool = True) -> None:
        """Take a node away: graceful lets its raylet say goodbye (what a drained or
        scaled-down node does); otherwise all its processes are SIGKILLed (a lost VM)."""
        if node in self.selfplay:
            self.selfplay.remove(node)
        if node is self.learner:
            self.learner = None
        self.cluster.remove_node(node, allow_graceful=graceful)


@contextlib.contextmanager
def simulated_cluster(selfplay_nodes: int, *, cpus_per_node: int = 1, learner_node: bool = False,
                      system_config: Mapping[str, Any] | None = None,
                      connect: bool = True) -> Iterator[SimulatedCluster]:
    """A simulated cluster, connected to (unless `connect=False`) and torn down afterwards.

    Its session files and the "current cluster" address file live in a private temp folder
    (`RAY_TMPDIR`, set for the duration), so a plain `ray.init()` of another process on this
    host never finds and joins it. The head holds the `learner` resource unless
    `learner_node` gives the learner a node of its own.
    """
    previous = os.environ.get("RAY_TMPDIR")
    # Short: Ray's unix socket paths live below it (108 characters at most).
    tmp = tempfile.mkdtemp(prefix="krc-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    head_args: dict[str, Any] = {"num_cpus": cpus_per_node, "include_dashboard": False,
                                 "resources": {} if learner_node else {"learner": 1}}
    if system_config:
        head_args["_system_config"] = dict(system_config)
    cluster = Cluster(initialize_head=True, head_node_args=head_args, shutdown_at_exit=False)
    sim = SimulatedCluster(cluster, cpus_per_node, learner=None)
    try:
        if learner_node:
            sim.add_learner_node()
        for _ in range(selfplay_nodes):
            sim.add_selfplay_node()
        cluster.wait_for_nodes()
        if connect:
            ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        yield sim
    finally:
        if connect and ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(tmp, onerror=_log_cleanup_error)


def _log_cleanup_error(function: Any, path: str, exc_info: Any) -> None:
    log.warning("could not remove %s of the simulated cluster (%s)", path, exc_info[1])


def cluster_config(*overrides: str, preset: str = "smoke") -> Config:
    """A training config for the simulated cluster: auto workers, the learner on no CPU of its
    own (on 2 cores every process shares them anyway)."""
    return load_config(None, ["train.num_workers=auto", "train.learner_cpus=0",
                              "evaluation.enabled=false", *overrides], preset=preset)


@dataclass(frozen=True)
class Arrival:
    """A batch as the driver received it."""

    at: float  # time.monotonic()
    worker_id: int
    node_id: str | None  # the node its worker runs on
    transitions: int


class Timeline(Callback):
    """Records when each worker's batches arrived (and from which node) and the updates."""

    def __init__(self, trainer_ref: Callable[[], Trainer | None]) -> None:
        self._trainer = trainer_ref
        self.batches: list[Arrival] = []
        self.updates: list[tuple[float, UpdateDone]] = []
        self.changed = threading.Event()  # set on every event: a controller waits on it

    def on_batch_collected(self, event: BatchCollected) -> None:
        trainer = self._trainer()
        slot = trainer.pool.slots.get(event.worker_id) if trainer and trainer.pool else None
        self.batches.append(Arrival(time.monotonic(), event.worker_id,
                                    slot.node_id if slot is not None else None,
                                    event.transitions))
        self.changed.set()

    def on_update_done(self, event: UpdateDone) -> None:
        self.updates.append((time.monotonic(), event))
        self.changed.set()


@dataclass
class ElasticRun:
    """One training run with a controller thread that changes the cluster mid-run."""

    result: TrainResult
    timeline: Timeline
    trainer: Trainer
    marks: dict[str, float]


def run_with(config: Config, run_dir: Path,
             controller: Callable[[Trainer, Timeline, dict[str, float]], None],
             callbacks: Sequence[Callback] = ()) -> ElasticRun:
    """Train `config` while `controller(trainer, timeline, marks)` runs in a thread; the run
    stops (trainer.stop) when the controller returns."""
    trainer_box: list[Trainer] = []
    timeline = Timeline(lambda: trainer_box[0] if trainer_box else None)
    trainer = Trainer(config, run_dir, callbacks=[timeline, *callbacks])
    trainer_box.append(trainer)
    marks: dict[str, float] = {}
    errors: list[BaseException] = []

    def control() -> None:
        try:
            controller(trainer, timeline, marks)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            errors.append(exc)
        finally:
            trainer.stop.set()

    thread = threading.Thread(target=control, name="cluster-controller", daemon=True)
    thread.start()
    try:
        result = trainer.run()
    finally:
        trainer.stop.set()
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return ElasticRun(result, timeline, trainer, marks)


def wait_for(timeline: Timeline, condition: Callable[[], bool], timeout_s: float,
             what: str) -> None:
    """Block until `condition()` holds, re-checked on every training event."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        timeline.changed.wait(timeout=0.5)
        timeline.changed.clear()


def full_strength_since(trainer: Trainer, timeline: Timeline, since: float,
                        capacity: int) -> float | None:
    """The time at which, after `since`, every one of `capacity` workers on live nodes had
    delivered a batch (the pool back to full strength); None: not yet."""
    pool = trainer.pool
    if pool is None:
        return None
    alive = set(pool.nodes)
    first: dict[int, float] = {}
    for batch in timeline.batches:
        if batch.at > since and batch.node_id in alive and batch.worker_id in pool.slots:
            first.setdefault(batch.worker_id, batch.at)
    if len(first) < capacity:
        return None
    return sorted(first.values())[capacity - 1]


def first_batch_from(timeline: Timeline, node_id: str, since: float) -> float | None:
    """When the first batch from a worker on `node_id` arrived after `since` (None: none)."""
    return min((b.at for b in timeline.batches if b.at > since and b.node_id == node_id),
               default=None)


def bench_cluster(preset: str = "smoke", timesteps: int = 4096, nodes: tuple[int, ...] = (1, 2, 3),
                  graceful: bool = True, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """End-to-end steps/s with 1, 2 and 3 self-play nodes (one CPU each), then the time from
    a node's loss to full strength on the rest, and from a node joining to its first batch."""
    if ray.is_initialized():
        raise RuntimeError("bench cluster starts its own simulated cluster: call it without "
                           "a Ray session")
    figures: dict[str, Any] = {"preset": preset, "cpus on this machine": os.cpu_count(),
                               "self-play node CPUs": 1}
    with tempfile.TemporaryDirectory() as tmp, simulated_cluster(min(nodes)) as sim:
        for n in sorted(nodes):
            while len(sim.selfplay) < n:
                sim.add_selfplay_node()
            config = cluster_config(f"train.total_timesteps={timesteps}",
                                    f"train.runs_dir={tmp}", *overrides, preset=preset)
            run_dir = Path(tmp) / f"scale-{n}"
            run_dir.mkdir()
            result = Trainer(config, run_dir).run()
            figures[f"{n} node(s): steps per s"] = result.steps_per_s
            figures[f"{n} node(s): learner busy"] = result.learner_busy
            figures[f"{n} node(s): workers busy"] = result.worker_busy
        figures.update(_loss_and_join(sim, Path(tmp), preset, graceful, overrides))
    return figures


def _loss_and_join(sim: SimulatedCluster, tmp: Path, preset: str, graceful: bool,
                   overrides: tuple[str, ...]) -> dict[str, float]:
    """One run: warm up on every node, lose one, let the pool recover, add one back."""
    while len(sim.selfplay) < 2:
        sim.add_selfplay_node()
    config = cluster_config("train.total_timesteps=100000000", f"train.runs_dir={tmp}",
                            *overrides, preset=preset)
    before = len(sim.selfplay)

    def controller(trainer: Trainer, timeline: Timeline, marks: dict[str, float]) -> None:
        wait_for(timeline, lambda: len(timeline.updates) >= 3, 300, "three updates")
        victim = sim.selfplay[-1]
        marks["loss"] = time.monotonic()
        sim.remove(victim, graceful=graceful)
        remaining = (before - 1) * sim.cpus_per_node
        wait_for(timeline, lambda: full_strength_since(trainer, timeline, marks["loss"],
                                                       remaining) is not None,
                 120, "full strength after the node loss")
        marks["full"] = full_strength_since(trainer, timeline, marks["loss"], remaining) or 0.0
        # The join is measured on its own: once Ray has declared the lost node dead and the
        # pool dropped its worker (at once when graceful; health checks take ~10-30 s when not).
        wait_for(timeline, lambda: trainer.pool is not None and trainer.pool.removed >= 1,
                 120, "the lost node's worker dropped")
        marks["dropped"] = time.monotonic()
        marks["start"] = time.monotonic()
        node = sim.add_selfplay_node()
        marks["join"] = time.monotonic()
        wait_for(timeline, lambda: first_batch_from(timeline, node.node_id, marks["join"])
                 is not None, 120, "a batch from the new node")
        marks["first"] = first_batch_from(timeline, node.node_id, marks["join"]) or 0.0

    run_dir = tmp / "elastic"
    run_dir.mkdir()
    run = run_with(config, run_dir, controller)
    kind = "graceful" if graceful else "abrupt"
    return {f"node loss ({kind}) -> full strength s": run.marks["full"] - run.marks["loss"],
            f"node loss ({kind}) -> its worker dropped s": run.marks["dropped"] - run.marks["loss"],
            "node join -> first batch s": run.marks["first"] - run.marks["join"],
            "node start -> first batch s": run.marks["first"] - run.marks["start"],
            "batches lost (never counted)": float(run.result.state.lost_batches)}
