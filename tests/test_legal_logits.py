"""Legal-only logits (issue 23): read straight from the policy head, they give the dense
reference's numbers (log-probs, entropy, gradients), for both policy heads and both memory
layouts, in the learner's loss and in the worker's sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keisei_ray.bench.learner import collect_experience
from keisei_ray.config import Config, ModelConfig, PPOConfig
from learner import Learner
from learner.buffer import Minibatch
from learner.features import encode_planes, legal_mask, to_tensors
from learner.model import LegalPolicy, PolicyValueNet, act, act_csr, build_model, csr_rows
from learner.ppo import dense_gather, ppo_loss
from shogi import VecEnv


def positions(games: int = 12, plies: int = 30, seed: int = 3
              ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(planes, CSR offsets, CSR actions) of real positions a few dozen plies into games."""
    env = VecEnv(games, max_moves=512, seed=seed)
    for _ in range(plies):
        obs = env.observe()
        counts = np.diff(obs.legal_offsets)
        picks = obs.legal_offsets[:-1] + (env.rng.random(games) * counts).astype(np.int64)
        env.step(obs.legal_actions[picks].astype(np.int64))
    obs = env.observe()
    return (encode_planes(to_tensors(obs.state), 512), obs.legal_offsets.astype(np.int64),
            obs.legal_actions.astype(np.int64))


def model_for(head: str, channels_last: bool) -> PolicyValueNet:
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", policy_head=head))
    # Larger head weights than at init, so that the logits differ across actions.
    with torch.no_grad():
        model.policy_head[1].weight.mul_(4.0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


CASES = [(head, layout) for head in ("relative", "absolute") for layout in (False, True)]


@pytest.mark.parametrize(("head", "channels_last"), CASES)
def test_legal_logits_are_the_dense_ones(head: str, channels_last: bool) -> None:
    model = model_for(head, channels_last)
    planes, offsets, legal = positions()
    if channels_last:
        planes = planes.contiguous(memory_format=torch.channels_last)
    out, _ = model.heads(planes)
    assert out.is_contiguous() != channels_last  # both index tables are exercised
    dense = model.dense_logits(out)
    cols = torch.from_numpy(legal)
    rows = csr_rows(torch.from_numpy(offsets), len(cols))
    torch.testing.assert_close(model.legal_logits(out, rows, cols), dense[rows, cols],
                               rtol=0, atol=0)
    # Every action, the impossible (from, to) pairs' constant 0 included.
    every = torch.arange(dense.shape[1])
    torch.testing.assert_close(model.legal_logits(out, torch.zeros_like(every), every),
                               dense[0], rtol=0, atol=0)


@pytest.mark.parametrize(("head", "channels_last"), CASES)
def test_log_probs_entropy_and_gradients_match_the_dense_reference(
        head: str, channels_last: bool) -> None:
    planes, offsets, legal = positions()
    n = planes.shape[0]
    cols = torch.from_numpy(legal)
    rows = csr_rows(torch.from_numpy(offsets), len(cols))
    mask = legal_mask(offsets, legal, n)
    taken = cols[torch.from_numpy(offsets[:-1])]  # each row's first legal action
    results = []
    for legal_only in (True, False):
        model = model_for(head, channels_last)
        out, _ = model.heads(planes)
        if legal_only:
            policy = LegalPolicy.from_legal_logits(model.legal_logits(out, rows, cols), rows,
                                                   cols, n)
            log_prob, entropy = policy.log_prob(taken), policy.entropy()
        else:  # the reference: a dense masked log-softmax over all 13527 actions
            reference = torch.log_softmax(
                model.dense_logits(out).masked_fill(~mask, -math.inf), dim=1)
            log_prob = reference[torch.arange(n), taken]
            # (0 * -inf would make the gradient NaN: the illegal terms are 0 * 0)
            entropy = -(reference.exp() * reference.masked_fill(~mask, 0.0)).sum(dim=1)
        (log_prob.sum() + 0.3 * entropy.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((log_prob.detach(), entropy.detach(), grads))
    (lp, ent, grads), (lp_ref, ent_ref, grads_ref) = results
    torch.testing.assert_close(lp, lp_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=0, atol=1e-5)
    assert float(ent.mean()) > 0.5  # not a degenerate (near-certain) policy
    assert len(grads) == len(grads_ref) > 0
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_padded_entries_take_no_part() -> None:
    """A fixed-width layout (invalid padding entries) gives the unpadded numbers."""
    gen = torch.Generator().manual_seed(1)
    n, width = 5, 8
    counts = torch.tensor([3, 1, 0, 8, 5])
    cols = torch.cat([torch.randperm(40, generator=gen)[:int(c)] for c in counts])
    rows = csr_rows(torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]), len(cols))
    z = torch.randn(len(cols), generator=gen, requires_grad=True)
    plain = LegalPolicy.from_legal_logits(z, rows, cols, n)
    # The same entries at fixed width: row i's in slots [i * width, i * width + counts[i]).
    slot = rows * width + (torch.arange(len(cols))
                           - torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])[rows])
    valid = torch.zeros(n * width, dtype=torch.bool).index_fill(0, slot, True)
    padded_z = torch.full((n * width,), 123.0).index_put((slot,), z)  # padding: large, finite
    padded_cols = torch.zeros(n * width, dtype=torch.long).index_put((slot,), cols)
    padded = LegalPolicy.from_legal_logits(padded_z, torch.arange(n).repeat_interleave(width),
                                           padded_cols, n, valid)
    actions = plain.choose(greedy=True)
    torch.testing.assert_close(padded.choose(greedy=True), actions)
    assert actions[2] == -1
    torch.testing.assert_close(padded.log_norm, plain.log_norm)
    torch.testing.assert_close(padded.log_prob(actions), plain.log_prob(actions))
    torch.testing.assert_close(padded.entropy(), plain.entropy())
    (padded.log_prob(actions).sum() + padded.entropy().sum()).backward()
    grad = z.grad.clone()  # type: ignore[union-attr]
    z.grad = None
    (plain.log_prob(actions).sum() + plain.entropy().sum()).backward()
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, z.grad)
    for seed in range(5):  # sampling never picks a padding slot
        sampled = padded.choose(generator=torch.Generator().manual_seed(seed))
        assert [a in set(cols[rows == i].tolist()) for i, a in enumerate(sampled.tolist())
                if i != 2] == [True] * 4


@pytest.mark.parametrize("head", ["relative", "absolute"])
def test_worker_sampling_from_the_csr_matches_the_mask_path(head: str) -> None:
    model = model_for(head, False)
    planes, offsets, legal = positions()
    mask = legal_mask(offsets, legal, planes.shape[0])
    greedy_mask = act(model, planes, mask, greedy=True)
    greedy_csr = act_csr(model, planes, offsets, legal, greedy=True)
    for a, b in zip(greedy_csr, greedy_mask, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for temperature in (1.0, 0.7):
        actions, log_probs, _ = act_csr(model, planes, offsets, legal, temperature=temperature,
                                        generator=torch.Generator().manual_seed(0))
        assert mask[torch.arange(len(actions)), actions].all()
        with torch.no_grad():
            logits, _ = model.eval()(planes)
        reference = torch.log_softmax(
            (logits / temperature).masked_fill(~mask, -math.inf), dim=1)
        torch.testing.assert_close(log_probs, reference[torch.arange(len(actions)), actions],
                                   rtol=0, atol=1e-5)


def test_ppo_loss_and_learner_match_the_dense_path() -> None:
    batch = collect_experience(8, 16, seed=2)
    model = model_for("relative", True)
    buffer_rows = torch.arange(len(batch))
    planes = encode_planes(to_tensors(batch.state), 512).contiguous(
        memory_format=torch.channels_last)
    offsets = torch.from_numpy(batch.legal_offsets.astype(np.int64))
    actions = torch.from_numpy(batch.action.astype(np.int64))
    behaviour = torch.from_numpy(batch.log_prob)
    minibatch = Minibatch(
        planes=planes, legal_offsets=offsets,
        legal_actions=torch.from_numpy(batch.legal_actions), actions=actions,
        log_probs=behaviour, values=torch.from_numpy(batch.value),
        advantages=torch.from_numpy(batch.advantage), returns=torch.from_numpy(batch.returns),
        prox_log_probs=behaviour + 0.05 * torch.sin(buffer_rows.float()),
        prox_values=torch.from_numpy(batch.value))
    ppo = PPOConfig()
    out, values = model.heads(planes)
    loss, stats = ppo_loss(out, values, minibatch, ppo, model.legal_logits)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out, values = model.heads(planes)
    loss_ref, stats_ref = ppo_loss(model.dense_logits(out), values, minibatch, ppo,
                                   dense_gather)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-5)
    for key, value in stats.items():
        torch.testing.assert_close(value, stats_ref[key], rtol=0, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)

    # The learner's whole update: the legal-only default and the dense reference path.
    config = Config.model_validate({"model": {"size": "tiny"},
                                    "ppo": {"minibatch_size": 64, "max_policy_lag": 10}})
    metrics = [Learner(config, capacity=len(batch), device="cpu", total_timesteps=10**6,
                       dense_policy=dense).update([batch]) for dense in (False, True)]
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-4, abs=1e-6), key
