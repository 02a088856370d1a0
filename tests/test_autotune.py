"""The batch-size search on synthetic curves, its candidate lists, and the bottleneck hints."""

from __future__ import annotations

import math

import pytest
import torch

from keisei_ray.config_loading import load_config
from keisei_ray.training.autotune import (
    Measurement,
    games_candidates,
    micro_batch_candidates,
    predict_memory,
    search,
)
from keisei_ray.training.waits import bottleneck_hint, learner_remedies, wait_split

CANDIDATES = [2 ** k for k in range(3, 13)]  # 8 .. 4096


def test_search_converges_on_the_peak_of_a_throughput_curve() -> None:
    # Rises to a peak at 256, falls after: the walk stops past it and picks it.
    def measure(size: int) -> Measurement:
        return Measurement(throughput=1000.0 * math.exp(-(math.log2(size) - 8) ** 2 / 4))

    result = search(CANDIDATES, measure)
    assert result.best == 256
    assert max(result.trials) <= 1024  # it stopped soon after the peak
    assert result.throughput == pytest.approx(1000.0)


def test_search_never_measures_a_size_over_the_memory_bound() -> None:
    # Throughput keeps rising; memory grows linearly: the bound alone stops the walk.
    bound = 3e9
    measured: list[float] = []

    def measure(size: int) -> Measurement:
        memory = 5e8 + 2e6 * size
        measured.append(memory)
        return Measurement(throughput=float(size), memory_bytes=memory)

    result = search(CANDIDATES, measure, memory_bound=bound)
    assert measured and max(measured) <= bound
    assert result.best == 1024  # 5e8 + 2e6*1024 = 2.55e9 fits; 2048 would need 4.6e9
    assert 2048 in result.skipped and 4096 in result.skipped


def test_search_with_noisy_flat_throughput_stays_small() -> None:
    values = iter([100.0, 101.0, 99.0, 100.5, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    result = search(CANDIDATES, lambda size: Measurement(next(values)))
    assert result.best in (8, 16)  # gains under min_gain do not count
    assert len(result.trials) <= 3


def test_search_rejects_bad_candidates() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        search([], lambda size: Measurement(1.0))
    with pytest.raises(ValueError, match=">= 1"):
        search([0, 4], lambda size: Measurement(1.0))


def test_predict_memory_extrapolates_a_line() -> None:
    trials = {8: Measurement(1.0, 108.0), 16: Measurement(1.0, 116.0)}
    assert predict_memory(trials, 32) == pytest.approx(132.0)
    assert predict_memory({8: Measurement(1.0, 80.0)}, 16) == pytest.approx(160.0)
    assert predict_memory({8: Measurement(1.0)}, 16) is None


def test_games_candidates_keep_the_transitions_per_collect() -> None:
    pairs = games_candidates(32, 32)
    assert (32, 32) in pairs
    assert all(g * t == 1024 for g, t in pairs)
    assert all(t >= 4 for _, t in pairs)
    assert [g for g, _ in pairs] == sorted(g for g, _ in pairs)
    assert games_candidates(16, 2) == [(4, 8), (8, 4), (16, 2)]
    assert [g for g, _ in pairs] == [8, 16, 32, 64, 128, 256]


def test_micro_batch_candidates_end_at_the_minibatch() -> None:
    assert micro_batch_candidates(512) == [32, 64, 128, 256, 512]
    assert micro_batch_candidates(100, smallest=32) == [25, 50, 100]
    assert micro_batch_candidates(16) == [16]


def test_hints_name_the_side_that_holds_the_run_back() -> None:
    assert "add workers" in bottleneck_hint(learner_busy=0.4, worker_busy=0.95)
    assert bottleneck_hint(learner_busy=0.4, worker_busy=0.95).startswith("learner idle 60%")
    assert "the learner holds" in bottleneck_hint(learner_busy=0.9, worker_busy=0.3)
    assert "elsewhere" in bottleneck_hint(learner_busy=0.2, worker_busy=0.2)
    assert bottleneck_hint(learner_busy=0.7, worker_busy=0.7).startswith("balanced")
    assert bottleneck_hint(0.9, 0.3, ["fewer epochs"]).endswith(
        "the learner holds the run back; fewer epochs")
    split = wait_split(wall_s=10.0, learner_busy_s=4.0, worker_busy_s=36.0, workers=4)
    assert split.learner_waiting == pytest.approx(0.6)
    assert split.workers_waiting == pytest.approx(0.1)


def test_gradient_accumulation_takes_the_same_step_as_the_whole_minibatch() -> None:
    from keisei_ray.bench.learner import collect_experience
    from keisei_ray.config import Config
    from learner import Learner
    from learner.model import build_model

    def learner(micro: int | None) -> Learner:
        cfg = Config.model_validate({
            "env": {"max_moves": 30}, "model": {"size": "tiny"},
            "ppo": {"minibatch_size": 64, "epochs": 1, "micro_batch_size": micro}})
        return Learner(cfg, capacity=200, device="cpu", total_timesteps=10_000)

    torch.manual_seed(0)
    batch = collect_experience(4, 40, seed=0, max_moves=30,
                               model=build_model(learner(None).config.model))
    whole, split = learner(None), learner(24)  # 64 = 24 + 24 + 16: uneven chunks too
    m_whole, m_split = whole.update([batch]), split.update([batch])
    assert m_whole["optimizer_steps"] == m_split["optimizer_steps"]
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
        assert m_split[key] == pytest.approx(m_whole[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(whole.model.parameters(), split.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_micro_batch_trial_leaves_the_learner_as_it_was() -> None:
    from keisei_ray.bench.learner import collect_experience
    from keisei_ray.config import Config
    from learner import Learner
    from learner.throughput import device_memory_bound, micro_batch_trial

    cfg = Config.model_validate({"env": {"max_moves": 30},
                                 "model": {"size": "tiny", "norm": "batch"}})
    learner = Learner(cfg, capacity=200, device="cpu", total_timesteps=10_000)
    learner.update([collect_experience(2, 20, seed=1, max_moves=30, model=learner.model)])
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    samples_per_s, memory = micro_batch_trial(learner, 48, repeats=1)
    assert samples_per_s > 0 and memory is None and device_memory_bound(learner) is None
    for key, value in learner.model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert all(p.grad is None for p in learner.model.parameters())


def test_a_slow_learner_is_advised_only_what_its_run_can_still_change() -> None:
    # The smoke preset's tiny model: no smaller one to advise (issue 26).
    smoke = load_config(preset="smoke")
    assert learner_remedies(smoke, "cpu") == ["a GPU", "fewer epochs"]
    assert "smaller model" not in wait_split(10.0, 9.5, 2.0, 1,
                                             learner_remedies(smoke, "cpu")).hint()
    assert learner_remedies(load_config(), "cpu") == ["a GPU", "a smaller model", "fewer epochs"]
    split = load_config(preset="cluster", overrides=["ppo.epochs=1",
                                                     "ppo.micro_batch_size=128"])
    assert learner_remedies(split, "cuda") == ["a smaller model", "a larger micro-batch"]
    floor = load_config(None, ["model.size=tiny", "ppo.epochs=1"])
    assert learner_remedies(floor, "cuda") == ["a faster GPU"]
