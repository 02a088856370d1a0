"""The learner: decodes experience, runs PPO, publishes weights. Plain Python; Ray wraps it.

One `update(batches)` call is one policy version: batches older than `ppo.max_policy_lag`
versions are dropped (and counted), the rest fill the pre-allocated buffer, PPO runs its
epochs, and the version goes up by one. `weights()` exports the model for the workers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from keisei_ray.codec import ExperienceBatch, decode
from keisei_ray.config import Config
from learner.buffer import ExperienceBuffer
from learner.model import PolicyValueNet, build_model, export_weights
from learner.ppo import Forward, GatherLogits, dense_gather, lr_at, ppo_update

log = logging.getLogger(__name__)

Payload = ExperienceBatch | bytes | bytearray | memoryview


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' and 'cuda' give CUDA when present (with a warning if asked for and absent)."""
    requested = str(device)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(requested)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %r asked for but CUDA is not available: the learner uses the CPU",
                    requested)
        return torch.device("cpu")
    return resolved


class Learner:
    """PPO on experience batches, with a buffer of `capacity` transitions on `device`.

    `total_timesteps` (default: config.train.total_timesteps) is where the LR schedule ends;
    `seed` (default: config.train.seed) seeds the model init and the minibatch order.
    `dense_policy` runs the old reference path (dense [N, 13527] logits, then the legal ones
    gathered from them) instead of reading the legal logits from the policy head: for
    benchmarks and tests only, it computes the same numbers more slowly. `fused_adam` is
    torch's `fused` flag of the optimizer (None: torch's default, the foreach kernels).
    """

    def __init__(
        self,
        config: Config,
        capacity: int,
        device: str | torch.device = "auto",
        *,
        total_timesteps: int | None = None,
        seed: int | None = None,
        dense_policy: bool = False,
        fused_adam: bool | None = None,
    ) -> None:
        self.config = config
        self.ppo = config.ppo
        self.device = resolve_device(device)
        self.total_timesteps = (config.train.total_timesteps if total_timesteps is None
                                else total_timesteps)
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1, got {self.total_timesteps!r}")
        seed = config.train.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Module.to accepts memory_format; torch's type stubs leave it out.
            self.model: PolicyValueNet = build_model(config.model).to(  # type: ignore[call-overload]
                self.device, memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(seed)  # minibatch order, on the CPU

        self.forward: Forward = self.model if dense_policy else self.model.heads
        self.gather: GatherLogits = dense_gather if dense_policy else self.model.legal_logits
        if self.ppo.compile:
            # Only the forward is compiled: self.model keeps state_dict keys clean. On a CPU
            # learner inductor needs a C++ compiler on the machine (docs/benchmarks.md).
            self.forward = torch.compile(self.forward, mode=self.ppo.compile_mode)
        optimizer = torch.optim.AdamW if self.ppo.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer(self.model.parameters(), lr=self.ppo.learning_rate,
                                   eps=self.ppo.adam_eps, weight_decay=self.ppo.weight_decay,
                                   fused=fused_adam)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.ppo.amp == "fp16")
        self.buffer = ExperienceBuffer(capacity, self.device)

        self.version = 0  # policy version of the current weights
        self.timesteps = 0  # accepted transitions, the LR schedule's clock
        self.updates = 0
        self.dropped_batches = 0

    # ------------------------------------------------------------------ training

    def _autocast(self) -> AbstractContextManager[object]:
        if self.ppo.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.ppo.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def lr(self, progress: float) -> float:
        """The scheduled learning rate at `progress` (timesteps / total_timesteps)."""
        return lr_at(progress, self.ppo)

    def update(self, batches: Sequence[Payload]) -> dict[str, float]:
        """One PPO update on `batches` (encoded bytes or decoded batches); the metrics.

        Batches whose policy version lags the learner's by more than max_policy_lag (or is
        ahead of it, e.g. after a resume) are dropped. With nothing accepted the model is not
        touched and the version stays; the metrics then hold only the counters and lr.
        """
        start = time.perf_counter()
        self.buffer.clear()
        dropped = max_lag = 0
        for payload in batches:
            with record_function("decode"):
                batch = payload if isinstance(payload, ExperienceBatch) else decode(payload)
            lag = self.version - batch.policy_version
            if not 0 <= lag <= self.ppo.max_policy_lag:
                log.debug("dropped a batch of worker %d: policy version %d, learner at %d",
                          batch.worker_id, batch.policy_version, self.version)
                dropped += 1
                continue
            self.buffer.add(batch, self.ppo.search_value_mix)
            max_lag = max(max_lag, lag)
        self.dropped_batches += dropped
        accepted = len(self.buffer)
        counters = {"accepted": float(accepted), "dropped_batches": float(dropped),
                    "max_policy_lag": float(max_lag)}
        if accepted == 0:
            return {**counters, "version": float(self.version),
                    "lr": self.lr(self.timesteps / self.total_timesteps)}

        before = self.timesteps

        def lr_for_step(step: int, planned: int) -> float:
            # The progress reached at the end of this optimizer step.
            done = before + accepted * (step + 1) / planned
            return self.lr(done / self.total_timesteps)

        explained = _explained_variance(self.buffer.values[:accepted],
                                        self.buffer.returns[:accepted])
        metrics = ppo_update(self.forward, self.model, self.optimizer, self.scaler, self.buffer,
                             self.ppo, max_moves=self.config.env.max_moves,
                             attack_planes=self.config.model.attack_planes,
                             lr_for_step=lr_for_step, generator=self.generator,
                             autocast=self._autocast, gather=self.gather)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.timesteps += accepted
        self.version += 1
        self.updates += 1
        return {**metrics, **counters, "explained_variance": explained,
                "version": float(self.version), "update_s": seconds,
                "samples_per_s": metrics["samples"] / seconds}

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` transitions per update (a new buffer, only if larger)."""
        if capacity > self.buffer.capacity:
            log.info("experience buffer grows from %d to %d transitions", self.buffer.capacity,
                     capacity)
            self.buffer = ExperienceBuffer(capacity, self.device)

    # ------------------------------------------------------------------ weights and state

    def weights(self, half: bool = False) -> tuple[int, dict[str, np.ndarray]]:
        """(version, {name: array}) of parameters AND buffers (floats as float16 if `half`)."""
        return self.version, export_weights(self.model, half=half)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (loadable with torch.load(weights_only=True)).

        The LR schedule has no state of its own: it is a function of `timesteps`.
        """
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "counters": {"version": self.version, "timesteps": self.timesteps,
                         "updates": self.updates, "dropped_batches": self.dropped_batches},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"model", "optimizer", "scaler", "generator", "counters"} - set(state)
        if missing:
            raise ValueError(f"learner state is missing {sorted(missing)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        counters = state["counters"]
        self.version = int(counters["version"])
        self.timesteps = int(counters["timesteps"])
        self.updates = int(counters["updates"])
        self.dropped_batches = int(counters["dropped_batches"])


def _explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target does not vary."""
    var = target.var() if len(target) > 1 else torch.zeros(())
    if float(var) == 0.0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var)
