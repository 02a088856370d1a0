"""PPO: the learning-rate schedule, the clipped loss and the update loop, top to bottom.

Progress through training is measured in accepted transitions: progress = timesteps /
total_timesteps, where the learner counts the transitions it trained on (the same number
the driver counts). The learning rate is set before every optimizer step from the progress
reached at the end of that step, so the very last step of training runs exactly at the
final learning rate.

Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization"), the
default: the workers' data is a version old when collection overlaps the update, so the clip
is not centred on the behaviour policy that played a row but on the proximal policy, the
learner's own at the start of the update (one no-grad forward over the buffer), and each
row's surrogate is weighted by its behaviour ratio pi_prox / pi_behaviour, clipped at
`ppo.behaviour_ratio_clip`. `target_kl` measures the KL from the proximal policy too. The
proximal forward runs exactly as the first epoch's forwards do (same mode, same minibatch
and micro-batch rows, same autocast), so the first step's ratio is 1 whatever the network's
normalisation or precision (up to a device's nondeterminism); the behaviour ratio carries
what differs from the worker's eval-mode fp32 forward (BatchNorm's batch statistics, bf16
rounding) and the policy lag.
With `ppo.decoupled=false` the proximal policy is the behaviour one (classic PPO).

An update takes at least one optimizer step: `target_kl` is checked from the second
minibatch on. Every accepted transition counts for the timestep clock (and the LR schedule)
whether or not target_kl ends the update early: the update trained on the buffer they filled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn
from torch.profiler import record_function

from keisei_ray.config import PPOConfig
from learner.buffer import ExperienceBuffer, Minibatch
from learner.model import LegalPolicy, csr_rows

# The learner's forward: planes -> (policy output, values), and how to read the legal logits
# [M] of entries (rows, cols) from that policy output. The default pairs the model's `heads`
# with its `legal_logits` (no dense [N, 13527] tensor); `dense_gather` with the
# model itself is the dense reference path.
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
GatherLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dense_gather(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The GatherLogits of a forward that returns dense logits [N, 13527]."""
    return logits[rows, cols]


def batch_policy(policy_out: torch.Tensor, batch: Minibatch, gather: GatherLogits
                 ) -> LegalPolicy:
    """The legal policy of a minibatch's rows from the forward's policy output."""
    cols = batch.legal_actions.long()
    rows = csr_rows(batch.legal_offsets, cols.shape[0])
    return LegalPolicy.from_legal_logits(gather(policy_out, rows, cols), rows, cols,
                                         batch.actions.shape[0], batch.legal_valid)


def lr_at(progress: float, ppo: PPOConfig) -> float:
    """The scheduled learning rate at `progress` in [0, 1] (clamped); exact at both ends."""
    p = min(max(progress, 0.0), 1.0)
    if ppo.lr_schedule == "constant":
        return ppo.learning_rate
    linear = ppo.lr_schedule == "linear"
    weight = 1.0 - p if linear else 0.5 * (1.0 + math.cos(math.pi * p))
    # weight 1 -> exactly the initial rate, weight 0 -> exactly the final one.
    return weight * ppo.learning_rate + (1.0 - weight) * ppo.final_learning_rate


def distillation_loss(log_probs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                      rest: torch.Tensor) -> torch.Tensor:
    """Search as a teacher (issue 24): the cross-entropy -sum_a target(a) log pi_theta(a) of
    each row over its legal actions, averaged over the rows (`rest` has one entry per row).

    `log_probs`, `rows` and `targets` [M] are aligned entry by entry (the rows' legal actions,
    CSR order). `targets` holds the search's improved policy of each visited move, -1 on an
    unvisited one, 0 on a row without a target (which adds 0). The improved policy is the
    prior times one constant on the unvisited moves, so their target is the row's `rest`
    shared in proportion to the network's own policy (a constant: no gradient flows through
    it); with the network that played the row this is exactly the search's improved policy.
    The gradient in a target row's legal logits is pi_theta - target, as any cross-entropy's.
    """
    unvisited = targets < 0
    weights = torch.where(unvisited, log_probs.detach().exp(), 0.0)
    mass = torch.zeros_like(rest).index_add(0, rows, weights)
    share = rest / mass.clamp(min=torch.finfo(mass.dtype).tiny)
    target = torch.where(unvisited, weights * share[rows], targets)
    return -(target * log_probs).sum() / max(rest.shape[0], 1)


def ppo_loss(
    policy_out: torch.Tensor, values: torch.Tensor, batch: Minibatch, ppo: PPOConfig,
    gather: GatherLogits = dense_gather,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective of one minibatch and its statistics (detached tensors).

    The ratio is taken from the proximal policy (`batch.prox_log_probs`) and each row's
    clipped surrogate is weighted by min(pi_prox / pi_behaviour, behaviour_ratio_clip); when
    the proximal policy is the behaviour one (classic PPO) that weight is exactly 1.
    `gather` reads the legal logits from `policy_out` (by default dense logits [B, 13527]).
    No step reads a device value on the host.
    """
    policy = batch_policy(policy_out, batch, gather)
    log_ratio = policy.log_prob(batch.actions) - batch.prox_log_probs
    ratio = log_ratio.exp()
    behaviour_log_ratio = batch.prox_log_probs - batch.log_probs
    behaviour_ratio = behaviour_log_ratio.exp()
    weight = behaviour_ratio.clamp(max=ppo.behaviour_ratio_clip)

    # Clipped surrogate (advantages were normalised over the whole update, if asked).
    adv = batch.advantages
    clipped_ratio = ratio.clamp(1.0 - ppo.clip_range, 1.0 + ppo.clip_range)
    policy_loss = -(weight * torch.min(ratio * adv, clipped_ratio * adv)).mean()

    # Value loss, optionally clipped per element around the proximal (or behaviour) value.
    values = values.float()
    value_error = (values - batch.returns).square()
    if ppo.value_clip_range is not None:
        clipped = batch.prox_values + (values - batch.prox_values).clamp(
            -ppo.value_clip_range, ppo.value_clip_range)
        value_error = torch.max(value_error, (clipped - batch.returns).square())
    value_loss = 0.5 * value_error.mean()

    entropy = policy.entropy().mean()
    loss = policy_loss + ppo.value_coef * value_loss - ppo.entropy_coef * entropy
    # Search as a teacher: distil the search's improved policy on the rows that carry it
    # (scaled to a mean over those rows: distill_scale = rows / target rows of the buffer).
    distill = None
    if batch.targets is not None and batch.target_rest is not None:
        distill = batch.distill_scale * distillation_loss(
            policy.log_probs, policy.rows, batch.targets, batch.target_rest)
        loss = loss + ppo.search_coef * distill

    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy.detach(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),  # k3 estimator, >= 0
            "clip_fraction": ((ratio - 1.0).abs() > ppo.clip_range).float().mean(),
            # How far the proximal policy is from the one that played (lag, numerics).
            "behaviour_kl": ((behaviour_ratio - 1.0) - behaviour_log_ratio).mean(),
            "behaviour_clipped": (behaviour_ratio > ppo.behaviour_ratio_clip).float().mean(),
        }
        if distill is not None:
            stats["distill_loss"] = distill.detach()
    return loss, stats


@contextmanager
def _batch_norm_statistics_kept(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics restored on exit: a forward in training mode that is not
    a training step must not move them."""
    buffers = [b for m in model.modules() if isinstance(m, nn.BatchNorm2d) for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def proximal_pass(
    forward: Forward,
    model: nn.Module,
    buffer: ExperienceBuffer,
    order: torch.Tensor,
    ppo: PPOConfig,
    *,
    max_moves: int,
    attack_planes: bool,
    autocast: Callable[[], AbstractContextManager[object]],
    gather: GatherLogits = dense_gather,
) -> None:
    """The proximal log-probs and values of every row into the buffer: one no-grad forward in
    training mode over `order` (the first epoch's), chunked exactly as the first epoch is.
    With `ppo.fixed_shapes` the ragged tail (the rows the first epoch leaves out) goes through
    in chunks padded to the micro-batch size by repeating rows, whose extra outputs are not
    kept (rows do not interact under GroupNorm; under BatchNorm the repeats move the batch
    statistics slightly)."""
    size = minibatch_rows(len(order), ppo)
    micro = min(ppo.micro_batch_size or size, size)
    width = buffer.legal_width() if ppo.fixed_shapes else None
    with torch.no_grad(), _batch_norm_statistics_kept(model):
        for chunk, real in _chunks(order, size, micro, pad=ppo.fixed_shapes):
            batch = buffer.minibatch(chunk, max_moves, attack_planes, width)
            with autocast():
                policy_out, values = forward(batch.planes)
            policy = batch_policy(policy_out, batch, gather)
            rows = chunk[:real].to(buffer.device)  # a padded chunk's repeats are not kept
            buffer.prox_log_probs[rows] = policy.log_prob(batch.actions)[:real]
            buffer.prox_values[rows] = values.float()[:real]


def minibatch_rows(n: int, ppo: PPOConfig) -> int:
    """Rows per minibatch of an update of `n` transitions: ppo.minibatch_size, or all `n`
    when fewer (one minibatch)."""
    return min(ppo.minibatch_size, n) if ppo.fixed_shapes else ppo.minibatch_size


def _chunks(order: torch.Tensor, size: int, micro: int, *, pad: bool
            ) -> Iterator[tuple[torch.Tensor, int]]:
    """(chunk, real rows in it) of `order` cut into minibatches of `size` rows, each split into
    micro-batches; with `pad`, the rows after the last full minibatch come last in chunks of
    exactly `micro` rows (the last one filled up by repeating rows of `order`)."""
    full = len(order) // size * size if pad else len(order)
    for start in range(0, full, size):
        for chunk in order[start:start + size].split(micro):
            yield chunk, len(chunk)
    if pad and full < len(order):
        for start in range(full, len(order), micro):
            chunk = order[start:start + micro]
            real = len(chunk)
            if real < micro:  # wrap around: repeats keep the shape fixed
                chunk = torch.cat([chunk, order[:micro - real]])
            yield chunk, real


# Long by choice: the PPO update top to bottom, CleanRL-style (proximal pass, epochs,
# minibatches, micro-batches, loss terms, clipping, statistics), so the algorithm reads in one
# screen.
def ppo_update(
    forward: Forward,
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
    gather: GatherLogits = dense_gather,
) -> dict[str, float]:
    """Epochs x minibatches of PPO over the buffer; returns the mean statistics.

    `forward` is the model (or its `heads`, with `gather` its `legal_logits`) or its compiled
    form; `lr_for_step(step, planned_steps)` gives
    each optimizer step's learning rate; `autocast()` opens the mixed-precision context.
    """
    n = len(buffer)
    if ppo.normalize_advantages:
        buffer.normalize_advantages()
    size = minibatch_rows(n, ppo)
    # Fixed shapes: each epoch trains its full minibatches only (the ragged tail's rows are
    # in other epochs' random orders); else the last minibatch is smaller.
    steps_per_epoch = n // size if ppo.fixed_shapes else math.ceil(n / size)
    planned = ppo.epochs * steps_per_epoch
    model.train()
    # Row orders stay on the host: the buffer computes each minibatch's layout there.
    first_order = torch.randperm(n, generator=generator)
    width = buffer.legal_width() if ppo.fixed_shapes else None
    started = time.perf_counter()
    if ppo.decoupled:
        with record_function("proximal"):
            proximal_pass(forward, model, buffer, first_order, ppo, max_moves=max_moves,
                          attack_planes=attack_planes, autocast=autocast, gather=gather)
            if buffer.device.type == "cuda":
                torch.cuda.synchronize(buffer.device)
    else:
        buffer.behaviour_as_proximal()
    proximal_s = time.perf_counter() - started
    totals: dict[str, torch.Tensor] = {}
    grad_norm_total = torch.zeros((), device=buffer.device)
    evaluated = steps = epochs_run = samples = 0
    lr = optimizer.param_groups[0]["lr"]
    stopped_early = False
    micro = min(ppo.micro_batch_size or size, size)
    for epoch in range(ppo.epochs):
        order = first_order if epoch == 0 else torch.randperm(n, generator=generator)
        for start in range(0, steps_per_epoch * size, size):
            rows = order[start:start + size]
            # Larger than a micro-batch: its chunks' gradients are accumulated, each weighted
            # by its share of the rows, so loss and step are the whole minibatch's.
            optimizer.zero_grad(set_to_none=True)
            minibatch_stats: dict[str, torch.Tensor] = {}
            for chunk in rows.split(micro):
                weight = len(chunk) / len(rows)
                with record_function("features"):
                    batch = buffer.minibatch(chunk, max_moves, attack_planes, width)
                with record_function("forward"):
                    with autocast():
                        policy_out, values = forward(batch.planes)
                    loss, stats = ppo_loss(policy_out, values, batch, ppo, gather)
                with record_function("backward"):
                    scaler.scale(loss * weight if weight != 1.0 else loss).backward()
                for key, value in stats.items():
                    minibatch_stats[key] = minibatch_stats.get(key, 0.0) + value * weight
            for key, value in minibatch_stats.items():
                totals[key] = totals.get(key, 0.0) + value
            evaluated += 1
            samples += len(rows)
            if (ppo.target_kl is not None and steps > 0
                    and minibatch_stats["approx_kl"].item() > ppo.target_kl):
                stopped_early = True  # this minibatch's step is not taken (never the first)
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
    metrics["proximal_s"] = proximal_s
    return metrics
