"""VecEnv: agreement with Position, determinism, auto-reset, rewards and end flags, errors."""

from __future__ import annotations

import numpy as np
import pytest

from shogi import (
    NUM_ACTIONS,
    Color,
    CompactState,
    HeuristicPlayer,
    IllegalMoveError,
    Move,
    Observation,
    Outcome,
    Position,
    StepResult,
    Termination,
    VecEnv,
    move_to_action,
)


def action_of(env: VecEnv, slot: int, usi: str) -> int:
    color = int(env.observe().state.color[slot])
    return move_to_action(Move.from_usi(usi), color)


def step_usi(env: VecEnv, usi: str) -> StepResult:
    """Play the same USI move in every game."""
    return env.step(np.array([action_of(env, i, usi) for i in range(env.num_games)]))


def assert_matches_positions(env: VecEnv) -> None:
    obs = env.observe()
    for i in range(env.num_games):
        position = env.position(i)
        assert position.compact().equals(obs.state.take([i])), f"slot {i}"
        assert np.array_equal(position.legal_actions(), obs.legal_row(i)), f"slot {i}"


def test_reset_observation() -> None:
    env = VecEnv(3)
    obs = env.reset()
    start = Position()
    assert len(obs) == 3
    assert obs.legal_offsets.dtype == np.int32 and obs.legal_actions.dtype == np.int16
    assert obs.legal_offsets.tolist() == [0, 30, 60, 90]
    for i in range(3):
        assert np.array_equal(obs.legal_row(i), start.legal_actions())
    assert obs.state.equals(CompactState.concat([start.compact()] * 3))


def test_random_play_agrees_with_position_replays() -> None:
    # Long enough for captures, drops and promotions of every kind to reach the compact state.
    env = VecEnv(6, max_moves=150, seed=3)
    finished = 0
    for step in range(320):
        if step % 16 == 0:
            assert_matches_positions(env)
        result = env.step(env.random_actions())
        for game in result.finished:
            finished += 1
            replay = Position(max_moves=150)
            for usi in game.usi_moves:
                replay.push_usi(usi)
            assert replay.outcome() == game.outcome
            assert game.plies == replay.ply == len(game.usi_moves)
            assert replay.compact().equals(game.final_state)
    assert finished >= 6


def test_csr_rows_are_sorted_and_nonempty() -> None:
    env = VecEnv(8, seed=1)
    for _ in range(60):
        obs = env.observe()
        counts = np.diff(obs.legal_offsets)
        assert (counts > 0).all() and obs.legal_offsets[-1] == len(obs.legal_actions)
        for i in range(env.num_games):
            row = obs.legal_row(i)
            assert (np.diff(row.astype(np.int32)) > 0).all()
            assert row.min() >= 0 and row.max() < NUM_ACTIONS
        env.step(env.random_actions())


def run(env: VecEnv, steps: int) -> list[tuple[Observation, StepResult]]:
    out: list[tuple[Observation, StepResult]] = []
    for _ in range(steps):
        actions = env.random_actions()
        result = env.step(actions)
        out.append((env.observe(), result))
    return out


def test_same_seed_same_everything() -> None:
    a = run(VecEnv(4, max_moves=30, seed=11), 70)
    b = run(VecEnv(4, max_moves=30, seed=11), 70)
    for (obs_a, res_a), (obs_b, res_b) in zip(a, b, strict=True):
        assert obs_a.state.equals(obs_b.state)
        assert np.array_equal(obs_a.legal_actions, obs_b.legal_actions)
        assert np.array_equal(res_a.rewards, res_b.rewards)
        assert [(f.slot, f.outcome, f.usi_moves) for f in res_a.finished] == [
            (f.slot, f.outcome, f.usi_moves) for f in res_b.finished]
    c = run(VecEnv(4, max_moves=30, seed=12), 5)
    assert not all(np.array_equal(x[0].state.board, y[0].state.board)
                   for x, y in zip(a[:5], c, strict=True))


def test_same_actions_same_results_regardless_of_seed() -> None:
    env_a, env_b = VecEnv(2, seed=1), VecEnv(2, seed=2)
    for _ in range(30):
        actions = env_a.random_actions()
        env_a.step(actions)
        env_b.step(actions)
        assert env_a.observe().state.equals(env_b.observe().state)


def test_truncation_at_max_moves_and_auto_reset() -> None:
    env = VecEnv(2, max_moves=4, seed=0)
    for _ in range(3):
        result = env.step(env.random_actions())
        assert not result.finished and not result.truncated.any()
    before = env.observe().state
    result = env.step(env.random_actions())
    assert result.truncated.tolist() == [True, True]
    assert result.terminated.tolist() == [False, False]
    assert result.rewards.tolist() == [0.0, 0.0] and result.rewards.dtype == np.float32
    assert [g.slot for g in result.finished] == [0, 1]
    for game in result.finished:
        assert game.outcome == Outcome(None, Termination.MAX_MOVES) and game.plies == 4
        assert game.final_state.ply.tolist() == [4] and game.final_state.color.tolist() == [0]
        assert len(game.usi_moves) == 4
    assert before.ply.tolist() == [3, 3]
    obs = env.observe()
    assert obs.state.equals(VecEnv(2).observe().state)  # both slots are back at the start
    assert env.position(0).ply == 0


def heuristic_mate() -> list[str]:
    for seed in range(50):
        position = Position()
        players = (HeuristicPlayer(seed), HeuristicPlayer(seed + 100))
        while not position.is_game_over():
            position.push(players[position.turn].choose(position))
        outcome = position.outcome()
        if outcome is not None and outcome.reason is Termination.CHECKMATE:
            return [str(m) for m in position.moves]
    raise AssertionError("no heuristic game ended in mate")


def test_decisive_game_rewards_the_mating_move() -> None:
    moves = heuristic_mate()
    env = VecEnv(2, max_moves=len(moves), seed=0)  # the mate comes on the last allowed ply
    for ply, usi in enumerate(moves, start=1):
        actions = np.array([action_of(env, 0, usi), env.random_actions()[1]])
        result = env.step(actions)
        if ply < len(moves):
            assert result.rewards[0] == 0 and not result.terminated[0]
    assert result.rewards[0] == 1.0
    assert result.terminated[0] and not result.truncated[0]
    game = result.finished[0]
    assert game.slot == 0 and game.usi_moves == moves and game.plies == len(moves)
    winner = Color.BLACK if len(moves) % 2 == 1 else Color.WHITE
    assert game.outcome == Outcome(winner, Termination.CHECKMATE)
    assert game.final_state.in_check.tolist() == [1]
    assert env.observe().state.ply[0] == 0


def test_sennichite_draw_ends_as_terminated_with_zero_reward() -> None:
    env = VecEnv(1)
    cycle = ["5i4h", "5a4b", "4h5i", "4b5a"] * 3
    for usi in cycle[:-1]:
        assert not step_usi(env, usi).finished
    assert env.observe().state.repetition.tolist() == [2]
    result = env.step(np.array([action_of(env, 0, cycle[-1])]))
    assert result.terminated.tolist() == [True] and result.rewards.tolist() == [0.0]
    assert result.finished[0].outcome == Outcome(None, Termination.SENNICHITE)
    assert result.finished[0].final_state.repetition.tolist() == [3]


@pytest.mark.parametrize(("sfen", "cycle", "reward"), [
    # The checker (Black) makes the move that repeats the position a 4th time: it loses it.
    ("4k4/9/9/9/4R4/9/9/9/K8 w - 1", ["5a4a", "5e4e", "4a5a", "4e5e"], -1.0),
    # White's quiet move repeats it: White, the checked side, wins with that move.
    ("5k3/9/9/9/4R4/9/9/9/K8 b - 1", ["5e4e", "4a5a", "4e5e", "5a4a"], 1.0),
])
def test_perpetual_check_rewards(sfen: str, cycle: list[str], reward: float) -> None:
    env = VecEnv(1, start_sfen=sfen)
    for usi in cycle * 3:
        result = env.step(np.array([action_of(env, 0, usi)]))
    assert result.rewards.tolist() == [reward] and result.terminated.tolist() == [True]
    assert result.finished[0].outcome == Outcome(Color.WHITE, Termination.PERPETUAL_CHECK)
    assert env.observe().state.color.tolist() == [Position(sfen).turn]


def test_impasse_declaration_in_the_env() -> None:
    sfen = "RRBB5/9/PPPP1PPPP/4K4/9/9/9/9/8k b - 1"
    env = VecEnv(1, impasse=True, start_sfen=sfen)
    env.step(np.array([action_of(env, 0, "5d5c")]))  # Black's king enters the camp
    result = env.step(np.array([action_of(env, 0, "1i1h")]))  # Black may now declare
    assert result.finished[0].outcome == Outcome(Color.BLACK, Termination.IMPASSE)
    assert result.rewards.tolist() == [-1.0]  # White's move let Black win
    plain = VecEnv(1, start_sfen=sfen)
    plain.step(np.array([action_of(plain, 0, "5d5c")]))
    assert not plain.step(np.array([action_of(plain, 0, "1i1h")])).finished


def test_illegal_action_raises_and_leaves_the_env_unchanged() -> None:
    env = VecEnv(3, seed=0)
    env.step(env.random_actions())
    obs = env.observe()
    before = (obs.state.board.copy(), obs.legal_actions.copy())
    actions = env.random_actions()
    actions[1] = 0  # 9a moving anywhere: never legal here
    with pytest.raises(IllegalMoveError, match="action 0 is not legal in game slot 1"):
        env.step(actions)
    # An index past the row must not alias the next game's actions.
    actions = env.random_actions()
    actions[0] = NUM_ACTIONS + int(env.observe().legal_row(1)[0])
    with pytest.raises(IllegalMoveError, match="game slot 0"):
        env.step(actions)
    with pytest.raises(IllegalMoveError, match="expected 3 integer actions"):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(IllegalMoveError, match="expected 3 integer actions"):
        env.step(np.zeros(3, dtype=np.float32))
    assert env.observe() is obs
    assert np.array_equal(obs.state.board, before[0]) and np.array_equal(obs.legal_actions,
                                                                         before[1])
    assert_matches_positions(env)


def test_observations_are_not_overwritten_by_later_steps() -> None:
    env = VecEnv(2, seed=0)
    first = env.observe()
    board = first.state.board.copy()
    env.step(env.random_actions())
    assert np.array_equal(first.state.board, board)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="num_games"):
        VecEnv(0)
    with pytest.raises(ValueError, match="max_moves"):
        VecEnv(1, max_moves=40_000)
    with pytest.raises(ValueError, match="already decided"):
        VecEnv(1, start_sfen="4k4/4G4/4P4/9/9/9/9/9/4K4 w - 1")
    with pytest.raises(IndexError, match="slot 5"):
        VecEnv(2).position(5)
