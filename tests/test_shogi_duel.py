"""Games against a fixed opponent: the agent is always to move, colours alternate, state."""

from __future__ import annotations

import itertools

import numpy as np

from shogi import Color, HeuristicPlayer, RandomPlayer, Termination
from shogi.duel import OpponentEnv


def random_actions(env: OpponentEnv, rng: np.random.Generator) -> np.ndarray:
    obs = env.observe()
    counts = np.diff(obs.legal_offsets)
    picks = obs.legal_offsets[:-1] + (rng.random(len(counts)) * counts).astype(int)
    return obs.legal_actions[picks]


def test_agent_always_to_move_and_colours_alternate() -> None:
    env = OpponentEnv(4, HeuristicPlayer(1), max_moves=80)
    rng = np.random.default_rng(0)
    seen: dict[int, list[Color]] = {i: [] for i in range(4)}
    assert [int(c) for c in env.observe().state.color] == [0, 1, 0, 1]
    for _ in range(300):
        colors = list(env.agent_colors)
        assert list(env.observe().state.color) == [int(c) for c in colors]
        step = env.step(random_actions(env, rng))
        for game, agent in zip(step.finished, step.agent_colors, strict=True):
            seen[game.slot].append(agent)
            result = step.rewards[game.slot]
            if game.outcome.winner is None:
                assert result == 0
            else:
                assert result == (1.0 if game.outcome.winner == agent else -1.0)
            assert step.truncated[game.slot] == (game.outcome.reason is Termination.MAX_MOVES)
            # Who is to move in the final position: the agent iff the opponent moved last.
            agent_last = game.final_state.color[0] != int(agent)
            assert step.final_agent_to_move[game.slot] == (not agent_last)
    for slot, agents in seen.items():
        assert len(agents) >= 2
        assert all(a != b for a, b in itertools.pairwise(agents)), slot


def test_heuristic_beats_random_play_mostly() -> None:
    env = OpponentEnv(8, HeuristicPlayer(2), max_moves=512)
    rng = np.random.default_rng(1)
    results = []
    while len(results) < 16:
        step = env.step(random_actions(env, rng))
        results += [step.rewards[g.slot] for g in step.finished]
    assert sum(r < 0 for r in results) > sum(r > 0 for r in results)


def test_state_round_trip_continues_identically() -> None:
    env = OpponentEnv(3, RandomPlayer(5), max_moves=60)
    rng = np.random.default_rng(2)
    for _ in range(50):
        env.step(random_actions(env, rng))
    state = env.get_state()
    twin = OpponentEnv(3, RandomPlayer(99), max_moves=60)
    twin.set_state(state)
    assert twin.observe().state.equals(env.observe().state)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(40):
        a = env.step(random_actions(env, rng_a))
        b = twin.step(random_actions(twin, rng_b))
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert twin.observe().state.equals(env.observe().state)
