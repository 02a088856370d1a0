"""The GPU-ready learner path (issue 23 item 4): minibatch layouts computed on the host,
fixed-shape minibatches with legal actions padded to a fixed width, and (on CUDA) no host
synchronisation in the minibatch or the loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from keisei_ray.bench.learner import collect_experience
from keisei_ray.codec import ExperienceBatch
from keisei_ray.config import Config, PPOConfig
from learner import Learner
from learner.buffer import LEGAL_WIDTH_STEP, ExperienceBuffer
from learner.features import gather_csr
from learner.model import build_model
from learner.ppo import _chunks, ppo_loss


@pytest.fixture(scope="module")
def batch() -> ExperienceBatch:
    return collect_experience(8, 20, seed=4)  # 160 transitions


def filled(batch: ExperienceBatch, device: str = "cpu") -> ExperienceBuffer:
    buffer = ExperienceBuffer(len(batch), torch.device(device))
    buffer.add(batch)
    return buffer


def test_host_layout_matches_the_device_gather(batch: ExperienceBatch) -> None:
    buffer = filled(batch)
    rows = torch.tensor([5, 0, 159, 5, 77])
    mb = buffer.minibatch(rows, 512)
    offsets, actions = gather_csr(buffer.legal_offsets[:len(batch) + 1],
                                  buffer.legal_actions[:buffer.num_legal], rows)
    assert mb.legal_offsets.tolist() == offsets.tolist()
    assert mb.legal_actions.tolist() == actions.tolist()
    assert mb.legal_valid is None


def test_padded_minibatch_holds_the_same_legal_actions(batch: ExperienceBatch) -> None:
    buffer = filled(batch)
    width = buffer.legal_width()
    counts = np.diff(batch.legal_offsets)
    assert width % LEGAL_WIDTH_STEP == 0 and counts.max() <= width < counts.max() + 64
    rows = torch.tensor([3, 9, 9, 150])
    plain, padded = buffer.minibatch(rows, 512), buffer.minibatch(rows, 512, legal_width=width)
    assert padded.legal_offsets.tolist() == [0, width, 2 * width, 3 * width, 4 * width]
    valid = padded.legal_valid
    assert valid is not None and valid.shape == (4 * width,)
    assert padded.legal_actions[valid].tolist() == plain.legal_actions.tolist()
    assert valid.view(4, width).sum(1).tolist() == counts[rows.numpy()].tolist()
    with pytest.raises(ValueError, match="more than the legal width"):
        buffer.minibatch(rows, 512, legal_width=int(counts[rows.numpy()].max()) - 1)
    # The loss of the padded minibatch is the plain one's.
    model = build_model(Config().model)
    out, values = model.heads(plain.planes)
    ppo = PPOConfig()
    loss, stats = ppo_loss(out, values, plain, ppo, model.legal_logits)
    loss_padded, stats_padded = ppo_loss(out, values, padded, ppo, model.legal_logits)
    torch.testing.assert_close(loss_padded, loss)
    torch.testing.assert_close(stats_padded["entropy"], stats["entropy"])


def test_chunks_are_fixed_shape_and_cover_every_row_once() -> None:
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    chunks = list(_chunks(order, 8, 4, pad=True))
    assert {len(c) for c, _ in chunks} == {4}
    real = torch.cat([c[:r] for c, r in chunks])
    assert sorted(real.tolist()) == list(range(23))
    plain = list(_chunks(order, 8, 4, pad=False))
    assert [len(c) for c, _ in plain] == [4, 4, 4, 4, 4, 3]


@pytest.mark.parametrize(("n_rows", "expected_rows"), [(160, 64), (40, 40)])
def test_fixed_shape_update_has_one_shape(batch: ExperienceBatch, n_rows: int,
                                          expected_rows: int) -> None:
    """Every forward of a fixed-shape update (proximal pass included) sees one planes shape
    and one legal-actions length; an update smaller than a minibatch is one minibatch."""
    config = Config.model_validate({"model": {"size": "tiny"},
                                    "ppo": {"minibatch_size": 64, "micro_batch_size": None,
                                            "epochs": 2, "fixed_shapes": True,
                                            "max_policy_lag": 10}})
    part = batch if n_rows == len(batch) else _head(batch, n_rows)
    learner = Learner(config, capacity=len(batch), device="cpu", total_timesteps=10**6)
    shapes: set[tuple[int, ...]] = set()
    forward = learner.forward

    def recording(planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shapes.add(tuple(planes.shape))
        return forward(planes)

    learner.forward = recording
    metrics = learner.update([part])
    assert shapes == {(expected_rows, 46, 9, 9)}
    steps_per_epoch = n_rows // expected_rows
    assert metrics["optimizer_steps"] == 2 * steps_per_epoch
    assert metrics["samples"] == 2 * steps_per_epoch * expected_rows
    # The proximal pass covered every row, the ragged tail included: the same numbers as the
    # variable-shape learner's (same seed, same initial model; GroupNorm rows are independent).
    plain = Learner(config.model_copy(update={"ppo": config.ppo.model_copy(
        update={"fixed_shapes": False})}), capacity=len(batch), device="cpu",
        total_timesteps=10**6)
    plain.update([part])
    torch.testing.assert_close(learner.buffer.prox_log_probs[:n_rows],
                               plain.buffer.prox_log_probs[:n_rows])
    torch.testing.assert_close(learner.buffer.prox_values[:n_rows],
                               plain.buffer.prox_values[:n_rows])


def _head(batch: ExperienceBatch, n: int) -> ExperienceBatch:
    """The first `n` transitions of a batch (its first n // 20 games, whole)."""
    m = int(batch.legal_offsets[n])
    assert not batch.has_target.any()
    return replace(batch, state=batch.state.take(np.arange(n)), action=batch.action[:n],
                   log_prob=batch.log_prob[:n], value=batch.value[:n],
                   advantage=batch.advantage[:n], returns=batch.returns[:n],
                   legal_offsets=batch.legal_offsets[:n + 1],
                   legal_actions=batch.legal_actions[:m],
                   # Per-row teacher fields filled in again for the n rows (no targets here).
                   target_counts=np.zeros(0, dtype=np.uint16),
                   target_rest=np.zeros(0, dtype=np.float16),
                   search_value=np.zeros(0, dtype=np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_minibatch_and_loss_do_not_synchronise(batch: ExperienceBatch) -> None:
    buffer = filled(batch, "cuda")
    model = build_model(Config().model).cuda()
    rows = torch.arange(64)
    for width in (None, buffer.legal_width()):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            mb = buffer.minibatch(rows, 512, legal_width=width)
            out, values = model.heads(mb.planes)
            loss, _ = ppo_loss(out, values, mb, PPOConfig(), model.legal_logits)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fixed_shape_update_with_cuda_graphs(batch: ExperienceBatch) -> None:
    config = Config.model_validate({"model": {"size": "tiny"},
                                    "ppo": {"minibatch_size": 64, "fixed_shapes": True,
                                            "compile": True, "compile_mode": "reduce-overhead",
                                            "max_policy_lag": 10}})
    learner = Learner(config, capacity=len(batch), device="cuda", total_timesteps=10**6)
    for _ in range(2):
        metrics = learner.update([batch])
    assert np.isfinite(metrics["policy_loss"]) and metrics["optimizer_steps"] == 4
