"""PPO: the learning-rate schedule, the clipped loss and the update loop, top to bottom.

Progress through training is measured in accepted transitions: progress = timesteps /
total_timesteps, where the learner counts the transitions it trained on (the same number
the driver counts). The learning rate is set before every optimizer step from the progress
reached at the end of that step, so the very last step of training runs exactly at the
final learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.profiler import record_function

from keisei_ray.config import PPOConfig
from learner.buffer import ExperienceBuffer, Minibatch
from learner.model import LegalPolicy


def lr_at(progress: float, ppo: PPOConfig) -> float:
    """The scheduled learning rate at `progress` in [0, 1] (clamped); exact at both ends."""
    p = min(max(progress, 0.0), 1.0)
    if ppo.lr_schedule == "constant":
        return ppo.learning_rate
    linear = ppo.lr_schedule == "linear"
    weight = 1.0 - p if linear else 0.5 * (1.0 + math.cos(math.pi * p))
    # weight 1 -> exactly the initial rate, weight 0 -> exactly the final one.
    return weight * ppo.learning_rate + (1.0 - weight) * ppo.final_learning_rate


def ppo_loss(
    logits: torch.Tensor, values: torch.Tensor, batch: Minibatch, ppo: PPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective of one minibatch and its statistics (detached tensors)."""
    policy = LegalPolicy.from_csr(logits, batch.legal_offsets, batch.legal_actions)
    log_ratio = policy.log_prob(batch.actions) - batch.log_probs
    ratio = log_ratio.exp()

    # Clipped surrogate (advantages were normalised over the whole update, if asked).
    adv = batch.advantages
    clipped_ratio = ratio.clamp(1.0 - ppo.clip_range, 1.0 + ppo.clip_range)
    policy_loss = -torch.min(ratio * adv, clipped_ratio * adv).mean()

    # Value loss, optionally clipped per element around the behaviour value.
    values = values.float()
    value_error = (values - batch.returns).square()
    if ppo.value_clip_range is not None:
        clipped = batch.values + (values - batch.values).clamp(-ppo.value_clip_range,
                                                               ppo.value_clip_range)
        value_error = torch.max(value_error, (clipped - batch.returns).square())
    value_loss = 0.5 * value_error.mean()

    entropy = policy.entropy().mean()
    loss = policy_loss + ppo.value_coef * value_loss - ppo.entropy_coef * entropy

    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy.detach(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),  # k3 estimator, >= 0
            "clip_fraction": ((ratio - 1.0).abs() > ppo.clip_range).float().mean(),
        }
    return loss, stats


# Long by choice: the PPO update top to bottom, CleanRL-style (epochs, minibatches, micro-
# batches, loss terms, clipping, statistics), so the algorithm reads in one screen.
def ppo_update(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    buffer: ExperienceBuffer,
    ppo: PPOConfig,
    *,
    max_moves: int,
    attack_planes: bool = False,
    lr_for_step: Callable[[int, int], float],
    generator: torch.Generator,
    autocast: Callable[[], AbstractContextManager[object]],
) -> dict[str, float]:
    """Epochs x minibatches of PPO over the buffer; returns the mean statistics.

    `forward` is the model or its compiled form; `lr_for_step(step, planned_steps)` gives
    each optimizer step's learning rate; `autocast()` opens the mixed-precision context.
    """
    n = len(buffer)
    if ppo.normalize_advantages:
        buffer.normalize_advantages()
    steps_per_epoch = math.ceil(n / ppo.minibatch_size)
    planned = ppo.epochs * steps_per_epoch
    model.train()
    totals: dict[str, torch.Tensor] = {}
    grad_norm_total = torch.zeros((), device=buffer.device)
    evaluated = steps = epochs_run = samples = 0
    lr = optimizer.param_groups[0]["lr"]
    stopped_early = False
    micro = ppo.micro_batch_size or ppo.minibatch_size
    for _ in range(ppo.epochs):
        order = torch.randperm(n, generator=generator).to(buffer.device)
        for start in range(0, n, ppo.minibatch_size):
            rows = order[start:start + ppo.minibatch_size]
            # Larger than a micro-batch: its chunks' gradients are accumulated, each weighted
            # by its share of the rows, so loss and step are the whole minibatch's.
            optimizer.zero_grad(set_to_none=True)
            minibatch_stats: dict[str, torch.Tensor] = {}
            for chunk in rows.split(micro):
                weight = len(chunk) / len(rows)
                with record_function("features"):
                    batch = buffer.minibatch(chunk, max_moves, attack_planes)
                with record_function("forward"):
                    with autocast():
                        logits, values = forward(batch.planes)
                    loss, stats = ppo_loss(logits, values, batch, ppo)
                with record_function("backward"):
                    scaler.scale(loss * weight if weight != 1.0 else loss).backward()
                for key, value in stats.items():
                    minibatch_stats[key] = minibatch_stats.get(key, 0.0) + value * weight
            for key, value in minibatch_stats.items():
                totals[key] = totals.get(key, 0.0) + value
            evaluated += 1
            samples += len(rows)
            if ppo.target_kl is not None and minibatch_stats["approx_kl"].item() > ppo.target_kl:
                stopped_early = True  # this minibatch's step is not taken
                optimizer.zero_grad(set_to_none=True)
                break

            with record_function("optimizer"):
                lr = lr_for_step(steps, planned)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                scaler.unscale_(optimizer)  # clip (and report) the true gradient norm
                grad_norm_total += nn.utils.clip_grad_norm_(model.parameters(),
                                                            ppo.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            steps += 1
        epochs_run += 1
        if stopped_early:
            break

    metrics = {key: float(total) / evaluated for key, total in totals.items()}
    metrics["grad_norm"] = float(grad_norm_total) / max(steps, 1)
    metrics["lr"] = float(lr)
    metrics["optimizer_steps"] = float(steps)
    metrics["epochs"] = float(epochs_run)
    metrics["early_stopped"] = float(stopped_early)
    metrics["samples"] = float(samples)
    return metrics
