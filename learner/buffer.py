"""The learner's experience buffer: decoded batches in tensors pre-allocated on the device.

The buffer holds compact states and CSR legal actions, not planes: each PPO minibatch builds
its planes and gathers its legal actions on the device from the rows it draws (cheap, and it
keeps the buffer at a few hundred bytes per transition instead of ~28 KB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from keisei_ray.codec import ExperienceBatch
from learner.features import StateTensors, encode_planes, from_numpy
from shogi.compact import STATE_FIELDS

log = logging.getLogger(__name__)

INITIAL_LEGAL_PER_ROW = 128  # legal actions reserved per transition; grows (doubling) if short
LEGAL_WIDTH_STEP = 64  # a padded minibatch's legal width: the widest row rounded up to this


@dataclass(frozen=True)
class Minibatch:
    """What one PPO step needs, on the device."""

    planes: torch.Tensor  # float32 [B, 46 or 50, 9, 9]
    legal_offsets: torch.Tensor  # long [B + 1]: CSR legal actions of the rows
    legal_actions: torch.Tensor  # int16 [M]
    actions: torch.Tensor  # long [B]
    log_probs: torch.Tensor  # float32 [B]: behaviour policy (the worker's, that played the row)
    values: torch.Tensor  # float32 [B]: behaviour value estimates
    advantages: torch.Tensor  # float32 [B]
    returns: torch.Tensor  # float32 [B]
    # The proximal policy and value (the learner's own at the start of the update, decoupled
    # PPO); equal to the behaviour ones when the update is not decoupled.
    prox_log_probs: torch.Tensor  # float32 [B]
    prox_values: torch.Tensor  # float32 [B]
    # With legal actions padded to a fixed width: which entries are real (None: all are).
    legal_valid: torch.Tensor | None = None
    # Search as a teacher (keisei_ray/codec.py's layout): per legal action, the improved
    # policy of a visited move, -1 for an unvisited one (it shares `target_rest` in
    # proportion to the network's policy), 0 on the rows without a target; None when the
    # buffer holds no target. `distill_scale` = rows / target rows of the buffer, so that the
    # distillation term averages over the target rows.
    targets: torch.Tensor | None = None  # float32 [M]
    target_rest: torch.Tensor | None = None  # float32 [B]
    distill_scale: float = 0.0


class ExperienceBuffer:
    """Up to `capacity` transitions; `clear()` empties it without freeing anything."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1 transition, got {capacity!r}")
        self.capacity = capacity
        self.device = device

        def alloc(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.state = StateTensors.zeros(capacity, device)  # shogi.compact.STATE_LAYOUT
        self.actions = alloc(capacity, dtype=torch.int16)
        self.log_probs = alloc(capacity, dtype=torch.float32)
        self.values = alloc(capacity, dtype=torch.float32)
        self.advantages = alloc(capacity, dtype=torch.float32)
        self.returns = alloc(capacity, dtype=torch.float32)
        self.prox_log_probs = alloc(capacity, dtype=torch.float32)  # set by the update
        self.prox_values = alloc(capacity, dtype=torch.float32)
        self.legal_offsets = alloc(capacity + 1, dtype=torch.int64)
        self.legal_actions = alloc(capacity * INITIAL_LEGAL_PER_ROW, dtype=torch.int16)
        # The offsets again on the host: a minibatch's legal-action layout is computed there,
        # so that no step reads a device value (no synchronisation on CUDA).
        self.host_offsets = np.zeros(capacity + 1, dtype=np.int64)
        self.pinned = device.type == "cuda"  # uploads staged in pinned host memory
        # The teacher's improved policy per legal action (actors/teacher.py), allocated with
        # the first batch that carries one.
        self.target_probs: torch.Tensor | None = None
        self.target_rest = alloc(capacity, dtype=torch.float32)
        self.num_targets = 0
        self.size = 0
        self.num_legal = 0

    def __len__(self) -> int:
        return self.size

    def clear(self) -> None:
        self.size = 0
        self.num_legal = 0
        self.num_targets = 0

    def add(self, batch: ExperienceBatch, search_value_mix: float = 0.0) -> None:
        """Append a decoded batch (copied to the device). On the rows with a search target the
        value target becomes (1 - search_value_mix) * return + search_value_mix * the search's
        value (`ppo.search_value_mix`)."""
        n, m = len(batch), len(batch.legal_actions)
        if self.size + n > self.capacity:
            raise ValueError(f"batches hold more than the buffer's capacity of {self.capacity} "
                             f"transitions ({self.size} + {n}): raise the learner's capacity")
        if self.num_legal + m > len(self.legal_actions):
            self._grow_legal(self.num_legal + m)
        rows = slice(self.size, self.size + n)
        for name in STATE_FIELDS:
            self._upload(getattr(self.state, name)[rows], getattr(batch.state, name))
        self._upload(self.actions[rows], batch.action)
        self._upload(self.log_probs[rows], batch.log_prob)
        self._upload(self.values[rows], batch.value)
        self._upload(self.advantages[rows], batch.advantage)
        has_target = np.asarray(batch.has_target) > 0
        returns = batch.returns
        if search_value_mix > 0 and has_target.any():
            mixed = (1.0 - search_value_mix) * returns + search_value_mix * batch.search_value
            returns = np.where(has_target, mixed, returns).astype(np.float32)
        self._upload(self.returns[rows], returns)
        self._upload(self.target_rest[rows], batch.target_rest.astype(np.float32))
        if has_target.any() and self.target_probs is None:
            self.target_probs = torch.zeros(len(self.legal_actions), dtype=torch.float16,
                                            device=self.device)
        if self.target_probs is not None:
            per_legal = np.zeros(m, dtype=np.float16)
            per_legal[np.repeat(has_target, np.diff(batch.legal_offsets))] = -1.0  # unvisited
            visited = batch.legal_offsets[batch.target_rows()] + batch.target_index
            per_legal[visited] = batch.target_probs
            self._upload(self.target_probs[self.num_legal:self.num_legal + m], per_legal)
        self.num_targets += int(has_target.sum())
        offsets = batch.legal_offsets[1:].astype(np.int64) + self.num_legal
        self.host_offsets[self.size + 1:self.size + n + 1] = offsets
        self._upload(self.legal_offsets[self.size + 1:self.size + n + 1], offsets)
        self._upload(self.legal_actions[self.num_legal:self.num_legal + m], batch.legal_actions)
        self.size += n
        self.num_legal += m

    def _upload(self, target: torch.Tensor, array: np.ndarray) -> None:
        """Copy a host array into the device tensor `target`: on CUDA through pinned memory
        without waiting (torch's pinned allocator keeps the block until the copy is done)."""
        source = from_numpy(array)
        if self.pinned:
            target.copy_(source.pin_memory(), non_blocking=True)
        else:
            target.copy_(source)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        source = torch.from_numpy(array)
        if self.pinned:
            return source.pin_memory().to(self.device, non_blocking=True)
        return source.to(self.device)

    def _grow_legal(self, needed: int) -> None:
        size = len(self.legal_actions)
        while size < needed:
            size *= 2
        log.info("legal-action buffer grows to %d entries (%.1f per transition)", size,
                 size / self.capacity)
        grown = torch.zeros(size, dtype=torch.int16, device=self.device)
        grown[:self.num_legal] = self.legal_actions[:self.num_legal]
        self.legal_actions = grown
        if self.target_probs is not None:
            targets = torch.zeros(size, dtype=torch.float16, device=self.device)
            targets[:self.num_legal] = self.target_probs[:self.num_legal]
            self.target_probs = targets

    def normalize_advantages(self) -> None:
        """Advantages to zero mean and unit standard deviation over the buffer."""
        adv = self.advantages[:self.size]
        std = adv.std() if self.size > 1 else torch.ones((), device=self.device)
        adv.sub_(adv.mean()).div_(std + 1e-8)

    def legal_width(self) -> int:
        """The fixed legal width of padded minibatches: the buffer's widest row rounded up to
        LEGAL_WIDTH_STEP (few distinct shapes across updates)."""
        widest = int(np.diff(self.host_offsets[:self.size + 1]).max(initial=1))
        return -(-max(widest, 1) // LEGAL_WIDTH_STEP) * LEGAL_WIDTH_STEP

    def minibatch(self, rows: torch.Tensor, max_moves: int, attack_planes: bool = False,
                  legal_width: int | None = None) -> Minibatch:
        """Planes, legal actions and training targets of `rows` (a long tensor on the CPU).

        The legal actions' layout is computed on the host from `host_offsets` and uploaded
        with the rows (pinned on CUDA): nothing is read back from the device. With
        `legal_width` each row's legal actions are padded to that many entries (their
        `legal_valid` says which are real), a shape that does not depend on the rows drawn.
        """
        host_rows = rows.numpy()
        starts = self.host_offsets[host_rows]
        counts = self.host_offsets[host_rows + 1] - starts
        b = len(host_rows)
        if legal_width is None:
            offsets = np.zeros(b + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            # Position j of the output row r reads legal_actions[starts[r] + j].
            positions = (np.repeat(starts - offsets[:-1], counts)
                         + np.arange(offsets[-1], dtype=np.int64))
            valid = None
        else:
            if b and counts.max() > legal_width:
                raise ValueError(f"a row has {counts.max()} legal actions, more than the "
                                 f"legal width {legal_width}")
            offsets = np.arange(b + 1, dtype=np.int64) * legal_width
            slot = np.arange(legal_width, dtype=np.int64)
            valid_np = slot[None, :] < counts[:, None]
            positions = np.where(valid_np, starts[:, None] + slot[None, :], 0).reshape(-1)
            valid = self._to_device(valid_np.reshape(-1))
        device_rows = self._to_device(host_rows)
        device_positions = self._to_device(positions)
        targets = rest = None
        if self.num_targets and self.target_probs is not None:
            if valid is not None:  # refused by the config check too (keisei_ray/config.py)
                raise ValueError("search targets (train.search) with padded legal actions "
                                 "(ppo.fixed_shapes) are not supported")
            targets = self.target_probs[device_positions].float()
            rest = self.target_rest[device_rows]
        return Minibatch(
            # channels_last: the layout the learner's model uses (about 25% faster convolution
            # backward on CPU, and what tensor cores want on CUDA).
            planes=encode_planes(self.state.index(device_rows), max_moves,
                                 attack_planes).contiguous(memory_format=torch.channels_last),
            legal_offsets=self._to_device(offsets),
            legal_actions=self.legal_actions[device_positions],
            actions=self.actions[device_rows].long(),
            log_probs=self.log_probs[device_rows],
            values=self.values[device_rows],
            advantages=self.advantages[device_rows],
            returns=self.returns[device_rows],
            prox_log_probs=self.prox_log_probs[device_rows],
            prox_values=self.prox_values[device_rows],
            legal_valid=valid,
            targets=targets,
            target_rest=rest,
            distill_scale=self.size / self.num_targets if self.num_targets else 0.0,
        )

    def behaviour_as_proximal(self) -> None:
        """Classic PPO: the proximal policy and value are the behaviour ones."""
        self.prox_log_probs[:self.size] = self.log_probs[:self.size]
        self.prox_values[:self.size] = self.values[:self.size]
