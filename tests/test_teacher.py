"""Search as a teacher (issue 24): the improved policy, the worker's moves and targets, the
codec's target fields, the distillation term, and resume.

The improved policy and the distillation term are checked against formulas written here
independently (dense numpy / torch over every legal move), not against the code under test.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from actors.self_play import SelfPlayWorker
from actors.teacher import SearchTeacher, sparse_target
from actors.tree import Node, improved_policy
from keisei_ray.codec import FORMAT_VERSION, CodecError, ExperienceBatch, decode, encode
from keisei_ray.config import ConfigError, PPOConfig
from keisei_ray.config_loading import load_config
from learner.buffer import ExperienceBuffer
from learner.model import LegalPolicy, export_weights
from learner.ppo import distillation_loss, ppo_loss
from shogi import NUM_ACTIONS, Position, VecEnv
from shogi.compact import material_balance

from .test_codec import reframe, set_array
from .test_search import FlatNet

C_VISIT, C_SCALE = 50.0, 1.0


def reference_improved_policy(logits: np.ndarray, net_value: float, visits: np.ndarray,
                              value_sums: np.ndarray) -> np.ndarray:
    """softmax(logits + sigma(completed Q)) from the paper's definitions (Danihelka et al. 2022,
    eq. 33 for v_mix), with sigma(q) = (c_visit + max N) * c_scale * (q + 1) / 2."""
    prior = np.exp(logits - logits.max())
    prior /= prior.sum()
    visited = visits > 0
    q = np.zeros(len(logits))
    q[visited] = value_sums[visited] / visits[visited]
    total = visits.sum()
    if total:
        weighted = (prior[visited] * q[visited]).sum() / prior[visited].sum()
        v_mix = (net_value + total * weighted) / (1 + total)
    else:
        v_mix = net_value
    completed = np.where(visited, q, v_mix)
    sigma = (C_VISIT + visits.max()) * C_SCALE * (completed + 1.0) / 2.0
    scores = np.log(prior) + sigma
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


def hand_built_node() -> tuple[Node, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    k = 7
    raw = rng.normal(size=k) * 2
    log_prior = raw - np.log(np.exp(raw).sum())
    node = Node(moves=list(range(100, 100 + k)))
    node.expand(log_prior, 0.15)
    visits = np.array([3, 0, 1, 0, 5, 0, 0])
    sums = np.array([0.9, 0.0, -0.7, 0.0, 2.0, 0.0, 0.0])
    for a in range(k):
        if visits[a]:
            node.add(a, int(visits[a]), float(sums[a]))
    return node, log_prior, visits, sums


def test_improved_policy_of_a_hand_built_tree() -> None:
    node, log_prior, visits, sums = hand_built_node()
    expected = reference_improved_policy(log_prior, 0.15, visits, sums)
    np.testing.assert_allclose(improved_policy(node, C_VISIT, C_SCALE), expected, rtol=1e-12)
    # The unvisited moves hold the prior times one constant (what the codec relies on).
    unvisited = visits == 0
    ratio = expected[unvisited] / np.exp(log_prior[unvisited])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
    # Before any visit the improved policy is the prior.
    fresh = Node(moves=[1, 2, 3])
    fresh.expand(np.log(np.array([0.5, 0.3, 0.2])), -0.4)
    np.testing.assert_allclose(improved_policy(fresh, C_VISIT, C_SCALE), [0.5, 0.3, 0.2])


def test_sparse_target_lays_the_policy_over_the_legal_actions() -> None:
    _node, log_prior, visits, sums = hand_built_node()
    policy = reference_improved_policy(log_prior, 0.15, visits, sums)
    legal = np.array([3, 10, 11, 40, 41, 42, 90, 95], dtype=np.int16)  # one more than searched
    actions = np.array([95, 10, 42, 3, 41, 11, 40])  # the root's order, not sorted
    index, probs, rest = sparse_target(legal, actions, policy, visits)
    # Visited: actions 95 (pos 7), 42 (pos 5), 41 (pos 4), ascending positions.
    assert index.tolist() == [4, 5, 7]
    np.testing.assert_allclose(probs, [policy[4], policy[2], policy[0]])
    assert rest == pytest.approx(policy[visits == 0].sum())
    with pytest.raises(RuntimeError, match="not the observation's legal actions"):
        sparse_target(legal, np.array([95, 12]), np.array([0.5, 0.5]), np.array([1, 1]))


# ----------------------------------------------------------------------------- the worker


def teacher_config(*extra: str) -> Any:
    return load_config(None, ["model.size=tiny", "train.rollout_steps=6",
                              "train.games_per_worker=3", "env.max_moves=10",
                              "train.search.simulations=4", "search.leaves_per_forward=2",
                              *extra])


def test_the_worker_plays_samples_of_the_improved_policy_and_ships_it() -> None:
    cfg = teacher_config("train.search.full_search_share=0.5",
                         "train.search.cheap_simulations=2")
    worker = SelfPlayWorker(cfg, worker_id=1)
    assert worker.teacher is not None
    weights = export_weights(worker.model)
    batches = [decode(worker.collect(weights, 0)[1]) for _ in range(4)]
    # 24 plies per game over 10-ply games: restarts happen and the mirrored games keep up.
    assert sum(len(b.game_results) for b in batches) >= 3
    for slot, position in enumerate(worker.teacher.positions):
        assert position.compact().equals(worker.env.observe().state.take(np.array([slot])))
    targets = 0
    for batch in batches:
        assert 0 < batch.has_target.sum() < len(batch)  # playout-cap randomization
        starts = np.zeros(len(batch) + 1, np.int64)
        np.cumsum(batch.target_counts, out=starts[1:])
        for i in np.flatnonzero(batch.has_target):
            targets += 1
            legal = batch.legal_actions[batch.legal_offsets[i]:batch.legal_offsets[i + 1]]
            index = batch.target_index[starts[i]:starts[i + 1]]
            probs = batch.target_probs[starts[i]:starts[i + 1]].astype(np.float64)
            assert probs.sum() + float(batch.target_rest[i]) == pytest.approx(1.0, abs=5e-3)
            # The behaviour log-prob is log pi'(action): the visited moves carry pi'.
            played = int(np.searchsorted(legal, batch.action[i]))
            if played in index.tolist():
                p = probs[index.tolist().index(played)]
                assert batch.log_prob[i] == pytest.approx(math.log(p), abs=2e-3)
            assert -1.0 <= batch.search_value[i] <= 1.0
    assert targets > 10


def test_search_off_is_todays_worker() -> None:
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=4",
                             "train.games_per_worker=2"])
    worker = SelfPlayWorker(cfg, worker_id=0)
    assert worker.teacher is None
    batch = decode(worker.collect(export_weights(worker.model), 0)[1])
    assert not batch.has_target.any() and len(batch.target_index) == 0
    np.testing.assert_array_equal(batch.search_value, batch.value)


def test_the_teacher_searches_with_the_shaping_in_force() -> None:
    """With material shaping the value head learns returns that count it: the teacher's
    search adds it back at this collect's coefficient (none once annealed away); the search
    values it ships stay within the value head's range."""
    cfg = teacher_config("reward.material=0.05", "reward.material_anneal_share=0.5")
    worker = SelfPlayWorker(cfg, worker_id=0)
    assert worker.teacher is not None
    weights = export_weights(worker.model)
    batch = decode(worker.collect(weights, 0, progress=0.25)[1])
    assert worker.teacher.search.value_material == pytest.approx(0.025)
    assert np.all(np.abs(batch.search_value) <= 1.0 + 1e-6)
    worker.collect(weights, 0, progress=0.75)
    assert worker.teacher.search.value_material == 0.0


@pytest.mark.parametrize("side", ["b", "w"])
def test_shipped_search_values_leave_out_the_balance_on_the_board(side: str) -> None:
    """Black is a gold up, far from any capture or mate. A flat network trained (it says) with
    shaping 0.1 values every position at 0 plus what is still to be won: the search reads each
    leaf as 0 + 0.1 x balance, +-0.6 for the mover, and the teacher ships the value head's
    scale, 0, not the search's +-0.6."""
    cfg = teacher_config("train.search.simulations=8", "env.max_moves=64")
    env = VecEnv(2, max_moves=64, start_sfen=f"8k/9/9/9/9/9/9/9/G3K4 {side} - 1")
    teacher = SearchTeacher(cfg, FlatNet(0.1), env, seed=0)
    teacher.shaping(0.1)
    obs = env.reset()
    mover = 1.0 if side == "b" else -1.0
    assert material_balance(obs.state) == pytest.approx([6.0 * mover] * 2)
    step = teacher.choose(obs)
    assert step.values == pytest.approx([0.0, 0.0], abs=1e-6)
    search = teacher.search.search(Position(env.start_sfen, max_moves=64))
    assert search.value == pytest.approx(0.6 * mover, abs=1e-6)  # what the search saw


def test_worker_state_resumes_the_search_exactly() -> None:
    cfg = teacher_config("train.search.full_search_share=0.5")
    a = SelfPlayWorker(cfg, worker_id=2)
    weights = export_weights(a.model)
    a.collect(weights, 0)
    b = SelfPlayWorker(cfg, worker_id=2)
    state = a.get_state()
    assert state["teacher"]["settings"]["simulations"] == 4
    b.set_state(state)
    for _ in range(2):
        assert a.collect(weights, 0)[1] == b.collect(weights, 0)[1]
    # Without the teacher's generators, the searches differ (the test can fail).
    c = SelfPlayWorker(cfg, worker_id=2)
    stale = a.get_state()
    stale["teacher"] = None
    c.set_state(stale)
    assert c.collect(weights, 0)[1] != a.collect(weights, 0)[1]


def test_teacher_state_rejects_a_bad_generator() -> None:
    cfg = teacher_config()
    env = VecEnv(3, 10)
    teacher = SearchTeacher(cfg, SelfPlayWorker(cfg, 0).model, env, seed=1)
    state = teacher.get_state()
    state["rng"] = {"bit_generator": "nonsense"}
    with pytest.raises(ValueError, match="teacher state: bad generator state"):
        teacher.set_state(state, env)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cheap_simulations .* must not exceed"):
        load_config(None, ["train.search.simulations=4", "train.search.cheap_simulations=8"])
    with pytest.raises(ConfigError, match="full_search_share"):
        load_config(None, ["train.search.full_search_share=0"])
    with pytest.raises(ConfigError, match="search_value_mix"):
        load_config(None, ["ppo.search_value_mix=2"])


# ----------------------------------------------------------------------------- the codec


@pytest.fixture(scope="module")
def target_payload() -> bytes:
    worker = SelfPlayWorker(teacher_config(), worker_id=0)
    return worker.collect(export_weights(worker.model), 0)[1]


def test_codec_round_trips_the_targets(target_payload: bytes) -> None:
    batch = decode(target_payload)
    assert batch.has_target.all() and len(batch.target_index) > 0
    again = decode(encode(batch))
    for name in ("target_counts", "target_index", "target_probs", "target_rest",
                 "search_value"):
        np.testing.assert_array_equal(getattr(again, name), getattr(batch, name))
        assert getattr(again, name).dtype == getattr(batch, name).dtype


def first_target_row(batch: ExperienceBatch) -> int:
    return int(np.flatnonzero(batch.has_target)[0])


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (set_array("target_probs", lambda a: a.__setitem__(0, np.nan)), "target_probs: holds NaN"),
        (set_array("target_probs", lambda a: a.__setitem__(0, -0.5)), "outside 0..1"),
        (set_array("target_rest", lambda a: a.__setitem__(0, np.inf)), "target_rest: holds NaN"),
        (set_array("target_probs", lambda a: a.__setitem__(0, min(1.0, a[0] + 0.5))),
         "sums to"),
        (set_array("target_index", lambda a: a.__setitem__(0, 700)), "outside its"),
        (set_array("target_counts", lambda a: a.__setitem__(0, a[0] + 1)), "target_counts sum"),
        (set_array("target_counts", lambda a: a.__setitem__(0, 1000)), "target_counts"),
        (set_array("search_value", lambda a: a.__setitem__(0, np.nan)), "search_value"),
        (lambda m: m.update(t=m["t"] + 1), "array 'target_index'"),
        (lambda m: m["arrays"].pop("target_rest"), "unexpected array set"),
    ],
)
def test_hostile_target_fields_are_rejected(target_payload: bytes, mutate: Any,
                                            fragment: str) -> None:
    with pytest.raises(CodecError) as info:
        decode(reframe(target_payload, mutate))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unsorted_indices_and_a_rest_without_target_are_rejected(target_payload: bytes) -> None:
    batch = decode(target_payload)
    i = first_target_row(batch)
    count = int(batch.target_counts[i])
    start = int(batch.target_counts[:i].sum())
    if count >= 2:
        index = batch.target_index.copy()
        index[start:start + 2] = index[start:start + 2][::-1]
        with pytest.raises(CodecError, match="not strictly ascending"):
            encode(replace(batch, target_index=index))
    counts = batch.target_counts.copy()
    probs = batch.target_probs
    keep = np.ones(len(probs), bool)
    keep[start:start + count] = False
    counts[i] = 0
    rest = batch.target_rest.copy()
    with pytest.raises(CodecError, match="target_rest: nonzero"):
        encode(replace(batch, target_counts=counts, target_index=batch.target_index[keep],
                       target_probs=probs[keep], target_rest=rest))


def test_an_older_version_is_refused_clearly(target_payload: bytes) -> None:
    assert FORMAT_VERSION == 2
    with pytest.raises(CodecError, match="unsupported format version 1 .*an older keisei-ray"):
        decode(bytes([1]) + target_payload[1:])


# ----------------------------------------------------------------------------- the learner


def random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor]:
    """Logits [B, NUM_ACTIONS], CSR legal actions, per-entry targets (visited: pi', -1:
    unvisited, 0: no target) and per-row rest."""
    gen = torch.Generator().manual_seed(seed)
    b = 5
    logits = torch.randn(b, NUM_ACTIONS, generator=gen, dtype=torch.float64) * 2
    counts = [6, 4, 9, 1, 5]
    legal = [torch.randperm(NUM_ACTIONS, generator=gen)[:c].sort().values for c in counts]
    offsets = torch.tensor([0, *np.cumsum(counts).tolist()])
    targets, rest = [], []
    for r, c in enumerate(counts):
        if r == 1:  # no target
            targets.append(torch.zeros(c, dtype=torch.float64))
            rest.append(0.0)
            continue
        visited = torch.zeros(c, dtype=torch.bool)
        visited[torch.randperm(c, generator=gen)[:max(1, c // 2)]] = True
        mass = torch.rand(1, generator=gen).item() * 0.6 if (~visited).any() else 0.0
        p = torch.rand(int(visited.sum()), generator=gen, dtype=torch.float64)
        row = torch.full((c,), -1.0, dtype=torch.float64)
        row[visited] = p / p.sum() * (1 - mass)
        targets.append(row)
        rest.append(mass)
    return (logits, offsets, torch.cat(legal), torch.cat(targets),
            torch.tensor(rest, dtype=torch.float64))


def reference_distillation(logits: torch.Tensor, offsets: torch.Tensor, legal: torch.Tensor,
                           targets: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Dense: per row, log_softmax over its legal actions; the unvisited moves' target is the
    rest in proportion to the (constant) network policy; the cross-entropy averaged over rows."""
    total = torch.zeros((), dtype=logits.dtype)
    for r in range(logits.shape[0]):
        cols = legal[offsets[r]:offsets[r + 1]]
        logp = torch.log_softmax(logits[r, cols], dim=0)
        t = targets[offsets[r]:offsets[r + 1]]
        unvisited = t < 0
        p = logp.detach().exp()
        full = t.clone()
        if unvisited.any():
            full[unvisited] = rest[r] * p[unvisited] / p[unvisited].sum()
        total = total - (full * logp).sum()
    return total / logits.shape[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distillation_term_and_its_gradient(seed: int) -> None:
    logits, offsets, legal, targets, rest = random_case(seed)
    mine = logits.clone().requires_grad_(True)
    policy = LegalPolicy.from_csr(mine, offsets, legal)
    # LegalPolicy computes in float32: compare at its precision.
    loss = distillation_loss(policy.log_probs, policy.rows, targets.float(), rest.float())
    loss.backward()
    theirs = logits.clone().requires_grad_(True)
    expected = reference_distillation(theirs, offsets, legal, targets, rest)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert mine.grad is not None and theirs.grad is not None
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)
    # The cross-entropy's gradient: (pi - target) / B on target rows, 0 elsewhere.
    b = logits.shape[0]
    for r in range(b):
        cols = legal[offsets[r]:offsets[r + 1]]
        p = torch.softmax(logits[r, cols], dim=0)
        t = targets[offsets[r]:offsets[r + 1]]
        if r == 1:
            assert torch.all(mine.grad[r] == 0)
            continue
        full = t.clone()
        if (t < 0).any():
            full[t < 0] = rest[r] * p[t < 0] / p[t < 0].sum()
        torch.testing.assert_close(mine.grad[r, cols], (p - full) / b, rtol=1e-4,
                                   atol=1e-6)
        others = torch.ones(NUM_ACTIONS, dtype=torch.bool)
        others[cols] = False
        assert torch.all(mine.grad[r, others] == 0)


def test_the_buffer_feeds_the_distillation_term(target_payload: bytes) -> None:
    batch = decode(target_payload)
    plain = replace(batch, target_counts=np.zeros(len(batch), np.uint16),
                    target_index=np.zeros(0, np.uint16), target_probs=np.zeros(0, np.float16),
                    target_rest=np.zeros(len(batch), np.float16))
    losses = {}
    for name, source in (("targets", batch), ("plain", plain)):
        buffer = ExperienceBuffer(64, torch.device("cpu"))
        buffer.add(source)
        buffer.behaviour_as_proximal()
        rows = torch.arange(len(batch))
        mb = buffer.minibatch(rows, 10)
        torch.manual_seed(0)
        logits = torch.randn(len(batch), NUM_ACTIONS)
        values = torch.zeros(len(batch))
        for coef in (0.0, 2.0):
            loss, stats = ppo_loss(logits, values, mb, PPOConfig(search_coef=coef))
            losses[(name, coef)] = (loss.item(), stats.get("distill_loss"))
        if name == "targets":
            assert mb.targets is not None and mb.distill_scale == pytest.approx(1.0)
            # The buffer's targets hold the shipped probabilities where visited, -1 elsewhere.
            assert (mb.targets < 0).any() and (mb.targets > 0).any()
    assert losses[("plain", 0.0)][1] is None
    assert losses[("plain", 0.0)][0] == pytest.approx(losses[("plain", 2.0)][0])
    assert losses[("targets", 0.0)][0] == pytest.approx(losses[("plain", 0.0)][0])
    distill = losses[("targets", 2.0)][1]
    assert distill is not None and distill.item() > 0
    assert losses[("targets", 2.0)][0] == pytest.approx(
        losses[("plain", 0.0)][0] + 2.0 * distill.item(), rel=1e-5)


def test_search_value_mix_moves_the_value_target(target_payload: bytes) -> None:
    batch = decode(target_payload)
    buffer = ExperienceBuffer(64, torch.device("cpu"))
    buffer.add(batch, search_value_mix=0.25)
    expected = 0.75 * batch.returns + 0.25 * batch.search_value
    np.testing.assert_allclose(buffer.returns[:len(batch)].numpy(), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- search, bench


def test_search_many_takes_a_budget_per_position() -> None:
    cfg = teacher_config()
    model = SelfPlayWorker(cfg, 0).model
    env = VecEnv(3, 40)
    positions = [env.position(slot) for slot in range(3)]
    from actors.search import TreeSearch

    search = TreeSearch(model, cfg.search.model_copy(update={"simulations": 1,
                                                              "reuse_tree": False}))
    results = search.search_many(positions, simulations=[0, 3, 8])
    assert [r.nodes for r in results] == [0, 3, 8]
    assert [int(r.root_visits.sum()) for r in results] == [0, 3, 8]
    for r in results:
        assert r.root_policy.sum() == pytest.approx(1.0)
        assert len(r.root_moves) == len(r.root_policy) == len(r.root_visits)
    # Budget 0: the improved policy is the network's own policy, its value the network's.
    np.testing.assert_allclose(results[0].root_policy,
                               [results[0].improved_policy[m] for m in results[0].improved_policy])
    with pytest.raises(ValueError, match="simulations has 2 entries for 3 positions"):
        search.search_many(positions, simulations=[1, 2])


def test_bench_teacher_reports_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.test_cli import run_cli

    code, out, _ = run_cli(["bench", "teacher", "--simulations", "0,2", "--size", "tiny",
                            "--games", "2", "--steps", "2", "--collects", "1", "--warmup", "0",
                            "--json"], capsys)
    assert code == 0, out
    figures = json.loads(out)
    assert figures["no search: decisions per s"] > 0 and figures["N=2: decisions per s"] > 0
    assert figures["N=2: bytes per transition"] > figures["no search: bytes per transition"]
    code, _, err = run_cli(["bench", "teacher", "--simulations", "4,x"], capsys)
    assert code == 2 and "--simulations" in err


def test_a_learner_update_on_search_targets_moves_the_policy_toward_them(
        target_payload: bytes) -> None:
    from learner.learner import Learner

    cfg = teacher_config("ppo.minibatch_size=9", "ppo.epochs=4", "ppo.search_coef=5",
                         "ppo.learning_rate=0.01", "ppo.entropy_coef=0")
    learner = Learner(cfg, capacity=64, device="cpu", seed=0)
    before = learner.update([target_payload])
    assert before["distill_loss"] > 0 and learner.version == 1
    after = learner.update([replace(decode(target_payload), policy_version=1)])
    # Four epochs at a strong distillation weight: the cross-entropy to the targets falls.
    assert after["distill_loss"] < before["distill_loss"]
