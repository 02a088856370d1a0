"""The inference actor on a real local Ray: several workers served at once in shared batches,
a version change mid-round, a killed actor mid-run, and training with it end to end."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

from actors.inference import InferenceActor, InferenceRequest, InferenceStats
from actors.self_play import SelfPlayActor
from keisei_ray.codec import ExperienceBatch, decode
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.events import BatchCollected, Callback, UpdateDone
from keisei_ray.training.driver import Trainer
from learner.features import encode_planes, to_tensors
from learner.model import LegalPolicy, build_model, export_weights

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def _config(*extra: str) -> Config:
    return load_config(None, [
        "model.size=tiny", "env.max_moves=64", "train.games_per_worker=4",
        "train.rollout_steps=6", "inference.enabled=true", "inference.num_cpus=0",
        "inference.max_wait_ms=50", *extra])


def _model(config: Config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config.model).eval()


def _log_probs(model: torch.nn.Module, batch: ExperienceBatch) -> tuple[np.ndarray, np.ndarray]:
    """Each row's log-prob of its action and its value under `model`."""
    with torch.inference_mode():
        logits, values = model(encode_planes(to_tensors(batch.state), 64))
        policy = LegalPolicy.from_csr(logits, torch.from_numpy(batch.legal_offsets).long(),
                                      torch.from_numpy(batch.legal_actions).long())
        log_probs = policy.log_prob(torch.from_numpy(batch.action.astype(np.int64)))
    return log_probs.numpy(), values.numpy()


def _actors(config: Config, workers: int) -> tuple[Any, list[Any]]:
    server = InferenceActor.options(num_cpus=0).remote(config, "cpu")
    pool = [SelfPlayActor.options(num_cpus=0).remote(config, w) for w in range(workers)]
    ray.get([server.ready.remote(), *(w.ready.remote() for w in pool)])
    return server, pool


def _collect(worker: Any, box: list[Any], version: int,
             server: Any) -> tuple[Any, Any]:
    refs = worker.collect.options(num_returns=2).remote(box, version, None, 0.0, 0, server)
    return refs[0], refs[1]


def test_several_workers_share_the_actors_forwards() -> None:
    config = _config()
    model = _model(config, 1)
    box = [ray.put(export_weights(model))]
    server, pool = _actors(config, 3)
    try:
        running = [_collect(w, box, 4, server) for w in pool]
        results = [(ray.get(s), decode(ray.get(p))) for s, p in running]
        stats: InferenceStats = ray.get(server.stats.remote())
    finally:
        for actor in [server, *pool]:
            ray.kill(actor)
    # 3 workers x (6 plies + the bootstrap) requests of 4 positions each.
    assert stats.requests == 3 * 7 and stats.rows == 3 * 7 * 4
    # Batching happened: forwards held several workers' positions.
    assert stats.batches < stats.requests and stats.max_rows >= 8
    assert stats.versions_loaded == 1
    for summary, batch in results:
        assert summary.inference_served == 7 and not summary.inference_lost
        assert batch.policy_version == 4
        log_probs, values = _log_probs(model, batch)
        np.testing.assert_allclose(batch.log_prob, log_probs, atol=1e-5)
        np.testing.assert_allclose(batch.value, values, atol=1e-5)


def test_a_version_change_mid_round_stamps_every_row_with_its_version() -> None:
    # One worker still plays version 1 while another already plays version 2, through the same
    # actor keeping only one version loaded: each row must be its collect's version.
    config = _config("inference.versions_kept=1", "train.rollout_steps=8")
    models = {1: _model(config, 11), 2: _model(config, 12)}
    boxes = {v: [ray.put(export_weights(m))] for v, m in models.items()}
    server, pool = _actors(config, 2)
    try:
        first = _collect(pool[0], boxes[1], 1, server)
        time.sleep(0.2)  # the round is under way when the new version arrives
        second = _collect(pool[1], boxes[2], 2, server)
        third = _collect(pool[0], boxes[2], 2, server)  # worker 0's next collect: version 2
        batches = {name: (ray.get(s), decode(ray.get(p)))
                   for name, (s, p) in {"first": first, "second": second,
                                        "third": third}.items()}
        stats: InferenceStats = ray.get(server.stats.remote())
    finally:
        for actor in [server, *pool]:
            ray.kill(actor)
    expected = {"first": 1, "second": 2, "third": 2}
    for name, (summary, batch) in batches.items():
        version = expected[name]
        assert summary.version == batch.policy_version == version
        log_probs, values = _log_probs(models[version], batch)
        np.testing.assert_allclose(batch.log_prob, log_probs, atol=1e-5)
        np.testing.assert_allclose(batch.value, values, atol=1e-5)
        other, _ = _log_probs(models[3 - version], batch)
        assert np.abs(other - batch.log_prob).max() > 1e-3
    assert stats.versions_loaded >= 2


def test_a_request_carries_its_seed_through_the_actor() -> None:
    config = _config()
    box = [ray.put(export_weights(_model(config, 3)))]
    server, _ = _actors(config, 0)
    try:
        from shogi import VecEnv

        obs = VecEnv(8, 64, seed=0).observe()
        request = InferenceRequest(0, 0, 0, box, obs.state, obs.legal_offsets,
                                   obs.legal_actions, seed=99)
        a, b = ray.get([server.evaluate.remote(request), server.evaluate.remote(request)])
    finally:
        ray.kill(server)
    assert np.array_equal(a.actions, b.actions) and a.version == 0


class _Recorder(Callback):
    def __init__(self) -> None:
        self.updates: list[UpdateDone] = []
        self.batches: list[BatchCollected] = []

    def on_batch_collected(self, event: BatchCollected) -> None:
        self.batches.append(event)

    def on_update_done(self, event: UpdateDone) -> None:
        self.updates.append(event)


def _train_config(tmp_path: Path, *extra: str) -> Config:
    return _config("train.rollout_steps=16", "train.num_workers=2", "train.learner_cpus=0",
                   "train.total_timesteps=640", "ppo.epochs=1", "ppo.minibatch_size=64",
                   "inference.max_wait_ms=5", f"train.runs_dir={tmp_path}", *extra)


def _trainer(config: Config, tmp_path: Path, *callbacks: Callback) -> Trainer:
    run_dir = tmp_path / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    return Trainer(config, run_dir, callbacks=list(callbacks))


def test_training_through_the_inference_actor(tmp_path: Path) -> None:
    rec = _Recorder()
    trainer = _trainer(_train_config(tmp_path), tmp_path, rec)
    stats: list[InferenceStats] = []

    class Watch(Callback):
        def on_update_done(self, event: UpdateDone) -> None:
            assert trainer.inference is not None
            found = trainer.inference.stats()
            if found is not None:
                stats.append(found)

    trainer.bus.register(Watch())
    result = trainer.run()
    assert result.reason == "completed"
    assert result.state.timestep == sum(u.accepted for u in rec.updates) >= 640
    assert max(u.policy_lag for u in rec.updates) <= 1
    assert {b.worker_id for b in rec.batches} == {0, 1}
    # The workers' positions went through the actor, one version load per policy version.
    assert stats and stats[-1].requests > 0 and stats[-1].max_rows >= 4
    assert trainer.inference is not None and trainer.inference.replaced == 0


@pytest.mark.parametrize("for_good", [True, False])
def test_a_killed_inference_actor_loses_no_counted_transition(tmp_path: Path,
                                                                for_good: bool) -> None:
    """Killed while the workers collect: they finish with their own copies, the run completes
    and counts exactly the accepted transitions; the actor is replaced (for good) or restarted
    by Ray, and serves again."""
    rec = _Recorder()
    config = _train_config(tmp_path, "train.total_timesteps=1280")
    trainer = _trainer(config, tmp_path, rec)
    killed = threading.Event()
    served_after: list[int] = []

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed.is_set():
            handle = trainer.pool.server if trainer.pool is not None else None
            if handle is not None:
                try:
                    stats: InferenceStats = ray.get(handle.stats.remote(), timeout=5)
                except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                    return
                if stats.requests >= 30:  # mid-run, workers are collecting
                    ray.kill(handle, no_restart=for_good)
                    killed.set()
                    return
            time.sleep(0.05)

    class AfterKill(Callback):
        def on_update_done(self, event: UpdateDone) -> None:
            if killed.is_set() and trainer.inference is not None:
                found = trainer.inference.stats()
                if found is not None:
                    served_after.append(found.requests)

    trainer.bus.register(AfterKill())
    thread = threading.Thread(target=kill_when_busy, daemon=True)
    thread.start()
    result = trainer.run()
    thread.join(5)
    assert killed.is_set()
    assert result.reason == "completed"
    assert result.state.timestep == sum(u.accepted for u in rec.updates) >= 1280
    assert result.state.lost_batches == 0  # no batch went with the actor
    assert trainer.inference is not None and trainer.inference.lost_rounds >= 1
    assert trainer.inference.replaced == (1 if for_good else 0)
    assert served_after and served_after[-1] > 0  # a live actor serves the later rounds
