"""Batched inference without Ray: the batcher, the server's forward per version, and the
self-play worker talking to a server through a stand-in for the Ray call."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from actors.inference import (
    Batcher,
    InferenceReply,
    InferenceRequest,
    PolicyServer,
    RemotePolicy,
)
from actors.self_play import SelfPlayWorker
from keisei_ray.codec import decode
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from learner.features import encode_planes, to_tensors
from learner.model import LegalPolicy, build_model, export_weights
from shogi import Observation, VecEnv


def _config(*overrides: str) -> Config:
    return load_config(None, ["model.size=tiny", "train.games_per_worker=4",
                              "train.rollout_steps=3", *overrides])


def _request(worker_id: int, rows: int, version: int = 0, weights: Any = None,
             seed: int = 0, env_seed: int = 0) -> InferenceRequest:
    obs = VecEnv(rows, 512, seed=env_seed).observe()
    return InferenceRequest(worker_id, version, 0, weights, obs.state, obs.legal_offsets,
                            obs.legal_actions, seed)


def _echo(seen: list[list[int]], delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    """An evaluate that records each batch's request sizes and answers with the worker id."""
    def evaluate(requests: list[InferenceRequest]) -> list[InferenceReply]:
        seen.append([len(r) for r in requests])
        time.sleep(delay_s)
        total = sum(len(r) for r in requests)
        return [InferenceReply(r.version, r.lineage, np.full(len(r), r.worker_id),
                               np.zeros(len(r), np.float32), np.zeros(len(r), np.float32), total)
                for r in requests]
    return evaluate


def test_batcher_gathers_waiting_requests_into_one_batch_and_routes_the_replies() -> None:
    seen: list[list[int]] = []
    batcher = Batcher(_echo(seen), max_batch=1000, max_wait_s=0.5)
    try:
        futures = [batcher.submit(_request(w, 3 + w)) for w in range(5)]
        replies = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    assert seen == [[3, 4, 5, 6, 7]]  # all within the first one's wait: one forward
    for w, reply in enumerate(replies):
        assert list(reply.actions) == [w] * (3 + w) and reply.batch_rows == 25
    assert batcher.batches == 1 and batcher.requests == 5 and batcher.max_rows == 25


def test_batcher_keeps_batches_within_max_batch_and_never_splits_a_request() -> None:
    seen: list[list[int]] = []
    batcher = Batcher(_echo(seen), max_batch=10, max_wait_s=0.2)
    try:
        futures = [batcher.submit(_request(w, n)) for w, n in enumerate([4, 4, 4, 12, 1])]
        for f in futures:
            f.result(timeout=10)
    finally:
        batcher.close()
    assert seen == [[4, 4], [4], [12], [1]]  # 12 > max_batch runs alone


def test_batcher_serves_concurrent_callers_while_a_forward_runs() -> None:
    seen: list[list[int]] = []
    batcher = Batcher(_echo(seen, delay_s=0.05), max_batch=1000, max_wait_s=0.0)
    results: dict[int, np.ndarray] = {}

    def client(w: int) -> None:
        for _ in range(5):
            results[w] = batcher.submit(_request(w, 2)).result(timeout=10).actions

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert batcher.requests == 40 and all(list(results[w]) == [w, w] for w in range(8))
    # Requests that arrived during a forward join the next one: fewer forwards than requests.
    assert batcher.batches < 40 and max(len(b) for b in seen) > 1


def test_batcher_hands_an_evaluation_error_to_every_caller_and_goes_on() -> None:
    calls = 0

    def flaky(requests: list[InferenceRequest]) -> list[InferenceReply]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad weights")
        return _echo([])(requests)

    batcher = Batcher(flaky, max_batch=100, max_wait_s=0.2)
    try:
        bad = [batcher.submit(_request(w, 2)) for w in range(2)]
        for f in bad:
            with pytest.raises(ValueError, match="bad weights"):
                f.result(timeout=10)
        assert list(batcher.submit(_request(7, 2)).result(timeout=10).actions) == [7, 7]
    finally:
        batcher.close()


def test_batcher_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(_echo([]), max_batch=0, max_wait_s=0.0)
    with pytest.raises(ValueError, match="max_wait_s"):
        Batcher(_echo([]), max_batch=1, max_wait_s=-1.0)


def _versions(config: Config) -> dict[int, torch.nn.Module]:
    models = {}
    for version in (0, 1):
        torch.manual_seed(100 + version)
        models[version] = build_model(config.model).eval()
    return models


def _local(model: torch.nn.Module, request: InferenceRequest,
           actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs of `actions` and the values under `model`, computed the dense way."""
    with torch.inference_mode():
        logits, values = model(encode_planes(to_tensors(request.state), 512))
        policy = LegalPolicy.from_csr(logits, torch.from_numpy(request.legal_offsets).long(),
                                      torch.from_numpy(request.legal_actions).long())
        log_probs = policy.log_prob(torch.from_numpy(actions))
    return log_probs.numpy(), values.numpy()


def test_server_answers_each_request_with_the_version_it_names() -> None:
    config = _config()
    models = _versions(config)
    weights = {v: export_weights(m) for v, m in models.items()}
    server = PolicyServer(config, "cpu", fetch=lambda w: w)
    requests = [_request(w, 5, version=w % 2, weights=weights[w % 2], seed=w, env_seed=w)
                for w in range(4)]
    replies = server.evaluate(requests)
    assert server.loads == 2
    for request, reply in zip(requests, replies, strict=True):
        assert reply.version == request.version and reply.batch_rows == 10
        rows = np.split(request.legal_actions, request.legal_offsets[1:-1])
        assert all(a in row for a, row in zip(reply.actions, rows, strict=True))
        log_probs, values = _local(models[request.version], request, reply.actions)
        np.testing.assert_allclose(reply.log_probs, log_probs, atol=1e-5)
        np.testing.assert_allclose(reply.values, values, atol=1e-5)
    # The other version's numbers differ: the check above can tell them apart.
    other, _ = _local(models[1], requests[0], replies[0].actions)
    assert np.abs(other - replies[0].log_probs).max() > 1e-3


def test_server_samples_the_same_actions_alone_or_in_a_batch() -> None:
    config = _config()
    weights = export_weights(_versions(config)[0])
    server = PolicyServer(config, "cpu", fetch=lambda w: w)
    requests = [_request(w, 16, weights=weights, seed=1000 + w, env_seed=w) for w in range(3)]
    together = server.evaluate(requests)
    alone = [server.evaluate([r])[0] for r in requests]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a.actions, b.actions)
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
    other = server.evaluate([_request(0, 16, weights=weights, seed=7, env_seed=0)])[0]
    assert not np.array_equal(other.actions, together[0].actions)  # the seed matters


def test_server_keeps_the_newest_versions_and_loads_an_evicted_one_again() -> None:
    config = _config("inference.versions_kept=1")
    weights = {v: export_weights(m) for v, m in _versions(config).items()}
    fetched: list[int] = []

    def fetch(version: int) -> Any:
        fetched.append(version)
        return weights[version]

    server = PolicyServer(config, "cpu", fetch=fetch)
    for version in (0, 0, 1, 0):
        server.evaluate([_request(0, 2, version=version, weights=version)])
    assert fetched == [0, 1, 0] and len(server.models) == 1


class _DirectRemote(RemotePolicy):
    """RemotePolicy whose 'Ray call' is a direct call of a PolicyServer; it is lost after
    `lose_after` requests (as a killed actor is)."""

    def __init__(self, server: PolicyServer, version: int, weights: Any,
                 lose_after: int | None = None) -> None:
        super().__init__(None, 0, version, 0, weights, timeout_s=1.0)
        self.server = server
        self.lose_after = lose_after

    def evaluate(self, obs: Observation, seed: int, *, values_only: bool = False
                 ) -> InferenceReply | None:
        if self.lose_after is not None and self.served >= self.lose_after:
            self.lost_reason = "ActorDiedError"
        if self.lost_reason is not None:
            return None
        self.served += 1
        request = InferenceRequest(0, self.version, 0, self.weights_box, obs.state,
                                   obs.legal_offsets, obs.legal_actions, seed, values_only)
        return self.server.evaluate([request])[0]


@pytest.mark.parametrize("lose_after", [None, 2])
def test_worker_plays_through_a_server_and_on_its_own_copy_once_it_is_lost(
        lose_after: int | None) -> None:
    config = _config()
    models = _versions(config)
    weights = export_weights(models[1])
    fetches: list[int] = []

    def fetch() -> dict[str, np.ndarray]:
        fetches.append(1)
        return weights

    worker = SelfPlayWorker(config, worker_id=0)
    worker.remote = _DirectRemote(PolicyServer(config, "cpu", fetch=lambda w: w), 5, weights,
                                  lose_after)
    summary, payload = worker.collect(fetch, 5)
    batch = decode(payload)
    assert batch.policy_version == 5 and summary.version == 5
    # rollout_steps=3 forwards and the bootstrap: 4 requests.
    assert summary.inference_served == (4 if lose_after is None else lose_after)
    assert summary.inference_lost == (lose_after is not None)
    # The worker fetched the weights only when it needed its own copy.
    assert len(fetches) == (0 if lose_after is None else 1)
    # Every row's log-prob and value are the version's, whoever computed them.
    request = InferenceRequest(0, 5, 0, None, batch.state, batch.legal_offsets,
                               batch.legal_actions, 0)
    log_probs, values = _local(models[1], request, batch.action.astype(np.int64))
    np.testing.assert_allclose(batch.log_prob, log_probs, atol=1e-5)
    np.testing.assert_allclose(batch.value, values, atol=1e-5)


def test_config_keeps_the_learner_a_share_of_its_gpu() -> None:
    from keisei_ray.config import ConfigError

    with pytest.raises(ConfigError, match="inference.num_gpus must be below 1"):
        _config("inference.num_gpus=1")
    assert _config("inference.num_gpus=1", "inference.placement=own").inference.num_gpus == 1.0
    assert _config().inference.enabled is False  # off by default


def test_actor_options_ask_ray_for_the_gpu_share_beside_the_learner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from keisei_ray.training import inference as service

    config = _config("inference.enabled=true", "inference.num_gpus=0.3",
                     "inference.num_cpus=2")
    node = "ab" * 28  # a node id: 28 bytes in hex
    options = service.actor_options(config, "cuda", node, "keisei/inference-0")
    assert options["num_gpus"] == 0.3 and options["num_cpus"] == 2.0
    strategy = options["scheduling_strategy"]
    assert isinstance(strategy, NodeAffinitySchedulingStrategy)
    assert strategy.node_id == node and strategy.soft
    assert service.actor_options(config, "cpu", node, "x")["num_gpus"] == 0
    own = _config("inference.enabled=true", "inference.placement=own")
    assert "scheduling_strategy" not in service.actor_options(own, "cuda", node, "x")
    # The learner asks for the rest of its GPU only when the actor shares it on cuda.
    monkeypatch.setattr(service, "inference_device", lambda config: "cuda")
    assert service.learner_gpus(config, "cuda") == pytest.approx(0.7)
    assert service.learner_gpus(own, "cuda") == 1.0
    assert service.learner_gpus(_config(), "cuda") == 1.0  # inference off
    assert service.learner_gpus(config, "cpu") == 0.0
    monkeypatch.setattr(service, "inference_device", lambda config: "cpu")
    assert service.learner_gpus(config, "cuda") == 1.0
