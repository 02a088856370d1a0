"""Exact resume, piece by piece: VecEnv and SelfPlayWorker state round trips (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.self_play import SelfPlayWorker
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from learner.model import export_weights
from shogi import Move, Observation, StepResult, VecEnv, move_to_action


def step_usi(env: VecEnv, usi: str) -> StepResult:
    """Play the same USI move in every game."""
    color = env.observe().state.color
    return env.step(np.array([move_to_action(Move.from_usi(usi), int(c)) for c in color]))


def assert_same_observation(a: Observation, b: Observation) -> None:
    assert a.state.equals(b.state)
    assert np.array_equal(a.legal_offsets, b.legal_offsets)
    assert np.array_equal(a.legal_actions, b.legal_actions)


def played_env(steps: int, games: int = 5, max_moves: int = 90, seed: int = 4) -> VecEnv:
    env = VecEnv(games, max_moves=max_moves, seed=seed)
    for _ in range(steps):
        env.step(env.random_actions())
    return env


def test_vecenv_state_round_trip_continues_identically() -> None:
    env = played_env(150)  # several games restarted, others deep in their middle game
    state = env.get_state()
    assert state["moves"].dtype == np.uint16 and int(state["move_counts"].sum()) > 0
    twin = VecEnv(5, max_moves=90, seed=99)
    assert_same_observation(twin.set_state(state), env.observe())
    for _ in range(120):  # both draw the same random actions from their restored rng
        a, b = env.step(env.random_actions()), twin.step(twin.random_actions())
        assert np.array_equal(a.rewards, b.rewards)
        assert np.array_equal(a.terminated, b.terminated)
        assert np.array_equal(a.truncated, b.truncated)
        assert [(g.slot, g.outcome, g.usi_moves) for g in a.finished] == [
            (g.slot, g.outcome, g.usi_moves) for g in b.finished]
        assert_same_observation(env.observe(), twin.observe())


def test_vecenv_state_keeps_repetition_history() -> None:
    # Shuffle the rooks and kings: positions repeat, so the restored env must know the history.
    env = VecEnv(1, max_moves=200)
    cycle = ["2h3h", "8b7b", "3h2h", "7b8b"]
    for usi in cycle * 2 + cycle[:3]:
        step_usi(env, usi)  # the start position has occurred 3 times; one more ply ends it
    twin = VecEnv(1, max_moves=200)
    twin.set_state(env.get_state())
    assert int(twin.observe().state.repetition[0]) == int(env.observe().state.repetition[0])
    a, b = step_usi(env, cycle[3]), step_usi(twin, cycle[3])
    assert [g.outcome for g in a.finished] == [g.outcome for g in b.finished]
    assert a.finished and a.finished[0].outcome.reason.value == "sennichite"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_games", 4, "num_games is 4"),
    ("max_moves", 91, "max_moves is 91"),
    ("impasse", True, "impasse is True"),
    ("start_sfen", "9/9/9/9/9/9/9/9/9 b - 1", "start_sfen is"),
])
def test_vecenv_state_refuses_another_env(field: str, value: object, message: str) -> None:
    state = played_env(3).get_state()
    state[field] = value
    with pytest.raises(ValueError, match=message):
        VecEnv(5, max_moves=90).set_state(state)


def test_vecenv_state_refuses_bad_moves_and_leaves_env_unchanged() -> None:
    env = played_env(6)
    state = env.get_state()
    target = VecEnv(5, max_moves=90, seed=1)
    target.step(target.random_actions())
    before = target.get_state()

    bad = dict(state, moves=state["moves"].copy())
    bad["moves"][7] = 0  # not a move in that position
    with pytest.raises(ValueError, match=r"move16 0 at ply \d+ of game slot 1 is not legal"):
        target.set_state(bad)
    short = dict(state, move_counts=state["move_counts"] - 1)
    with pytest.raises(ValueError, match="move_counts .* do not fit 5 games and 30 moves"):
        target.set_state(short)
    with pytest.raises(ValueError, match="bad rng state"):
        target.set_state(dict(state, rng={"bit_generator": "MT19937"}))
    after = target.get_state()
    assert np.array_equal(before["moves"], after["moves"]) and before["rng"] == after["rng"]


def test_vecenv_state_refuses_a_finished_game() -> None:
    env = VecEnv(1, max_moves=4)
    for usi in ["7g7f", "3c3d", "2g2f"]:
        step_usi(env, usi)
    state = env.get_state()
    state["move_counts"] = np.array([4], dtype=np.int32)
    state["moves"] = np.append(state["moves"], np.uint16(0))
    # The 4th ply would hit max_moves; whatever its move, the state cannot hold it.
    with pytest.raises(ValueError, match="slot 0"):
        VecEnv(1, max_moves=4).set_state(state)


# ----------------------------------------------------------------------------- the worker


def worker_config(seed: int = 3) -> Config:
    return load_config(None, ["model.size=tiny", "env.max_moves=16", "train.games_per_worker=3",
                              "train.rollout_steps=5", f"train.seed={seed}"])


def test_worker_state_round_trip_gives_identical_batches() -> None:
    cfg = worker_config()
    worker = SelfPlayWorker(cfg, worker_id=2)
    weights = export_weights(worker.model)
    for version in range(4):  # games end (16 plies) and restart across collects
        worker.collect(weights, version)
    state = worker.get_state()
    assert 0 < state["env"]["move_counts"].max() < 16

    twin = SelfPlayWorker(cfg, worker_id=2, incarnation=77)
    twin.set_state(state)
    for version in range(4, 8):
        (s1, p1), (s2, p2) = worker.collect(weights, version), twin.collect(weights, version)
        assert p1 == p2
        assert s1.games == s2.games and s1.transitions == s2.transitions


def test_worker_state_refuses_another_worker_shape() -> None:
    worker = SelfPlayWorker(worker_config(), worker_id=0)
    state = worker.get_state()
    other = SelfPlayWorker(load_config(None, [
        "model.size=tiny", "env.max_moves=16", "train.games_per_worker=4"]), worker_id=0)
    with pytest.raises(ValueError, match="num_games is 3, this env has 4"):
        other.set_state(state)


def test_worker_state_of_an_older_version_with_held_back_rows_loads() -> None:
    # Older workers held each running game's last row back and saved it as "carry": such a
    # checkpoint still resumes (those rows are not shipped); the games continue as saved.
    cfg = worker_config()
    worker = SelfPlayWorker(cfg, worker_id=2)
    weights = export_weights(worker.model)
    worker.collect(weights, 0)
    state = {**worker.get_state(), "carry": {"has": np.ones(3, bool)}}
    twin = SelfPlayWorker(cfg, worker_id=2)
    twin.set_state(state)
    assert twin.obs.state.equals(worker.obs.state)
    assert twin.collect(weights, 1)[1] == worker.collect(weights, 1)[1]
