"""Policy-value network, NaN-free masked policy maths, batched inference, weight export."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
from torch import nn

from keisei_ray.config import ModelConfig
from learner.features import NUM_PLANES
from learner.model import (
    DROP_CHANNELS,
    MOVE_CHANNELS,
    RELATIVE_CHANNELS,
    SIZES,
    LegalPolicy,
    PolicyValueNet,
    act,
    action_index,
    build_model,
    choose_actions,
    export_weights,
    load_weights,
    spec_for,
)
from shogi import NUM_ACTIONS, VecEnv


def planes(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, NUM_PLANES, 9, 9, generator=torch.Generator().manual_seed(seed))


def test_sizes_match_the_config_and_action_count() -> None:
    assert set(SIZES) == set(typing.get_args(ModelConfig.model_fields["size"].annotation))
    assert 81 * (MOVE_CHANNELS + DROP_CHANNELS) == NUM_ACTIONS


def test_config_overrides_the_named_size() -> None:
    spec = spec_for(ModelConfig(size="large", blocks=3, squeeze_excitation=False, norm="group"))
    assert (spec.blocks, spec.channels, spec.squeeze_excitation, spec.norm) == (3, 256, False,
                                                                                 "group")


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_forward_shapes_and_value_range(size: str) -> None:
    model = build_model(ModelConfig(size=size)).eval()
    logits, value = model(planes(5) * 50)  # large inputs push tanh towards its bounds
    assert logits.shape == (5, NUM_ACTIONS)
    assert value.shape == (5,)
    assert torch.all(value.abs() <= 1)


def test_large_has_about_ten_million_parameters() -> None:
    model = build_model(ModelConfig(size="large"))
    count = sum(p.numel() for p in model.parameters())
    assert 8e6 < count < 12e6


class KnownHead(nn.Module):
    """Policy-head stand-in: channel c at square s holds c * 1000 + s."""

    def __init__(self, move_channels: int) -> None:
        super().__init__()
        self.channels = move_channels + DROP_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = torch.arange(self.channels).view(1, -1, 1, 1) * 1000.0
        squares = torch.arange(81).view(1, 1, 9, 9).float()
        return (channels + squares).expand(x.shape[0], -1, -1, -1)


def test_absolute_policy_logits_follow_the_action_layout() -> None:
    model = build_model(ModelConfig(size="tiny", policy_head="absolute")).eval()
    model.policy_head = KnownHead(MOVE_CHANNELS)
    logits, _ = model(planes(2))
    # Move: from*160 + 2*k + promote <- channel 2*k + promote at the from-square.
    src, k, promote = 37, 52, 1
    assert logits[1, src * 160 + 2 * k + promote] == (2 * k + promote) * 1000 + src
    # Drop: 12960 + to*7 + piece <- channel 160 + piece at the to-square.
    to, piece = 80, 6
    assert logits[0, 12960 + to * 7 + piece] == (160 + piece) * 1000 + to


def board_action(frm: int, to: int, promote: int) -> int:
    return frm * 160 + 2 * (to - (to > frm)) + promote


def test_relative_policy_logits_are_the_same_channel_for_the_same_move_everywhere() -> None:
    model = build_model(ModelConfig(size="tiny")).eval()
    model.policy_head = KnownHead(RELATIVE_CHANNELS)
    logits = model(planes(1))[0][0]

    def channel_and_square(frm: int, to: int, promote: int) -> tuple[int, int]:
        value = int(logits[board_action(frm, to, promote)])
        return value // 1000, value % 1000

    # One step forward (row - 1), from two squares: one channel, read at each from-square.
    up_a, up_b = channel_and_square(40, 31, 0), channel_and_square(70, 61, 0)
    assert up_a[0] == up_b[0] and (up_a[1], up_b[1]) == (40, 70)
    # Its promoting twin is the next channel; other displacements use other channels.
    assert channel_and_square(40, 31, 1)[0] == up_a[0] + 1
    knight = channel_and_square(40, 21, 0)  # two rows up, one column right
    long_diagonal = channel_and_square(80, 0, 0)  # 8 squares along the diagonal
    assert len({up_a[0], knight[0], long_diagonal[0]}) == 3
    assert all(c < RELATIVE_CHANNELS for c in (up_a[0], knight[0], long_diagonal[0]))
    # A (from, to) pair no piece can move between gets the constant 0.
    assert logits[board_action(40, 68, 0)] == 0  # 3 rows down and 1 right: no piece's move
    # Drops: channel RELATIVE_CHANNELS + piece at the to-square.
    to, piece = 80, 6
    assert logits[12960 + to * 7 + piece] == (RELATIVE_CHANNELS + piece) * 1000 + to


@pytest.mark.parametrize("head", ["relative", "absolute"])
def test_every_legal_action_has_its_own_head_entry(head: str) -> None:
    channels = (RELATIVE_CHANNELS if head == "relative" else MOVE_CHANNELS) + DROP_CHANNELS
    impossible = 81 * channels
    for index in (t.numpy() for t in action_index(head)):
        used = index[index < impossible]
        assert len(np.unique(used)) == len(used)  # no two actions share a logit
    nchw, _ = action_index(head)
    env = VecEnv(32, seed=5)
    seen = 0
    for _ in range(200):
        legal = env.observe().legal_actions.astype(np.int64)
        assert np.all(nchw.numpy()[legal] < impossible)
        seen += len(legal)
        env.step(env.random_actions())
    assert seen > 50_000


@pytest.mark.parametrize("head", ["relative", "absolute"])
def test_channels_last_gives_the_same_logits(head: str) -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(size="tiny", policy_head=head)).eval()
    x = planes(4, seed=7)
    expected = model(x)[0]
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert not model.policy_head(model.tower(model.stem(x))).is_contiguous()
    # The same logits up to the convolutions' rounding in the other memory order.
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-5, atol=1e-5)


def masks() -> torch.Tensor:
    mask = torch.zeros(3, NUM_ACTIONS, dtype=torch.bool)
    mask[0, [1, 5, 9]] = True
    mask[2, 7] = True  # row 1 has no legal action
    return mask


def dense_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference: log-softmax over the legal entries, -inf elsewhere."""
    return torch.log_softmax(logits.float().masked_fill(~mask, -math.inf), dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_legal_policy_stays_finite_with_no_gradient_from_empty_rows(dtype: torch.dtype) -> None:
    mask = masks()
    logits = torch.randn(3, NUM_ACTIONS) * 10
    logits[0, 5] = 1e4  # extreme values must not overflow
    logits[2, 7] = -1e4
    logits = logits.to(dtype).requires_grad_()
    policy = LegalPolicy.from_mask(logits, mask)
    assert policy.log_probs.dtype == torch.float32
    assert torch.isfinite(policy.log_probs).all() and torch.isfinite(policy.log_norm).all()
    taken = policy.log_prob(torch.tensor([9, 3, 7]))
    assert taken[1] == 0  # the empty row
    assert taken[2] == 0  # the only legal move is certain
    assert torch.allclose(policy.log_prob(torch.tensor([1, 0, 7]))[0].exp()
                          + policy.log_prob(torch.tensor([5, 0, 7]))[0].exp()
                          + taken[0].exp(), torch.tensor(1.0))
    entropy = policy.entropy()
    assert entropy[1] == 0 and entropy[2] == 0
    (taken.sum() + entropy.sum()).backward()
    grad = typing.cast(torch.Tensor, logits.grad)
    assert torch.isfinite(grad.float()).all()
    assert torch.all(grad[1] == 0)  # the empty row passes no gradient
    assert torch.all(grad[0, ~mask[0]] == 0)  # nor do illegal entries
    assert torch.any(grad[0, mask[0]] != 0)


def test_legal_policy_matches_a_dense_reference_and_csr_form() -> None:
    mask = torch.rand(6, NUM_ACTIONS, generator=torch.Generator().manual_seed(0)) < 0.01
    logits = torch.randn(6, NUM_ACTIONS)
    reference = dense_log_softmax(logits, mask)
    policy = LegalPolicy.from_mask(logits, mask)
    actions = torch.stack([row.nonzero()[0, 0] for row in mask])
    torch.testing.assert_close(policy.log_prob(actions), reference[torch.arange(6), actions])
    p = reference.exp()
    expected_entropy = -torch.where(mask, p * reference, 0.0).sum(dim=1)
    torch.testing.assert_close(policy.entropy(), expected_entropy)
    counts = mask.sum(dim=1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    csr = LegalPolicy.from_csr(logits, offsets, mask.nonzero()[:, 1].to(torch.int16))
    torch.testing.assert_close(csr.log_prob(actions), policy.log_prob(actions))


def test_entropy_exact_values() -> None:
    policy = LegalPolicy.from_mask(torch.zeros(3, NUM_ACTIONS), masks())
    assert policy.entropy().tolist() == pytest.approx([math.log(3), 0.0, 0.0], abs=1e-6)


def test_sampling_draws_legal_actions_with_the_right_frequencies() -> None:
    draws = 2000
    logits = torch.zeros(3, NUM_ACTIONS)
    logits[0, 1] = math.log(2.0)  # probabilities 1/2, 1/4, 1/4 over actions 1, 5, 9
    expected = dense_log_softmax(logits, masks())
    logits, mask = logits.repeat(draws, 1), masks().repeat(draws, 1)
    actions, log_probs = choose_actions(logits, mask, generator=torch.Generator().manual_seed(0))
    by_row = actions.view(draws, 3)
    assert torch.all(by_row[:, 1] == -1)
    assert torch.all(by_row[:, 2] == 7)
    freq = [(by_row[:, 0] == a).float().mean().item() for a in (1, 5, 9)]
    assert freq == pytest.approx([0.5, 0.25, 0.25], abs=0.04)
    torch.testing.assert_close(log_probs.view(draws, 3)[:, 0], expected[0, by_row[:, 0]])
    assert torch.all(log_probs.view(draws, 3)[:, 1:] == 0)
    again, _ = choose_actions(logits, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, actions)  # the generator makes draws reproducible


def test_greedy_breaks_ties_by_the_lowest_index() -> None:
    actions, log_probs = choose_actions(torch.zeros(3, NUM_ACTIONS), masks(), greedy=True)
    assert actions.tolist() == [1, -1, 7]
    assert log_probs.tolist() == pytest.approx([-math.log(3), 0.0, 0.0], abs=1e-6)


def test_act_runs_in_eval_mode_and_restores_the_mode() -> None:
    model = build_model(ModelConfig(size="tiny", norm="batch"))
    x = planes(4)
    model.train()
    model(x)  # move BatchNorm's running statistics away from their initial values
    mask = torch.zeros(4, NUM_ACTIONS, dtype=torch.bool)
    mask[:, 100:110] = True
    mask[3] = False
    actions, log_probs, values = act(model, x, mask, greedy=True)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        logits, expected_values = model(x)
    torch.testing.assert_close(values, expected_values)
    expected = dense_log_softmax(logits, mask)
    assert actions[:3].tolist() == expected[:3, 100:110].argmax(dim=1).add(100).tolist()
    assert actions[3] == -1 and log_probs[3] == 0
    torch.testing.assert_close(log_probs[:3], expected[torch.arange(3), actions[:3]])


def test_act_reports_the_log_prob_of_the_tempered_distribution() -> None:
    model = build_model(ModelConfig(size="tiny")).eval()
    x = planes(3)
    mask = torch.zeros(3, NUM_ACTIONS, dtype=torch.bool)
    mask[:, ::1000] = True
    actions, log_probs, _ = act(model, x, mask, temperature=2.5,
                                generator=torch.Generator().manual_seed(1))
    assert mask[torch.arange(3), actions].all()
    with torch.no_grad():
        tempered = dense_log_softmax(model(x)[0] / 2.5, mask)
    torch.testing.assert_close(log_probs, tempered[torch.arange(3), actions])
    with pytest.raises(ValueError, match="temperature"):
        act(model, x, mask, temperature=0.0)


def test_group_norm_gives_the_same_numbers_in_train_and_eval_mode() -> None:
    model = PolicyValueNet(spec_for(ModelConfig(size="tiny", norm="group")))
    x = planes(3)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    torch.testing.assert_close(train_out, eval_out)


def test_batch_norm_training_numbers_are_not_the_workers_eval_mode_ones() -> None:
    # What act()'s docstring says: BatchNorm's training forward normalises by the batch, the
    # workers' eval mode by the running statistics, so the learner does not reproduce the
    # workers' numbers there (decoupled PPO centres its clip on the learner's own instead).
    model = PolicyValueNet(spec_for(ModelConfig(size="tiny", norm="batch")))
    x = planes(8)
    with torch.no_grad():
        train_logits = model.train()(x)[0]
        eval_logits = model.eval()(x)[0]
    assert not torch.allclose(train_logits, eval_logits, atol=1e-3)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_policy_logits_are_fp32_under_bf16_autocast(size: str) -> None:
    # The policy head runs outside autocast: its logits (and the log-probs PPO takes from
    # them) keep fp32 precision while the tower and the value head run in bf16.
    model = build_model(ModelConfig(size=size)).train()
    x = planes(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, values = model(x)
        features = model.tower(model.stem(x))
    assert logits.dtype == torch.float32
    assert values.dtype == torch.bfloat16 and features.dtype == torch.bfloat16
    with torch.no_grad():  # the head on those bf16 features, in fp32: the same logits
        head = model.policy_head(features.float())
    expected = nn.functional.pad(head.reshape(4, -1), (0, 1)).index_select(1, model.index_nchw)
    torch.testing.assert_close(logits, expected)


def test_weights_round_trip_with_buffers_and_half_precision() -> None:
    source = build_model(ModelConfig(size="tiny", norm="batch"))
    source.train()
    source(planes(8))  # non-trivial BatchNorm running statistics
    weights = export_weights(source)
    assert any("running_mean" in name for name in weights)
    assert all(isinstance(a, np.ndarray) for a in weights.values())
    target = build_model(ModelConfig(size="tiny", norm="batch"))
    load_weights(target, weights)
    x = planes(2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x))
    # Exported arrays are copies: training the source later does not change them.
    before = weights["stem.0.weight"].copy()
    with torch.no_grad():
        source.stem[0].weight.add_(1.0)
    np.testing.assert_array_equal(weights["stem.0.weight"], before)

    half = export_weights(source, half=True)
    assert half["stem.0.weight"].dtype == np.float16
    assert half["stem.1.num_batches_tracked"].dtype == np.int64
    load_weights(target, half)
    assert target.stem[0].weight.dtype == torch.float32


def test_load_weights_names_the_mismatch() -> None:
    model = build_model(ModelConfig(size="tiny"))
    weights = export_weights(model)
    with pytest.raises(ValueError, match="missing"):
        load_weights(model, {k: v for k, v in weights.items() if k != "stem.0.weight"})
    bad = dict(weights, **{"stem.1.weight": np.zeros((1, 2), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"stem\.1\.weight"):
        load_weights(model, bad)
    # Weights of a model with the other input layout (model.attack_planes) are named as such.
    with_attacks = export_weights(build_model(ModelConfig(size="tiny", attack_planes=True)))
    with pytest.raises(ValueError, match=f"take {NUM_PLANES + 4} input planes, the model "
                                         f"{NUM_PLANES}"):
        load_weights(model, with_attacks)
    # And weights of the other policy head (model.policy_head).
    absolute = export_weights(build_model(ModelConfig(size="tiny", policy_head="absolute")))
    with pytest.raises(ValueError, match="the absolute policy head .* set it to 'absolute'"):
        load_weights(model, absolute)
