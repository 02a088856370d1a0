"""Two-player GAE: sign flips, both sides' terminal rewards, truncation, rollout ends, plies.

Every expected number below is computed by hand from the docstring's formulas with
gamma = 0.9 and lambda = 0.8 (so gamma * lambda = 0.72).
"""

from __future__ import annotations

import numpy as np
import pytest

from learner.gae import compute_gae

GAMMA, LAM = 0.9, 0.8


def run(values: list[float], rewards: list[float], next_values: list[float],
        terminated: list[bool], game_over: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """One slot: lists of length T become [T, 1] columns."""
    def col(x: list[float] | list[bool]) -> np.ndarray:
        return np.asarray(x)[:, None]

    adv, ret = compute_gae(col(values), col(rewards), col(next_values), col(terminated),
                           col(game_over), gamma=GAMMA, lam=LAM)
    return adv[:, 0], ret[:, 0]


def test_win_for_the_player_who_moves_last() -> None:
    # Black t0, White t1 (loses), Black t2 mates. Both last moves terminal, +1 and -1.
    adv, ret = run(values=[0.1, 0.2, 0.3], rewards=[0, -1, 1], next_values=[0.2, 9, 9],
                   terminated=[False, True, True], game_over=[False, False, True])
    # A2 = 1 - 0.3; A1 = -1 - 0.2; delta0 = -0.9*0.2 - 0.1 = -0.28; A0 = -0.28 - 0.72*A1.
    assert adv == pytest.approx([0.584, -1.2, 0.7], abs=1e-6)
    assert ret == pytest.approx([0.684, -1.0, 1.0], abs=1e-6)


def test_loss_for_the_player_who_moves_first() -> None:
    # Black t0 then White t1 mates: Black's last move gets -1, White's +1, no bootstrap.
    adv, ret = run(values=[0.3, -0.4], rewards=[-1, 1], next_values=[9, 9],
                   terminated=[True, True], game_over=[False, True])
    assert adv == pytest.approx([-1.3, 1.4], abs=1e-6)
    assert ret == pytest.approx([-1.0, 1.0], abs=1e-6)


def test_draw_gives_zero_to_both_last_moves() -> None:
    adv, ret = run(values=[0.1, 0.2, 0.3], rewards=[0, 0, 0], next_values=[0.2, 9, 9],
                   terminated=[False, True, True], game_over=[False, False, True])
    # A2 = -0.3, A1 = -0.2, A0 = -0.28 - 0.72 * (-0.2) = -0.136.
    assert adv == pytest.approx([-0.136, -0.2, -0.3], abs=1e-6)
    assert ret == pytest.approx([-0.036, 0.0, 0.0], abs=1e-6)


def test_truncation_bootstraps_from_the_negated_final_value() -> None:
    # A game cut off after t1 for a reason that is not part of it (not the move cap, which is a
    # terminal draw): not terminal, bootstraps from -V(final) = -0.5, recursion stops.
    adv, ret = run(values=[0.1, 0.2], rewards=[0, 0], next_values=[0.2, 0.5],
                   terminated=[False, False], game_over=[False, True])
    # A1 = -0.9*0.5 - 0.2 = -0.65; A0 = (-0.18 - 0.1) - 0.72 * (-0.65) = 0.188.
    assert adv == pytest.approx([0.188, -0.65], abs=1e-6)
    assert ret == pytest.approx([0.288, -0.45], abs=1e-6)


def test_game_continuing_past_the_rollout_end_bootstraps() -> None:
    adv, ret = run(values=[0.1, 0.2], rewards=[0, 0], next_values=[0.2, 0.5],
                   terminated=[False, False], game_over=[False, False])
    assert adv == pytest.approx([0.188, -0.65], abs=1e-6)
    assert ret == pytest.approx([0.288, -0.45], abs=1e-6)


def test_two_games_back_to_back_in_one_slot() -> None:
    # Game A: Black t0, White t1 mates. Game B: Black t2, White t3, still running (next V 0.5).
    adv, _ = run(values=[0.1, 0.2, 0.3, 0.4], rewards=[-1, 1, 0, 0],
                 next_values=[9, 9, 0.4, 0.5], terminated=[True, True, False, False],
                 game_over=[False, True, False, False])
    # A3 = -0.45 - 0.4 = -0.85; A2 = (-0.36 - 0.3) - 0.72 * (-0.85) = -0.048.
    assert adv == pytest.approx([-1.1, 0.8, -0.048, -0.85], abs=1e-6)


def test_recursion_stops_at_a_truncated_game() -> None:
    # Game A truncated after t1 (bootstrap 0.5); game B starts at t2, continues (next V 0.7).
    adv, _ = run(values=[0.1, 0.2, 0.3], rewards=[0, 0, 0], next_values=[0.2, 0.5, 0.7],
                 terminated=[False, False, False], game_over=[False, True, False])
    # A2 = -0.63 - 0.3 = -0.93 must not leak into A1 = -0.65.
    assert adv == pytest.approx([0.188, -0.65, -0.93], abs=1e-6)


def test_slots_are_independent_columns() -> None:
    values = np.array([[0.1, 0.1], [0.2, 0.2]])
    rewards = np.array([[0.0, 0.0], [0.0, 0.0]])
    next_values = np.array([[0.2, 0.2], [0.5, 0.5]])
    terminated = np.zeros((2, 2), dtype=bool)
    game_over = np.array([[False, True], [True, False]])
    adv, _ = compute_gae(values, rewards, next_values, terminated, game_over,
                         gamma=GAMMA, lam=LAM)
    assert adv[:, 0] == pytest.approx([0.188, -0.65], abs=1e-6)
    # Slot 1: game over at t0, so A0 = -0.28 alone and t1 starts a new game.
    assert adv[:, 1] == pytest.approx([-0.28, -0.65], abs=1e-6)
    assert adv.dtype == np.float32


def test_lambda_zero_is_one_step_td_and_lambda_one_is_monte_carlo() -> None:
    values, rewards = [0.1, 0.2, 0.3], [0, -1, 1]
    kwargs = dict(next_values=np.array([[0.2], [9], [9]]),
                  terminated=np.array([[False], [True], [True]]),
                  game_over=np.array([[False], [False], [True]]))
    td, _ = compute_gae(np.array([values]).T, np.array([rewards]).T, gamma=0.9, lam=0.0,
                        **kwargs)
    mc, ret = compute_gae(np.array([values]).T, np.array([rewards]).T, gamma=1.0, lam=1.0,
                          **kwargs)
    assert td[0, 0] == pytest.approx(-0.28, abs=1e-6)
    # Undiscounted Monte Carlo: Black's first move is worth -(White's -1) = +1.
    assert ret[:, 0] == pytest.approx([1.0, -1.0, 1.0], abs=1e-6)
    assert mc[0, 0] == pytest.approx(0.9, abs=1e-6)


def test_bad_input_is_rejected() -> None:
    ok = np.zeros((2, 3))
    with pytest.raises(ValueError, match="rewards has shape"):
        compute_gae(ok, np.zeros((3, 2)), ok, ok, ok, gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match=r"values must be \[T, E\]"):
        compute_gae(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3),
                    gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match="gamma"):
        compute_gae(ok, ok, ok, ok, ok, gamma=0.0, lam=0.9)


def test_same_mover_rows_keep_the_sign() -> None:
    # A slot playing a fixed opponent: every row is the learner's move, the opponent's reply
    # folded in, so the next state has the learner to move again: +V and +A recursion.
    gamma, lam = 0.9, 0.8
    values = np.array([[0.1], [0.2], [0.3]], np.float32)
    rewards = np.array([[0.0], [0.0], [0.5]], np.float32)
    next_values = np.array([[0.2], [0.3], [0.7]], np.float32)
    terminated = np.zeros((3, 1), bool)
    game_over = np.zeros((3, 1), bool)
    sign = np.ones((3, 1), np.float32)
    adv, ret = compute_gae(values, rewards, next_values, terminated, game_over, gamma=gamma,
                           lam=lam, next_sign=sign)
    a2 = 0.5 + gamma * 0.7 - 0.3
    a1 = 0.0 + gamma * 0.3 - 0.2 + gamma * lam * a2
    a0 = 0.0 + gamma * 0.2 - 0.1 + gamma * lam * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-6)
    # The default sign is the self-play one.
    adv_default, _ = compute_gae(values, rewards, next_values, terminated, game_over,
                                 gamma=gamma, lam=lam)
    adv_minus, _ = compute_gae(values, rewards, next_values, terminated, game_over, gamma=gamma,
                               lam=lam, next_sign=-sign)
    np.testing.assert_array_equal(adv_default, adv_minus)


def test_two_ply_rows_discount_by_gamma_and_lambda_squared() -> None:
    # A folded row spans the learner's move and the reply: gamma^2 and lambda^2 per row.
    gamma, lam = 0.9, 0.8
    values = np.array([[0.1], [0.2]], np.float32)
    rewards = np.zeros((2, 1), np.float32)
    next_values = np.array([[0.2], [0.7]], np.float32)
    none = np.zeros((2, 1), bool)
    sign, plies = np.ones((2, 1), np.float32), np.full((2, 1), 2)
    adv, _ = compute_gae(values, rewards, next_values, none, none, gamma=gamma, lam=lam,
                         next_sign=sign, plies=plies)
    a1 = gamma**2 * 0.7 - 0.2
    a0 = gamma**2 * 0.2 - 0.1 + (gamma * lam) ** 2 * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1], rtol=1e-6)
    with pytest.raises(ValueError, match="plies must be >= 1"):
        compute_gae(values, rewards, next_values, none, none, gamma=gamma, lam=lam,
                    plies=np.zeros((2, 1)))


# ----------------------------------------------------------------------------- forward view


def lambda_returns(values: list[float], rewards: list[float], terminal: list[bool],
                   stop: list[bool], boot: list[float], sign: list[float], plies: list[int],
                   gamma: float, lam: float) -> list[float]:
    """The forward-view lambda-return of each row of one slot's rollout, computed naively.

    G_t = sum over n of w_n * G_t^(n): the n-step returns G_t^(n) (rewards discounted by
    gamma^plies and signed row by row, then the value of the row n steps on, or `boot` at a
    row that stops without being terminal, or nothing after a terminal row), weighted
    (1 - lam^k) * prod(lam^k) for the returns that bootstrap mid-game and the remaining weight
    on the longest one. O(n^2), no recursion: an independent check of compute_gae.
    """
    out = []
    size = len(values)
    for t in range(size):
        end = t
        while not (terminal[end] or stop[end] or end == size - 1):
            end += 1
        longest = end - t + 1
        total, trace = 0.0, 1.0
        for n in range(1, longest + 1):
            scale, g = 1.0, 0.0
            for i in range(n):
                g += scale * rewards[t + i]
                scale *= gamma ** plies[t + i] * sign[t + i]
            last = t + n - 1
            if n < longest:
                g += scale * values[t + n]  # the game goes on: the next row's own value
                weight = trace * (1.0 - lam ** plies[last])
            else:
                g += 0.0 if terminal[last] else scale * boot[last]
                weight = trace
            total += weight * g
            trace *= lam ** plies[last]
        out.append(total)
    return out


def random_rollouts(rng: np.random.Generator, slots: int, collects: int, steps: int
                    ) -> list[list[dict[str, list]]]:
    """Random trajectories cut into rollouts of `steps` rows: per collect, per slot, the rows'
    fields. Slots alternate between self-play (sign -1, one ply) and a folded opponent reply
    (sign +1, two plies). Games end by a decision (+1 / -1), the move cap (a draw) or, rarely,
    a non-terminal truncation that bootstraps; several games follow each other in a slot and
    run across rollout ends, where the last row bootstraps from the next rollout's first value.
    """
    per_slot = []
    for slot in range(slots):
        folded = slot % 2 == 1
        length = collects * steps
        values = rng.uniform(-1, 1, length + 1).tolist()  # distinct value per state
        rewards = [0.0] * length
        terminal, stop = [False] * length, [False] * length
        boot = rng.uniform(-1, 1, length).tolist()
        sign = [1.0 if folded else -1.0] * length
        plies = [2 if folded else 1] * length
        game_start = 0
        for t in range(length):
            if rng.random() > 0.2:
                continue
            kind = rng.choice(["decided", "cap", "truncated"], p=[0.5, 0.4, 0.1])
            if kind == "truncated":
                stop[t] = True
            else:
                result = float(rng.choice([-1.0, 1.0])) if kind == "decided" else 0.0
                rewards[t], terminal[t], stop[t] = result, True, True
                if folded and rng.random() < 0.5:
                    sign[t], plies[t] = -1.0, 1  # ended on the learner's move: no reply
                # Self-play: the other player's last move ends too, if it is in this rollout.
                if not folded and t > game_start and t % steps != 0:
                    rewards[t - 1], terminal[t - 1] = -result, True
            game_start = t + 1
        per_slot.append(dict(values=values, rewards=rewards, terminal=terminal, stop=stop,
                             boot=boot, sign=sign, plies=plies))
    rollouts = []
    for c in range(collects):
        part = slice(c * steps, (c + 1) * steps)
        rollout = []
        for data in per_slot:
            rows = {key: data[key][part] for key in ("rewards", "terminal", "stop", "sign",
                                                    "plies")}
            rows["values"] = data["values"][part]
            # The rollout's last row bootstraps from the next rollout's first state, unless a
            # truncation set its own bootstrap.
            rows["boot"] = [b if s else np.nan for b, s in zip(data["boot"][part],
                                                               rows["stop"], strict=True)]
            if not rows["stop"][-1]:
                rows["boot"][-1] = data["values"][(c + 1) * steps]
            rollout.append(rows)
        rollouts.append(rollout)
    return rollouts


@pytest.mark.parametrize("seed", range(6))
def test_gae_matches_the_forward_view_lambda_return(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gamma, lam = float(rng.choice([0.9, 0.99, 1.0])), float(rng.choice([0.0, 0.8, 0.95, 1.0]))
    steps = 12
    for rollout in random_rollouts(rng, slots=4, collects=3, steps=steps):
        def column(key: str, rollout: list[dict[str, list]] = rollout) -> np.ndarray:
            return np.array([slot[key] for slot in rollout]).T

        values = column("values")
        next_values = np.empty_like(values)
        next_values[:-1] = values[1:]  # what the game's next row is worth
        next_values[-1] = column("boot")[-1]
        stop = column("stop")
        next_values = np.where(stop & ~column("terminal"), column("boot"), next_values)
        adv, ret = compute_gae(values, column("rewards"), next_values, column("terminal"), stop,
                               gamma=gamma, lam=lam, next_sign=column("sign"),
                               plies=column("plies"))
        for e, slot in enumerate(rollout):
            expected = lambda_returns(slot["values"], slot["rewards"], slot["terminal"],
                                      slot["stop"], slot["boot"], slot["sign"], slot["plies"],
                                      gamma, lam)
            np.testing.assert_allclose(ret[:, e], expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(adv[:, e], np.array(expected) - values[:, e],
                                       rtol=1e-4, atol=1e-5)
