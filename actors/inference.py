"""Batched inference for the self-play workers (issue 23 item 5, `inference.*`).

One inference actor evaluates the positions of many workers in large batches (SEED RL's
central inference, Sample Factory's policy workers). A worker sends its games' compact states
and legal CSR (what the experience codec carries: ~100 bytes of state and ~33 int16 actions a
position, against ~15 KB of float planes), the policy version it plays the collect with and
that version's boxed weights ref; the actor builds the features on its device, runs one
forward per version for every request that waited, samples each request's actions with that
request's own seed, and replies with actions, log-probs, values and the version it used.

Versions: the actor answers a request with exactly the version the request names (it keeps
`inference.versions_kept` of them loaded and loads one it lacks from the request's weights
ref), so every row of a collect is played by the collect's version and the batch's stamp is
each row's behaviour version: `ppo.max_policy_lag` holds row by row as without the actor.
The reply names its version and the worker checks it.

The plain parts (`Batcher`, `PolicyServer`, `RemotePolicy`) run without Ray in tests; the
actor (`InferenceActor`) is their thin async Ray wrapper: each call awaits its batch's future
while the batcher's thread runs the forwards, so requests keep arriving during a forward.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
)

from keisei_ray.config import Config
from learner.features import encode_planes, to_tensors
from learner.model import LegalPolicy, build_model, load_weights
from shogi import CompactState, Observation

log = logging.getLogger(__name__)

_SEED_BOUND = 2**62  # sampling seeds are drawn below this (torch's manual_seed takes int64)


@dataclass(frozen=True)
class InferenceRequest:
    """One worker's positions, to be evaluated by policy (`lineage`, `version`).

    `weights` is what `PolicyServer`'s fetch turns into that version's weights: in Ray, the
    boxed ObjectRef the driver gave the worker's collect (a list, so Ray does not resolve it
    on the way). `values_only`: only the values are wanted (a rollout's bootstrap)."""

    worker_id: int
    version: int
    lineage: int
    weights: Any
    state: CompactState
    legal_offsets: np.ndarray  # int32 [N + 1]
    legal_actions: np.ndarray  # int16 [M]
    seed: int  # the request's sampling seed (the worker's generator draws it)
    values_only: bool = False

    def __len__(self) -> int:
        return len(self.state)


@dataclass(frozen=True)
class InferenceReply:
    """Actions (int64, -1 for a row without legal moves), their log-probs, the values, and
    the policy version that computed them; `batch_rows`: positions in the forward that did."""

    version: int
    lineage: int
    actions: np.ndarray
    log_probs: np.ndarray
    values: np.ndarray
    batch_rows: int


@dataclass(frozen=True)
class InferenceStats:
    """What the actor has served: forwards, requests and positions, and the batch sizes (in
    positions) of its most recent forwards."""

    batches: int
    requests: int
    rows: int
    max_rows: int
    recent_rows: tuple[int, ...]
    versions_loaded: int  # weight loads (a new version, or one evicted and wanted again)
    cpu_s: float  # the actor's process CPU seconds


# ----------------------------------------------------------------------------- batching


Evaluate = Callable[[list[InferenceRequest]], list[InferenceReply]]


class Batcher:
    """Gathers requests into batches of at most `max_batch` positions and runs `evaluate` on
    each batch in one thread of its own.

    A batch starts with the oldest waiting request, takes every request already waiting that
    fits, then waits for more until `max_wait_s` after the first one arrived or the batch is
    full. A request is never split; one larger than `max_batch` runs alone. An exception of
    `evaluate` goes to every request of its batch (the callers see it); the thread goes on.
    """

    def __init__(self, evaluate: Evaluate, max_batch: int, max_wait_s: float,
                 keep_recent: int = 1024) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not max_wait_s >= 0.0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.evaluate = evaluate
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[float, InferenceRequest,
                                       concurrent.futures.Future[InferenceReply]] | None] = (
            queue.Queue())
        self._carry: tuple[float, InferenceRequest,
                           concurrent.futures.Future[InferenceReply]] | None = None
        self._closed = False
        self.batches = 0
        self.requests = 0
        self.rows = 0
        self.max_rows = 0
        self.recent_rows: list[int] = []
        self._keep_recent = keep_recent
        self._thread = threading.Thread(target=self._run, name="inference-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: InferenceRequest) -> concurrent.futures.Future[InferenceReply]:
        """Queue `request`; its future resolves to its reply (or to the batch's exception)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: concurrent.futures.Future[InferenceReply] = concurrent.futures.Future()
        self._queue.put((time.monotonic(), request, future))
        return future

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after the batches already queued."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _next(self, timeout: float | None) -> tuple[float, InferenceRequest,
                                                    concurrent.futures.Future[InferenceReply]
                                                    ] | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = [first]
            rows = len(first[1])
            deadline = first[0] + self.max_wait_s
            stop = False
            while rows < self.max_batch:
                try:
                    item = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if rows + len(item[1]) > self.max_batch:
                    self._carry = item  # it starts the next batch
                    break
                batch.append(item)
                rows += len(item[1])
            self._serve(batch, rows)
            if stop:
                return

    def _serve(self, batch: list[tuple[float, InferenceRequest,
                                       concurrent.futures.Future[InferenceReply]]],
               rows: int) -> None:
        self.batches += 1
        self.requests += len(batch)
        self.rows += rows
        self.max_rows = max(self.max_rows, rows)
        self.recent_rows.append(rows)
        del self.recent_rows[:-self._keep_recent]
        try:
            replies = self.evaluate([request for _, request, _ in batch])
        except Exception as exc:  # handed to every caller of the batch (never swallowed)
            for _, _, future in batch:
                future.set_exception(exc)
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            future.set_result(reply)


# ----------------------------------------------------------------------------- the forward


class PolicyServer:
    """Evaluates batches of requests on one device with the versions they name.

    Keeps the `versions_kept` most recently used versions loaded, keyed by (lineage,
    version): a restarted learner's versions are other weights under the same numbers.
    `fetch` turns a request's `weights` into the weights (Ray: `ray.get` of the boxed ref).
    """

    def __init__(self, config: Config, device: str,
                 fetch: Callable[[Any], Mapping[str, np.ndarray]],
                 versions_kept: int | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.fetch = fetch
        self.versions_kept = versions_kept or config.inference.versions_kept
        self.models: OrderedDict[tuple[int, int], torch.nn.Module] = OrderedDict()
        self.loads = 0

    def model(self, request: InferenceRequest) -> torch.nn.Module:
        key = (request.lineage, request.version)
        model = self.models.get(key)
        if model is None:
            model = build_model(self.config.model)
            load_weights(model, self.fetch(request.weights))
            model = model.to(self.device).eval()
            self.models[key] = model
            self.loads += 1
            while len(self.models) > self.versions_kept:
                self.models.popitem(last=False)
        self.models.move_to_end(key)
        return model

    @torch.inference_mode()
    def evaluate(self, requests: list[InferenceRequest]) -> list[InferenceReply]:
        """The replies to `requests`, in their order: one forward per version among them."""
        replies: list[InferenceReply | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.lineage, request.version), []).append(i)
        for indices in groups.values():
            group = [requests[i] for i in indices]
            for i, reply in zip(indices, self._forward(group), strict=True):
                replies[i] = reply
        return [r for r in replies if r is not None]

    def _forward(self, group: list[InferenceRequest]) -> list[InferenceReply]:
        model = self.model(group[0])
        state = CompactState.concat([r.state for r in group])
        planes = encode_planes(to_tensors(state, self.device), self.config.env.max_moves,
                               self.config.model.attack_planes)
        logits, values = model(planes)
        values_np = values.float().cpu().numpy()
        total = len(state)
        out = []
        start = 0
        for request in group:
            n = len(request)
            rows = slice(start, start + n)
            if request.values_only:
                actions = np.full(n, -1, np.int64)
                log_probs = np.zeros(n, np.float32)
            else:
                actions, log_probs = sample(logits[rows], request.legal_offsets,
                                            request.legal_actions, request.seed)
            out.append(InferenceReply(request.version, request.lineage, actions, log_probs,
                                      values_np[rows].copy(), total))
            start += n
        return out


def sample(logits: torch.Tensor, offsets: np.ndarray, actions: np.ndarray,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample one legal action per row from the logits' legal entries (CSR), with a generator
    seeded by `seed`: the same draws whichever batch the rows were part of."""
    device = logits.device
    policy = LegalPolicy.from_csr(logits, torch.from_numpy(offsets.astype(np.int64)).to(device),
                                  torch.from_numpy(actions.astype(np.int64)).to(device))
    generator = torch.Generator(device=device).manual_seed(seed)
    chosen = policy.choose(generator=generator)
    return chosen.cpu().numpy(), policy.log_prob(chosen).float().cpu().numpy()


# ----------------------------------------------------------------------------- the worker's side


class RemotePolicy:
    """A worker's view of the inference actor for one collect: policy (`lineage`, `version`)
    with its boxed weights ref. `evaluate` returns None once the actor is gone (it died, is
    restarting, or did not answer within `inference.timeout_s`): the worker then plays on
    with its own copy. Errors of the evaluation itself are raised, never swallowed."""

    def __init__(self, handle: Any, worker_id: int, version: int, lineage: int,
                 weights_box: list[Any], timeout_s: float) -> None:
        self.handle = handle
        self.worker_id = worker_id
        self.version = version
        self.lineage = lineage
        self.weights_box = weights_box
        self.timeout_s = timeout_s
        self.served = 0  # requests answered
        self.lost_reason: str | None = None  # why the actor was given up on, if it was

    def evaluate(self, obs: Observation, seed: int, *, values_only: bool = False
                 ) -> InferenceReply | None:
        if self.lost_reason is not None:
            return None
        request = InferenceRequest(self.worker_id, self.version, self.lineage, self.weights_box,
                                   obs.state, obs.legal_offsets, obs.legal_actions, seed,
                                   values_only)
        try:
            reply: InferenceReply = ray.get(self.handle.evaluate.remote(request),
                                            timeout=self.timeout_s)
        except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
            self.lost_reason = type(exc).__name__
            log.warning("worker-%d: the inference actor is gone (%s); playing on with its own "
                        "copy of the policy", self.worker_id, self.lost_reason)
            return None
        except RayTaskError as exc:
            if isinstance(exc.cause, ObjectLostError):
                # The weights are gone (their learner died): the local load fails the same way
                # and the driver sees the loss as it does without the actor.
                self.lost_reason = type(exc.cause).__name__
                return None
            raise
        if (reply.version, reply.lineage) != (self.version, self.lineage):
            raise RuntimeError(f"worker-{self.worker_id}: the inference actor answered with "
                               f"version {reply.version} (lineage {reply.lineage}), not "
                               f"{self.version} ({self.lineage})")
        self.served += 1
        return reply


def draw_seed(generator: torch.Generator) -> int:
    """A request's sampling seed from the worker's generator (reproducible per worker)."""
    return int(torch.randint(_SEED_BOUND, (1,), generator=generator).item())


# ----------------------------------------------------------------------------- the Ray actor


def fetch_weights(box: Sequence[Any]) -> Mapping[str, np.ndarray]:
    """The weights of a boxed ObjectRef (as the driver hands them to a collect)."""
    weights: Mapping[str, np.ndarray] = ray.get(box[0])
    return weights


def _resolved_or_fetch(weights: Any) -> Mapping[str, np.ndarray]:
    # The actor resolves a new version's weights in its event loop (an await, not a blocking
    # ray.get); a version evicted meanwhile is fetched by the batcher's thread.
    return weights if isinstance(weights, Mapping) else fetch_weights(weights)


class InferenceActorImpl:
    """The inference actor (async: each call awaits its batch while the batcher's thread
    runs the forwards)."""

    def __init__(self, config: Config, device: str) -> None:
        inference = config.inference
        torch.set_num_threads(max(1, math.ceil(inference.num_cpus)))
        self.server = PolicyServer(config, device, _resolved_or_fetch)
        self.batcher = Batcher(self.server.evaluate, inference.max_batch,
                               inference.max_wait_ms / 1000.0)
        log.info("inference actor on %s (max batch %d positions, wait %.1f ms)", device,
                 inference.max_batch, inference.max_wait_ms)

    async def ready(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    async def evaluate(self, request: InferenceRequest) -> InferenceReply:
        if (request.lineage, request.version) not in self.server.models:
            weights = await request.weights[0]
            request = dataclasses.replace(request, weights=weights)
        return await asyncio.wrap_future(self.batcher.submit(request))

    async def stats(self) -> InferenceStats:
        b = self.batcher
        return InferenceStats(batches=b.batches, requests=b.requests, rows=b.rows,
                              max_rows=b.max_rows, recent_rows=tuple(b.recent_rows),
                              versions_loaded=self.server.loads, cpu_s=time.process_time())


InferenceActor: Any = ray.remote(InferenceActorImpl)
