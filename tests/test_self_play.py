"""The self-play worker without Ray: terminal rewards, truncation, hold-back across rollouts.

A scripted policy picks the moves and reports fixed values, so every advantage and return
below is computed by hand from the two-player conventions of DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.self_play import SelfPlayWorker
from keisei_ray.codec import decode
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from learner.model import export_weights
from shogi import CompactState, Move, Observation, VecEnv, move_to_action

# White to move: 9c9d, then Black mates with G*1b.
MATE_SFEN = "8k/9/p7P/9/9/9/9/9/K8 w G 1"
SCRIPT = {"9c9d", "G*1b"}
V_STATE = 0.5  # value the scripted policy reports for every state it moves from
V_BOOT = 0.25  # value reported for bootstrap states (after the rollout, truncated finals)
GAMMA, LAM = 0.9, 0.8


class ScriptedWorker(SelfPlayWorker):
    """Plays the scripted move when legal (else the first legal one) with fixed values."""

    def _policy(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(obs.state)
        actions = np.empty(n, np.int16)
        for i in range(n):
            row = obs.legal_actions[obs.legal_offsets[i]:obs.legal_offsets[i + 1]]
            color = int(obs.state.color[i])
            wanted = [move_to_action(Move.from_usi(u), color) for u in SCRIPT]
            hits = [a for a in wanted if a in row]
            actions[i] = hits[0] if hits else row[0]
        return actions, np.full(n, -0.7, np.float32), np.full(n, V_STATE, np.float32)

    def _values(self, state: CompactState) -> np.ndarray:
        return np.full(len(state), V_BOOT, np.float32)


def make_worker(steps: int, max_moves: int = 512, games: int = 1) -> ScriptedWorker:
    cfg: Config = load_config(None, [
        "model.size=tiny", f"train.rollout_steps={steps}", f"train.games_per_worker={games}",
        f"env.max_moves={max_moves}", f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=3)
    worker.env = VecEnv(games, max_moves, seed=0, start_sfen=MATE_SFEN)
    worker.obs = worker.env.observe()
    return worker


def collect(worker: SelfPlayWorker, version: int = 0):  # type: ignore[no-untyped-def]
    summary, payload = worker.collect(export_weights(worker.model), version)
    return summary, decode(payload)


def test_decisive_game_terminal_rewards_for_both_players() -> None:
    worker = make_worker(steps=2)
    summary, batch = collect(worker)
    assert summary.games == 1 and summary.black_wins == 1
    assert summary.reasons == {"checkmate": 1}
    # Both plies shipped (the game ended inside the rollout), in order: White's, then Black's.
    assert len(batch) == 2
    np.testing.assert_allclose(batch.returns, [-1.0, 1.0])  # terminal: return = reward
    np.testing.assert_allclose(batch.advantage, [-1.0 - V_STATE, 1.0 - V_STATE])
    assert list(batch.state.color) == [1, 0]
    assert batch.policy_version == 0 and batch.worker_id == 3
    assert list(batch.game_results) == [1]


def test_terminal_reward_reaches_the_held_back_transition() -> None:
    # One ply per rollout: White's move cannot be judged until Black's reply is played.
    worker = make_worker(steps=1)
    summary, first = collect(worker)
    assert len(first) == 0 and summary.transitions == 0  # held back, not guessed
    summary, second = collect(worker, version=1)
    assert summary.games == 1
    np.testing.assert_allclose(second.returns, [-1.0, 1.0])
    assert list(second.state.color) == [1, 0]


def test_truncated_game_bootstraps_from_the_final_state() -> None:
    # A cap of one ply: every game is White's 9c9d, then truncation.
    worker = make_worker(steps=2, max_moves=1)
    summary, batch = collect(worker)
    assert summary.cap_draws == 2 and summary.games == 2  # two one-ply games in the rollout
    # Each row is White's only ply of a truncated game: bootstrap from -V(final), no recursion.
    expected_adv = 0.0 - GAMMA * V_BOOT - V_STATE
    np.testing.assert_allclose(batch.advantage, [expected_adv, expected_adv], rtol=1e-6)
    np.testing.assert_allclose(batch.returns, batch.advantage + V_STATE, rtol=1e-6)


def test_running_game_bootstraps_and_recurses() -> None:
    # Start position, a long game: two rollout rows, the second held back.
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=3",
                             "train.games_per_worker=1", f"ppo.gamma={GAMMA}",
                             f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    _, batch = collect(worker)
    assert len(batch) == 2  # rows 1 and 2 shipped, row 3 held back
    # row 3 (held back): A3 = -g*V_BOOT - V ; row 2: A2 = -g*V - V - g*l*A3 ; row 1 likewise.
    a3 = -GAMMA * V_BOOT - V_STATE
    a2 = -GAMMA * V_STATE - V_STATE - GAMMA * LAM * a3
    a1 = -GAMMA * V_STATE - V_STATE - GAMMA * LAM * a2
    np.testing.assert_allclose(batch.advantage, [a1, a2], rtol=1e-5)


def test_real_policy_batches_are_consistent_and_reproducible() -> None:
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=8",
                             "train.games_per_worker=4", "env.max_moves=6"])
    runs = []
    for _ in range(2):
        worker = SelfPlayWorker(cfg, worker_id=1)
        weights = export_weights(worker.model)
        batches = [decode(worker.collect(weights, 0)[1]) for _ in range(3)]
        runs.append(batches)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.action, b.action)
        np.testing.assert_array_equal(a.returns, b.returns)
    total = sum(len(b) for b in runs[0])
    games = sum(len(b.game_results) for b in runs[0])
    assert games >= 4 * 3  # 24 plies per slot, 6-ply games
    # Every transition shipped once: all plies played minus those still held back.
    assert 4 * 8 * 3 - 4 <= total <= 4 * 8 * 3
    for batch in runs[0]:
        assert np.all(np.isfinite(batch.log_prob)) and np.all(batch.log_prob <= 0)
        rows = np.diff(batch.legal_offsets)
        assert np.all(rows > 0)
        for i in range(len(batch)):
            legal = batch.legal_actions[batch.legal_offsets[i]:batch.legal_offsets[i + 1]]
            assert batch.action[i] in legal


def test_attack_planes_reach_the_worker_and_the_learner() -> None:
    from learner import Learner

    cfg = load_config(None, ["model.size=tiny", "model.attack_planes=true",
                             "train.rollout_steps=4", "train.games_per_worker=4"])
    worker = SelfPlayWorker(cfg, worker_id=0)
    assert worker.model.stem[0].in_channels == 50
    batch = decode(worker.collect(export_weights(worker.model), 0)[1])
    learner = Learner(cfg, capacity=len(batch), device="cpu", total_timesteps=1_000)
    metrics = learner.update([batch])
    assert metrics["accepted"] == len(batch) and np.isfinite(metrics["policy_loss"])


def test_worker_seeds_differ() -> None:
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=4",
                             "train.games_per_worker=2"])
    a, b = SelfPlayWorker(cfg, 0), SelfPlayWorker(cfg, 1)
    wa = export_weights(a.model)
    ba = decode(a.collect(wa, 0)[1])
    bb = decode(b.collect(wa, 0)[1])
    assert not np.array_equal(ba.action, bb.action)


def test_missing_weights_for_a_new_version_is_an_error() -> None:
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=1",
                             "train.games_per_worker=1"])
    worker = SelfPlayWorker(cfg, 0)
    with pytest.raises(ValueError, match="was given no weights"):
        worker.collect(None, 5)


def test_material_shaping_is_potential_based() -> None:
    # White's pawn takes a silver: M(before, White) = 1 - 5 = -4; after it, Black to move sees
    # 0 - (1 + 5) = -6, worth +6 to White. Shaping = c * (-gamma * M(next) - M(before)).
    c = 0.01
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=2",
                             "train.games_per_worker=1", f"ppo.gamma={GAMMA}",
                             "ppo.gae_lambda=0", f"reward.material={c}"])
    SCRIPT.add("5d5e")
    try:
        worker = ScriptedWorker(cfg, worker_id=0)
        worker.env = VecEnv(1, 512, seed=0, start_sfen="4k4/9/9/4p4/4S4/9/9/9/4K4 w - 1")
        worker.obs = worker.env.observe()
        _, batch = collect(worker)
    finally:
        SCRIPT.discard("5d5e")
    assert len(batch) == 1  # Black's reply is held back
    shaping = c * (-GAMMA * -6.0 - (-4.0))
    # lambda = 0: A = r - gamma * V(next) - V, V(next) being Black's value of the next state.
    np.testing.assert_allclose(batch.advantage, [shaping - GAMMA * V_STATE - V_STATE], rtol=1e-5)


def test_material_shaping_keeps_the_final_position_potential() -> None:
    # MATE_SFEN: White (pawn) to move against Black's pawn and a gold in hand: M(White) = -6.
    # White plays 9c9d (M(Black) = +6), Black mates with G*1b (M(White) = -6 at the end).
    c = 0.01
    worker = make_worker(steps=2)
    worker.config = worker.config.model_copy(update={
        "reward": worker.config.reward.model_copy(update={"material": c})})
    _, batch = collect(worker)
    white = -1.0 + c * (-GAMMA * 6.0 - (-6.0))
    black = 1.0 + c * (-GAMMA * -6.0 - 6.0)
    np.testing.assert_allclose(batch.returns, [white, black], rtol=1e-6)


class ScriptedOpponent:
    """Plays 9c9d or G*1b when legal, else the first legal move."""

    def choose(self, position):  # type: ignore[no-untyped-def]
        legal = position.legal_moves()
        for usi in ("9c9d", "G*1b"):
            for move in legal:
                if str(move) == usi:
                    return move
        return legal[0]


def test_games_against_a_fixed_opponent() -> None:
    from shogi.duel import OpponentEnv

    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=2",
                             "train.games_per_worker=2", "train.opponent_share=0.5",
                             f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    assert worker.num_self == 1 and worker.duels is not None
    # Slot 1 duels from MATE_SFEN: game 1 (learner Black): the opponent opens 9c9d, the learner
    # mates with G*1b. Game 2 (learner White, to move): 9c9d, and the opponent mates.
    worker.duels = OpponentEnv(1, ScriptedOpponent(), start_sfen=MATE_SFEN)
    worker.obs = worker._observe()
    summary, batch = collect(worker)
    assert summary.opponent_games == 2 and summary.opponent_wins == 1
    duel = batch.returns[-2:]  # slot-major: the duel slot's rows come last
    np.testing.assert_allclose(duel, [1.0, -1.0])
    np.testing.assert_allclose(batch.advantage[-2:], [1.0 - V_STATE, -1.0 - V_STATE])


def test_fixed_opponent_bootstrap_keeps_the_sign() -> None:
    # One row per rollout from the start position: the learner's move and the reply leave the
    # learner to move again, so the row bootstraps from +V (self-play would use -V).
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=1",
                             "train.games_per_worker=2", "train.opponent_share=0.5",
                             f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    _, batch = collect(worker)
    assert len(batch) == 1  # the self-play slot's row is held back; the duel row ships
    np.testing.assert_allclose(batch.advantage, [GAMMA * V_BOOT - V_STATE], rtol=1e-6)


def test_worker_state_round_trip_with_opponent_games() -> None:
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=6",
                             "train.games_per_worker=4", "train.opponent_share=0.5",
                             "env.max_moves=30"])
    a = SelfPlayWorker(cfg, worker_id=2)
    weights = export_weights(a.model)
    a.collect(weights, 0)
    b = SelfPlayWorker(cfg, worker_id=2)
    b.set_state(a.get_state())
    for _ in range(3):
        sa, pa = a.collect(weights, 0)
        sb, pb = b.collect(weights, 0)
        assert pa == pb and sa.opponent_games == sb.opponent_games
