"""The self-play worker without Ray: terminal rewards, the move cap, rollout ends, versions.

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


def test_a_rollout_end_bootstraps_and_nothing_is_held_back() -> None:
    # One ply per rollout: White's move ships at once, bootstrapped from Black's -V; Black's
    # mate in the next collect is its own terminal row.
    worker = make_worker(steps=1)
    summary, first = collect(worker)
    assert len(first) == 1 and summary.transitions == 1
    np.testing.assert_allclose(first.advantage, [-GAMMA * V_BOOT - V_STATE], rtol=1e-6)
    summary, second = collect(worker, version=1)
    assert summary.games == 1
    np.testing.assert_allclose(second.returns, [1.0])
    assert list(first.state.color) == [1] and list(second.state.color) == [0]


def test_the_move_cap_is_a_terminal_draw() -> None:
    # A cap of one ply: every game is White's 9c9d, then the cap: a draw, terminal.
    worker = make_worker(steps=2, max_moves=1)
    summary, batch = collect(worker)
    assert summary.cap_draws == 2 and summary.games == 2  # two one-ply games in the rollout
    np.testing.assert_allclose(batch.advantage, [-V_STATE, -V_STATE], rtol=1e-6)
    np.testing.assert_allclose(batch.returns, [0.0, 0.0], atol=1e-7)


def test_the_move_cap_ends_both_players_last_moves() -> None:
    # Start position, a cap of two plies: Black's move and White's, both terminal draws (no
    # bootstrap from the capped position, no recursion from White's row into Black's).
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=2",
                             "train.games_per_worker=1", "env.max_moves=2",
                             f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    summary, batch = collect(worker)
    assert summary.cap_draws == 1
    np.testing.assert_allclose(batch.returns, [0.0, 0.0], atol=1e-7)


def test_the_move_cap_is_terminal_against_a_fixed_opponent() -> None:
    from shogi.duel import OpponentEnv

    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=1",
                             "train.games_per_worker=2", "train.opponent_share=0.5",
                             "env.max_moves=2", f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    worker.duels = OpponentEnv(1, ScriptedOpponent(), max_moves=2)
    worker.obs = worker._observe()
    summary, batch = collect(worker)
    assert summary.opponent_games == 1 and summary.opponent_draws == 1
    np.testing.assert_allclose(batch.returns[-1:], [0.0], atol=1e-7)  # not +gamma^2 * V_BOOT


def test_running_game_bootstraps_and_recurses() -> None:
    # Start position, a long game: three rollout rows, every one shipped.
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=3",
                             "train.games_per_worker=1", f"ppo.gamma={GAMMA}",
                             f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    _, batch = collect(worker)
    assert len(batch) == 3
    # row 3: A3 = -g*V_BOOT - V ; row 2: A2 = -g*V - V - g*l*A3 ; row 1 likewise.
    a3 = -GAMMA * V_BOOT - V_STATE
    a2 = -GAMMA * V_STATE - V_STATE - GAMMA * LAM * a3
    a1 = -GAMMA * V_STATE - V_STATE - GAMMA * LAM * a2
    np.testing.assert_allclose(batch.advantage, [a1, a2, a3], rtol=1e-5)


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
    assert total == 4 * 8 * 3  # every ply of every game shipped once
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
    assert len(batch) == 2  # White's capture, then Black's reply
    shaping = c * (-GAMMA * -6.0 - (-4.0))
    # lambda = 0: A = r - gamma * V(next) - V, V(next) being Black's value of the next state.
    np.testing.assert_allclose(batch.advantage[:1], [shaping - GAMMA * V_STATE - V_STATE],
                               rtol=1e-5)


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
    assert len(batch) == 2  # the self-play slot's row, then the duel slot's
    # The row spans two plies (the reply is folded in): gamma^2, as two self-play rows would.
    np.testing.assert_allclose(batch.advantage[-1:], [GAMMA**2 * V_BOOT - V_STATE], rtol=1e-6)


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


def test_material_shaping_anneals_to_zero() -> None:
    from keisei_ray.config import RewardConfig

    reward = RewardConfig(material=0.04, material_anneal_share=0.5)
    assert [reward.weight_at(p) for p in (0.0, 0.25, 0.5, 0.9)] == pytest.approx(
        [0.04, 0.02, 0.0, 0.0])
    assert RewardConfig(material=0.04, material_anneal_share=None).weight_at(1.0) == 0.04
    # In the worker: half-way through the anneal the shaping is half, after it none at all
    # (the final position's potential included): the returns are the game's result.
    c = 0.01
    for progress, scale in ((0.25, 0.5), (0.5, 0.0), (1.0, 0.0)):
        worker = make_worker(steps=2)
        worker.config = worker.config.model_copy(update={"reward": RewardConfig(
            material=c, material_anneal_share=0.5)})
        _, payload = worker.collect(export_weights(worker.model), 0, progress=progress)
        batch = decode(payload)
        white = -1.0 + scale * c * (-GAMMA * 6.0 - (-6.0))
        black = 1.0 + scale * c * (-GAMMA * -6.0 - 6.0)
        np.testing.assert_allclose(batch.returns, [white, black], rtol=1e-6)


def test_shaping_discounts_a_two_ply_row_by_gamma_squared() -> None:
    # Against the fixed opponent, a row whose reply is folded in: c * (gamma^2 * M(next) -
    # M(before)), M(next) from the learner's view again (sign +1). Start position: no capture,
    # M = 0 throughout, so build one: the learner (White) takes a silver with a pawn.
    from shogi.duel import OpponentEnv

    c = 0.01
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=1",
                             "train.games_per_worker=3", "train.opponent_share=0.67",
                             f"ppo.gamma={GAMMA}", "ppo.gae_lambda=0", f"reward.material={c}"])
    SCRIPT.add("5d5e")
    try:
        worker = ScriptedWorker(cfg, worker_id=0)
        # Two duel slots; the learner plays White in the second (to move first here).
        worker.duels = OpponentEnv(2, ScriptedOpponent(),
                                   start_sfen="4k4/9/9/4p4/4S4/9/9/9/4K4 w - 1")
        worker.obs = worker._observe()
        _, payload = worker.collect(export_weights(worker.model), 0)
    finally:
        SCRIPT.discard("5d5e")
    batch = decode(payload)
    # White: M(before) = 1 - 5 = -4; after 5d5e (the silver to hand) and Black's reply (a king
    # move: Black has nothing else), White is to move again with M = 1 + 5 = 6.
    shaping = c * (GAMMA**2 * 6.0 - (-4.0))
    np.testing.assert_allclose(batch.advantage[-1:], [shaping + GAMMA**2 * V_BOOT - V_STATE],
                               rtol=1e-5)


def test_training_progress_is_the_budget_that_ends_the_run_first() -> None:
    from keisei_ray.config import TrainConfig
    from keisei_ray.training.driver import training_progress

    steps = TrainConfig(total_timesteps=1000)
    assert training_progress(steps, 250, 9_999.0) == 0.25  # no time limit: timesteps alone
    timed = TrainConfig(total_timesteps=1000, max_minutes=10.0)
    assert training_progress(timed, 250, 300.0) == 0.5  # half the time is up first
    assert training_progress(timed, 900, 60.0) == 0.9
    assert training_progress(timed, 5000, 0.0) == 1.0
