"""Learner: metrics, policy-lag dropping, LR schedule end point, weights, state round trip."""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from keisei_ray.bench.learner import (
    bench_decoupled,
    bench_policy_head,
    bench_ppo,
    bench_weights,
    collect_experience,
    tactics_positions,
)
from keisei_ray.codec import ExperienceBatch, encode
from keisei_ray.config import Config
from learner import Learner
from learner.features import NUM_PLANES
from learner.model import build_model, load_weights

MAX_MOVES = 30  # short games: wins, draws and truncations inside 40 plies
METRICS = {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
           "explained_variance", "grad_norm", "lr", "samples_per_s", "dropped_batches",
           "accepted", "version", "max_policy_lag"}


def config(**ppo: object) -> Config:
    return Config.model_validate({"env": {"max_moves": MAX_MOVES}, "model": {"size": "tiny"},
                                  "ppo": {"minibatch_size": 64, "epochs": 2, **ppo}})


@pytest.fixture(scope="module")
def batch() -> ExperienceBatch:
    # 160 transitions of tiny-model self-play: the behaviour log-probs are the model's own.
    torch.manual_seed(0)
    model = build_model(config().model)
    return collect_experience(4, 40, seed=0, max_moves=MAX_MOVES, model=model)


def test_update_reports_every_metric(batch: ExperienceBatch) -> None:
    learner = Learner(config(), capacity=400, device="cpu", total_timesteps=10_000)
    metrics = learner.update([encode(batch), batch])  # bytes and decoded batches alike
    assert set(metrics) >= METRICS
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["accepted"] == 2 * len(batch)
    assert metrics["entropy"] > 0
    assert metrics["version"] == 1 and learner.version == 1
    assert metrics["optimizer_steps"] == 2 * math.ceil(2 * len(batch) / 64)
    assert learner.timesteps == 2 * len(batch)


def test_old_and_future_batches_are_dropped(batch: ExperienceBatch) -> None:
    learner = Learner(config(max_policy_lag=1), capacity=400, device="cpu",
                      total_timesteps=10_000)
    learner.update([batch])
    learner.update([replace(batch, policy_version=1)])
    assert learner.version == 2
    before = {k: v.copy() for k, v in learner.weights()[1].items()}
    metrics = learner.update([replace(batch, policy_version=0),  # lag 2 > 1
                              replace(batch, policy_version=3)])  # from the future
    assert metrics["accepted"] == 0 and metrics["dropped_batches"] == 2
    assert learner.version == 2  # nothing trained, no new version
    for name, array in learner.weights()[1].items():
        np.testing.assert_array_equal(array, before[name])
    metrics = learner.update([replace(batch, policy_version=1), batch])  # lag 1 ok, lag 2 not
    assert metrics["accepted"] == len(batch) and metrics["dropped_batches"] == 1
    assert metrics["max_policy_lag"] == 1
    assert learner.dropped_batches == 3


def test_synchronous_mode_accepts_only_the_current_version(batch: ExperienceBatch) -> None:
    learner = Learner(config(max_policy_lag=0), capacity=200, device="cpu",
                      total_timesteps=10_000)
    learner.update([batch])
    assert learner.update([batch])["dropped_batches"] == 1


def test_capacity_is_preallocated_and_enforced(batch: ExperienceBatch) -> None:
    learner = Learner(config(), capacity=len(batch) + 10, device="cpu", total_timesteps=10_000)
    board = learner.buffer.state.board.data_ptr()
    learner.update([batch])
    learner.update([replace(batch, policy_version=1)])
    assert learner.buffer.state.board.data_ptr() == board  # the same memory, not regrown
    with pytest.raises(ValueError, match="capacity"):
        learner.update([replace(batch, policy_version=2)] * 2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lr_schedule_ends_exactly_at_the_final_value(batch: ExperienceBatch,
                                                     kind: str) -> None:
    learner = Learner(config(lr_schedule=kind, learning_rate=1e-3, final_learning_rate=2e-5),
                      capacity=200, device="cpu", total_timesteps=2 * len(batch))
    first = learner.update([batch])
    assert first["lr"] == pytest.approx((1e-3 + 2e-5) / 2)  # halfway through training
    last = learner.update([replace(batch, policy_version=1)])
    assert last["lr"] == 2e-5  # exactly the final value on the last step
    assert learner.optimizer.param_groups[0]["lr"] == 2e-5


def test_target_kl_stops_the_update_early(batch: ExperienceBatch) -> None:
    # The learner starts from the batch's behaviour model (same seed): KL 0 at the first step.
    learner = Learner(config(target_kl=1e-6, learning_rate=0.05, epochs=8), capacity=200,
                      device="cpu", total_timesteps=10_000)
    metrics = learner.update([batch])
    planned = 8 * math.ceil(len(batch) / 64)
    assert metrics["early_stopped"] == 1
    assert 1 <= metrics["optimizer_steps"] < planned


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_updates_stay_finite(amp: str) -> None:
    small = collect_experience(2, 24, seed=1)  # CPU float16 is slow: keep it small
    learner = Learner(config(amp=amp), capacity=48, device="cpu", total_timesteps=10_000)
    metrics = learner.update([small])
    assert all(math.isfinite(metrics[k]) for k in ("policy_loss", "value_loss", "entropy"))
    assert learner.scaler.is_enabled() == (amp == "fp16")


def test_weights_load_into_a_worker_model(batch: ExperienceBatch) -> None:
    learner = Learner(config(), capacity=200, device="cpu", total_timesteps=10_000)
    learner.update([batch])
    version, weights = learner.weights()
    assert version == 1
    assert set(weights) == set(learner.model.state_dict())  # parameters and buffers
    worker = build_model(learner.config.model)
    load_weights(worker, weights)
    planes = torch.rand(3, NUM_PLANES, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(worker.eval()(planes), learner.model.eval()(planes))
    _, half = learner.weights(half=True)
    assert half["stem.0.weight"].dtype == np.float16


def test_state_dict_round_trip_continues_bit_for_bit(batch: ExperienceBatch) -> None:
    cfg = config(lr_schedule="linear")
    a = Learner(cfg, capacity=200, device="cpu", total_timesteps=10_000, seed=1)
    a.update([batch])
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)
    saved.seek(0)
    b = Learner(cfg, capacity=200, device="cpu", total_timesteps=10_000, seed=99)
    b.load_state_dict(torch.load(saved, weights_only=True))
    assert (b.version, b.timesteps, b.updates) == (1, len(batch), 1)
    next_batch = replace(batch, policy_version=1)
    metrics_a, metrics_b = a.update([next_batch]), b.update([next_batch])
    for key in ("policy_loss", "value_loss", "approx_kl", "lr"):
        assert metrics_a[key] == metrics_b[key], key
    for name, array in a.weights()[1].items():
        np.testing.assert_array_equal(array, b.weights()[1][name])
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"model": {}})


def test_unavailable_cuda_falls_back_to_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    learner = Learner(config(), capacity=8, device="cuda", total_timesteps=10)
    assert learner.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("amp", "compile"), [("off", False), ("bf16", True), ("fp16", False)])
def test_cuda_update_with_amp_and_compile(batch: ExperienceBatch, amp: str,
                                          compile: bool) -> None:
    learner = Learner(config(amp=amp, compile=compile), capacity=200, device="cuda",
                      total_timesteps=10_000)
    metrics = learner.update([batch])
    assert learner.device.type == "cuda"
    assert all(math.isfinite(metrics[k]) for k in ("policy_loss", "value_loss", "entropy"))
    keys = list(learner.state_dict()["model"])
    assert not any("_orig_mod" in k for k in keys)
    _, weights = learner.weights()
    assert set(weights) == set(keys)
    assert all(isinstance(a, np.ndarray) for a in weights.values())


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")),
                    reason="torch.compile on CPU (inductor) needs a C++ compiler")
def test_compiled_cpu_learner_computes_what_the_eager_one_does(batch: ExperienceBatch) -> None:
    # ppo.compile on a CPU learner (inductor's C++ backend): same seed, same data, the same
    # update's losses as eager to float tolerance, and state_dict keys without _orig_mod.
    eager = Learner(config(), capacity=200, device="cpu", total_timesteps=10_000, seed=3)
    compiled = Learner(config(compile=True), capacity=200, device="cpu",
                       total_timesteps=10_000, seed=3)
    assert compiled.forward != compiled.model.heads  # really compiled, not skipped on CPU
    want, got = eager.update([batch]), compiled.update([batch])
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
    assert not any("_orig_mod" in k for k in compiled.state_dict()["model"])


def test_benchmarks_return_their_figures() -> None:
    ppo = bench_ppo(("tiny",), transitions=128, minibatch_size=64)
    assert ppo["tiny samples per s"] > 0 and ppo["device"] == "cpu"
    weights = bench_weights("tiny", repeats=1)
    assert weights["weights() ms"] > 0 and weights["parameters"] > 0
    cost = bench_decoupled(("tiny",), transitions=128, minibatch_size=64, rounds=1, epochs=1)
    assert 0 < cost["tiny proximal pass s"] < cost["tiny decoupled update s"]
    assert cost["tiny classic samples per s"] > 0 and cost["transitions"] == 128


def test_tactics_positions_target_the_heuristic_choices() -> None:
    states, legal, targets = tactics_positions(60, seed=3)
    assert len(states) == len(legal) == len(targets) == 60
    for state, actions, best in zip(states, legal, targets, strict=True):
        assert len(state) == 1 and len(best) >= 1 and np.isin(best, actions).all()


def test_policy_head_benchmark_returns_its_figures() -> None:
    figures = bench_policy_head(positions=300, steps=4, size="tiny", minibatch_size=32,
                                test_positions=40)
    for head in ("relative", "absolute"):
        assert 0.0 <= figures[f"{head} test accuracy @4"] <= 1.0
        assert figures[f"{head} train s"] > 0


# ----------------------------------------------------------------------------- decoupled PPO


def lagged_update(batch: ExperienceBatch, **ppo: object) -> dict[str, float]:
    """The metrics of an update on data one version old: the learner first trains on `batch`
    (played by its own initial weights), then gets `batch` again as version 0's data. One
    epoch of one minibatch: the metrics are those of the first step, before it is taken."""
    learner = Learner(config(learning_rate=0.05, **ppo), capacity=200, device="cpu",
                      total_timesteps=10_000)
    learner.update([batch])
    settings = {"epochs": 1, "minibatch_size": len(batch), **ppo}
    learner.ppo = learner.config.ppo.model_copy(update=settings)
    return learner.update([replace(batch, policy_version=0)])


def test_decoupled_ppo_clips_around_the_learners_own_policy(batch: ExperienceBatch) -> None:
    decoupled = lagged_update(batch)  # the default
    assert decoupled["max_policy_lag"] == 1
    # The clip is centred on the proximal policy: no row is past it before the first step, so
    # every sample gives a gradient; the lag shows in the behaviour ratios instead.
    assert decoupled["clip_fraction"] == 0.0
    assert decoupled["approx_kl"] < 1e-9
    assert decoupled["behaviour_kl"] > 1e-3
    classic = lagged_update(batch, decoupled=False)
    assert classic["clip_fraction"] > 0.05  # rows past the behaviour-centred clip: no gradient
    assert classic["approx_kl"] == pytest.approx(decoupled["behaviour_kl"], rel=1e-4)
    assert classic["behaviour_kl"] == 0.0


@pytest.mark.parametrize("decoupled", [True, False])
def test_target_kl_never_stops_an_update_before_its_first_step(batch: ExperienceBatch,
                                                               decoupled: bool) -> None:
    metrics = lagged_update(batch, decoupled=decoupled, target_kl=1e-12, epochs=4,
                            minibatch_size=32)
    assert metrics["early_stopped"] == 1
    assert metrics["optimizer_steps"] == 1  # the first minibatch's step is always taken
    assert metrics["accepted"] == len(batch) and metrics["samples"] == 64


def test_batch_norm_ratio_starts_at_one_and_its_statistics_stay(batch: ExperienceBatch
                                                                ) -> None:
    # The workers act in eval mode (running statistics); the learner trains in training mode
    # (batch statistics): the proximal pass runs as the first step does, so the first ratio is
    # exactly 1, and it leaves BatchNorm's running statistics as one training forward does.
    def update(decoupled: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        cfg = Config.model_validate({
            "env": {"max_moves": MAX_MOVES}, "model": {"size": "tiny", "norm": "batch"},
            "ppo": {"minibatch_size": len(batch), "epochs": 1, "decoupled": decoupled}})
        torch.manual_seed(0)
        data = collect_experience(4, 40, seed=0, max_moves=MAX_MOVES,
                                  model=build_model(cfg.model))
        learner = Learner(cfg, capacity=200, device="cpu", total_timesteps=10_000)
        metrics = learner.update([data])
        stats = {k: v.clone() for k, v in learner.model.state_dict().items()
                 if "running" in k or "num_batches" in k}
        return metrics, stats

    decoupled, stats = update(True)
    assert decoupled["approx_kl"] < 1e-9 and decoupled["clip_fraction"] == 0.0
    classic, classic_stats = update(False)
    assert classic["approx_kl"] > 1e-3  # train-mode numbers are not the workers' eval-mode
    assert decoupled["behaviour_kl"] == pytest.approx(classic["approx_kl"], rel=1e-4)
    for name, value in stats.items():
        torch.testing.assert_close(value, classic_stats[name], rtol=0, atol=0, msg=name)


def test_bf16_autocast_ratio_starts_at_one(batch: ExperienceBatch) -> None:
    learner = Learner(config(amp="bf16", epochs=1, minibatch_size=len(batch)), capacity=200,
                      device="cpu", total_timesteps=10_000)
    metrics = learner.update([batch])
    assert metrics["approx_kl"] < 1e-9 and metrics["clip_fraction"] == 0.0
