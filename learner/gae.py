"""Two-player generalised advantage estimation, the function the self-play workers call.

Conventions (pinned; the tests check them by exact numbers):
- A value is always for the side to move in that state, so bootstrapping across a ply negates:
  the state after my move is my opponent's to move, worth -V to me.
- A game won at step t: the winner's last transition (t) gets +1, the loser's last transition
  (t-1, same slot) gets -1, and BOTH are terminal for their own player: no bootstrap and no
  recursion past them. A draw gives 0 to both last transitions, both terminal.
  The worker therefore marks t and t-1 terminal, with rewards from each mover's view.
- A truncated game (the move cap) is not terminal: its last transition bootstraps from the
  negated value of the final state, but the recursion stops there (the slot's next row is a
  new game).
- A game still running at the end of the rollout bootstraps its last transition from the
  negated value of the state after it. (If the opponent then ends the game on its very next
  move, that -1 can no longer reach the shipped transition; a worker that wants it exactly
  holds each slot's last transition back until the next rollout.)

For a non-terminal transition t (gamma per ply, lam the GAE lambda):
    delta_t = r_t - gamma * V_next_t - V_t
    A_t     = delta_t - gamma * lam * A_{t+1}     (A_{t+1} only if t+1 continues the same game)
and for a terminal one A_t = r_t - V_t. Returns are A + V.

Against a fixed opponent (its reply folded into the transition) the next state has the same
player to move, so both minus signs become plus (`next_sign` = +1 for those rows).
"""

from __future__ import annotations

import numpy as np


def compute_gae(
    values: np.ndarray,
    rewards: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    game_over: np.ndarray,
    *,
    gamma: float,
    lam: float,
    next_sign: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (float32 [T, E]) of a rollout of T steps over E game slots.

    values[t, e]       V of the state before transition t, for its mover.
    rewards[t, e]      reward of transition t for its mover.
    next_values[t, e]  V of the state after transition t, for the side to move THERE (the
                       opponent); used only where the transition is not terminal.
    terminated[t, e]   no bootstrap and no recursion past t (the mover's game is decided).
    game_over[t, e]    the game in slot e ended at step t (any reason), so row t+1 of the slot
                       starts a new game and the recursion stops. Row T-1 always stops.
    next_sign[t, e]    -1 (the default, self-play) when the state after transition t has the
                       other player to move; +1 when the same player moves again (a game
                       against a fixed opponent whose reply is part of the transition: then
                       the bootstrap and the recursion keep their sign).
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"values must be [T, E], got shape {list(values.shape)}")
    sign = (np.full(values.shape, -1.0, dtype=np.float32) if next_sign is None
            else np.asarray(next_sign, dtype=np.float32))
    arrays = {"rewards": rewards, "next_values": next_values, "terminated": terminated,
              "game_over": game_over, "next_sign": sign}
    for name, array in arrays.items():
        if np.shape(array) != values.shape:
            raise ValueError(f"{name} has shape {list(np.shape(array))}, values "
                             f"{list(values.shape)}: they must match")
    if not (0.0 < gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got gamma={gamma!r}, "
                         f"lam={lam!r}")
    rewards = np.asarray(rewards, dtype=np.float32)
    next_values = np.asarray(next_values, dtype=np.float32)
    live = ~np.asarray(terminated, dtype=bool)  # bootstraps from the next state
    chained = live & ~np.asarray(game_over, dtype=bool)  # ... and recurses into t+1

    deltas = rewards - values + gamma * np.where(live, sign * next_values, 0.0)
    advantages = np.empty_like(values)
    carry = np.zeros(values.shape[1], dtype=np.float32)  # A_{t+1}, for the next row's mover
    for t in range(values.shape[0] - 1, -1, -1):
        carry = deltas[t] + gamma * lam * sign[t] * np.where(chained[t], carry, 0.0)
        advantages[t] = carry
    return advantages, advantages + values
