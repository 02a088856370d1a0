"""Measuring the learner: samples/s and peak memory of one forward/backward micro-batch size.

Used by the learner's autotune (keisei_ray.training.tuning). A trial runs the PPO loss forward and
backward on rows of the learner's current buffer and then throws the gradients away: the
parameters, the optimizer and the model's buffers (BatchNorm statistics) are as before.
"""

from __future__ import annotations

import time

import torch

from learner.learner import Learner
from learner.ppo import ppo_loss


def micro_batch_trial(learner: Learner, size: int, *, repeats: int = 3,
                      generator: torch.Generator | None = None) -> tuple[float, float | None]:
    """(samples per second, peak device memory in bytes or None on a CPU) of micro-batches of
    `size` rows (drawn from the buffer, repeated when it holds fewer); the first pass is a
    warm-up and not timed. The buffer must hold at least one transition."""
    buffer, model = learner.buffer, learner.model
    n = len(buffer)
    if n == 0:
        raise ValueError("micro_batch_trial: the learner's buffer is empty")
    generator = generator or torch.Generator().manual_seed(0)
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    cuda = learner.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(learner.device)
        torch.cuda.reset_peak_memory_stats(learner.device)
    model.train()
    seconds = 0.0
    try:
        for i in range(repeats + 1):
            rows = torch.randint(0, n, (size,), generator=generator)  # on the host
            start = time.perf_counter()
            batch = buffer.minibatch(rows, learner.config.env.max_moves,
                                     learner.config.model.attack_planes)
            with learner._autocast():
                policy_out, values = learner.forward(batch.planes)
            loss, _ = ppo_loss(policy_out, values, batch, learner.ppo, learner.gather)
            loss.backward()
            if cuda:
                torch.cuda.synchronize(learner.device)
            if i > 0:
                seconds += time.perf_counter() - start
            learner.optimizer.zero_grad(set_to_none=True)
    finally:
        learner.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
    peak = float(torch.cuda.max_memory_allocated(learner.device)) if cuda else None
    return size * repeats / max(seconds, 1e-9), peak


def device_memory_bound(learner: Learner, share: float = 0.85) -> float | None:
    """Bytes a trial may peak at: `share` of the GPU's memory (None on a CPU: the sizes are
    bounded by the minibatch, whose memory the configured run needs anyway)."""
    if learner.device.type != "cuda":
        return None
    return share * float(torch.cuda.get_device_properties(learner.device).total_memory)
