"""Training on a multi-node cluster simulated with `ray.cluster_utils.Cluster`.

Every node is a real raylet with its own object store: a head (the driver), a learner node
(resource `learner`) and self-play nodes (resource `selfplay`), laid out as cluster.yaml lays
out a cloud cluster. Batches go through the object store as on a real cluster, where they are
too big to travel inline with the task reply (`max_direct_call_object_size` lowered), so a
node's loss can take batches the learner has not fetched yet. One cluster serves the module:
the tests run in order, each leaving it with the three self-play nodes it found.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from keisei_ray.bench.cluster import (
    SimulatedCluster,
    Timeline,
    cluster_config,
    first_batch_from,
    full_strength_since,
    run_with,
    simulated_cluster,
    wait_for,
)
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import BatchCollected, Callback, UpdateDone
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer
from keisei_ray.training.ray_cluster import worker_room
from tests.test_learner_restart import RestartLog, check_counter, check_restored_weights


def test_worker_room_counts_cpus_on_the_nodes_with_the_worker_resource() -> None:
    config = load_config(None, ["train.worker_cpus=2"])
    nodes = {"head": {"CPU": 8.0}, "gpu": {"CPU": 8.0, "GPU": 1.0, "learner": 1.0},
             "a": {"CPU": 32.0, "selfplay": 1000.0}, "b": {"CPU": 5.0, "selfplay": 1000.0},
             "c": {"selfplay": 1000.0}}  # no free CPU: absent from available resources
    assert worker_room(config, nodes, "selfplay") == 16 + 2
    assert worker_room(config, nodes, None) == 4 + 4 + 16 + 2  # any node's CPUs
    # A node's worker resource caps it too (each worker takes one unit).
    assert worker_room(config, {"a": {"CPU": 32.0, "selfplay": 3.0}}, "selfplay") == 3
    assert worker_room(load_config(None, ["train.worker_cpus=0.5"]), {"a": {"CPU": 1.5}},
                       None) == 3


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedCluster]:
    with simulated_cluster(3, learner_node=True,
                           system_config={"max_direct_call_object_size": 1024}) as cluster:
        yield cluster


def config(tmp_path: Path, *extra: str) -> Config:
    # Runs until the test's controller has seen what it waits for, then stops it.
    return cluster_config("env.max_moves=64", "train.games_per_worker=4",
                          "train.rollout_steps=16", "ppo.epochs=1", "ppo.minibatch_size=64",
                          "train.total_timesteps=100000000", f"train.runs_dir={tmp_path}",
                          *extra)


def check_counts(run_state_timestep: int, timeline: Timeline) -> None:
    """The timestep is exactly the sum of the transitions the learner accepted."""
    accepted = [event.accepted for _, event in timeline.updates]
    assert run_state_timestep == sum(accepted)
    assert [event.timestep for _, event in timeline.updates] == [
        sum(accepted[: i + 1]) for i in range(len(accepted))]


@pytest.mark.slow
def test_workers_spread_over_the_selfplay_nodes_and_the_learner_has_its_node(
        sim: SimulatedCluster, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def controller(trainer: Trainer, timeline: Timeline, marks: dict[str, float]) -> None:
        wait_for(timeline, lambda: len(timeline.updates) >= 3, 120, "three updates")
        assert trainer.pool is not None and sim.learner is not None
        seen["placement"] = trainer.pool.placement()
        seen["learner free"] = ray._private.state.available_resources_per_node()[
            sim.learner.node_id].get("learner", 0.0)

    run = run_with(config(tmp_path), tmp_path, controller)
    selfplay = {node.node_id for node in sim.selfplay}
    # `auto`: one worker per one-CPU self-play node, none on the head or the learner node.
    assert seen["placement"] == dict.fromkeys(selfplay, 1)
    assert seen["learner free"] == 0.0  # the learner holds the learner node's resource
    assert {batch.node_id for batch in run.timeline.batches} == selfplay
    check_counts(run.result.state.timestep, run.timeline)
    assert run.result.state.lost_batches == 0


class RemoveNodeOnBatch(Callback):
    """Takes the victim node away as soon as its worker delivered a batch (after two updates),
    on the driver's thread: that batch's bytes are then only in the victim's object store,
    and the update about to be given them finds them gone."""

    def __init__(self, sim: SimulatedCluster, victim: Any, timeline: list[Timeline]) -> None:
        self.sim, self.victim, self.timeline = sim, victim, timeline
        self.removed_at: float | None = None
        self.updates = 0

    def on_update_done(self, event: UpdateDone) -> None:
        self.updates += 1

    def on_batch_collected(self, event: BatchCollected) -> None:
        batch = self.timeline[0].batches[-1]  # registered first: it saw this batch already
        if (self.removed_at is None and self.updates >= 2
                and batch.node_id == self.victim.node_id):
            self.removed_at = time.monotonic()
            self.sim.remove(self.victim)


@pytest.mark.slow
def test_losing_a_selfplay_node_keeps_training_on_the_others(
        sim: SimulatedCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    victim = sim.selfplay[0]
    timelines: list[Timeline] = []
    remover = RemoveNodeOnBatch(sim, victim, timelines)

    def controller(trainer: Trainer, timeline: Timeline, marks: dict[str, float]) -> None:
        timelines.append(timeline)
        wait_for(timeline, lambda: remover.removed_at is not None, 120, "the node's removal")
        assert remover.removed_at is not None
        marks["loss"] = remover.removed_at
        wait_for(timeline, lambda: full_strength_since(trainer, timeline, marks["loss"], 2)
                 is not None, 60, "both remaining workers delivering")
        done = len(timeline.updates)
        wait_for(timeline, lambda: len(timeline.updates) >= done + 3, 60, "three more updates")

    caplog.set_level(logging.WARNING, logger="keisei_ray.training.driver")
    run = run_with(config(tmp_path), tmp_path, controller, callbacks=[remover])
    state = run.result.state
    after = [batch for batch in run.timeline.batches if batch.at > run.marks["loss"]]
    # Training went on, on the two remaining nodes only, with the victim's worker dropped.
    assert {batch.node_id for batch in after} == {node.node_id for node in sim.selfplay}
    assert run.timeline.updates[-1][1].workers_alive == 2
    assert run.trainer.pool is not None and run.trainer.pool.removed == 1
    # The round whose update lost the victim's batch was dropped whole: 3 batches, and the
    # victim's worker had nothing else running. None of it was counted.
    assert "input was lost with a node" in caplog.text
    assert state.lost_batches == 3
    check_counts(state.timestep, run.timeline)
    assert state.timestep <= sum(batch.transitions for batch in run.timeline.batches)
    sim.add_selfplay_node()  # back to three for the next test


@pytest.mark.slow
def test_a_node_that_joins_gets_workers(sim: SimulatedCluster, tmp_path: Path) -> None:
    sim.remove(sim.selfplay[-1])  # start on two self-play nodes

    def controller(trainer: Trainer, timeline: Timeline, marks: dict[str, float]) -> None:
        wait_for(timeline, lambda: len(timeline.updates) >= 2, 120, "two updates")
        node = sim.add_selfplay_node()
        marks["join"] = time.monotonic()
        wait_for(timeline, lambda: first_batch_from(timeline, node.node_id, marks["join"])
                 is not None, 60, "a batch from the new node's worker")

    run = run_with(config(tmp_path), tmp_path, controller)
    assert first_batch_from(run.timeline, sim.selfplay[-1].node_id, run.marks["join"])
    workers = [event.workers_alive for _, event in run.timeline.updates]
    assert workers[0] == 2 and max(workers) == 3  # the pool grew into the new node
    check_counts(run.result.state.timestep, run.timeline)


@pytest.mark.slow
def test_losing_the_learner_node_restarts_the_learner_on_a_new_node(
        sim: SimulatedCluster, tmp_path: Path) -> None:
    """The learner's node goes after the first checkpoint; the driver waits for room, a new
    node with the learner resource joins, and a learner restored from the newest checkpoint
    takes over there: the run completes, its counter the accepted transitions after the
    rollback, the new learner holding the checkpoint's weights."""
    log = RestartLog()
    seen: dict[str, float] = {}

    def controller(trainer: Trainer, timeline: Timeline, marks: dict[str, float]) -> None:
        wait_for(timeline, lambda: bool(log.saved), 120, "a first checkpoint")
        assert sim.learner is not None
        sim.remove(sim.learner)
        wait_for(timeline, lambda: bool(log.lost), 60, "the driver to see the loss")
        node = sim.add_learner_node()
        wait_for(timeline, lambda: bool(log.restarts), 120, "the restart")
        seen["learner free"] = ray._private.state.available_resources_per_node()[
            node.node_id].get("learner", 0.0)
        wait_for(timeline, lambda: log.ended, 300, "the run's end")

    cfg = config(tmp_path, "checkpoint.interval_timesteps=300", "train.total_timesteps=1600")
    run = run_with(cfg, tmp_path, controller, callbacks=[CheckpointCallback(cfg), log])
    assert run.result.reason == "completed" and run.result.learner_restarts == 1
    assert seen["learner free"] == 0.0  # the new learner holds the new node's resource
    check_counter(log, run.result.state.timestep)
    check_restored_weights(log)


@pytest.mark.slow
def test_losing_the_learner_node_without_restarts_ends_the_run_with_a_clear_message(
        sim: SimulatedCluster, tmp_path: Path) -> None:
    """`keisei-ray train` joined to the cluster, as on a real one, with
    `train.learner_max_restarts=0`: the learner's node goes after the first checkpoint, and
    the run ends naming it and the command that resumes (as before learners restarted)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    run_dir = tmp_path / "learner-loss"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keisei_ray.cli", "train", "--address", sim.address,
         "--preset", "smoke", "train.total_timesteps=100000000", "train.num_workers=auto",
         "train.learner_cpus=0", "train.learner_max_restarts=0", "evaluation.enabled=false",
         "checkpoint.interval_timesteps=500",
         f"train.runs_dir={tmp_path}", "train.run_name=learner-loss"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "checkpoint" in line and "saved" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(timeout=180), "".join(lines[-30:])
        assert sim.learner is not None
        sim.remove(sim.learner)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 1, output[-3000:]
    # The run ends with the CLI's one-line message (its last line: no uncaught exception).
    message = lines[-1]
    assert message.startswith("keisei-ray: training failed: the learner failed"), output[-3000:]
    assert f"the last good checkpoint is {run_dir / 'checkpoints'}/ckpt-" in message
    assert message.rstrip().endswith(f"continue with: keisei-ray train --resume {run_dir}")
