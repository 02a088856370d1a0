"""Two-player generalised advantage estimation, the function the self-play workers call.

Conventions (pinned; the tests check them by exact numbers and against a forward-view
lambda-return computed independently):
- A value is always for the side to move in that state, so bootstrapping across a ply negates:
  the state after my move is my opponent's to move, worth -V to me.
- A game won at step t: the winner's last transition (t) gets +1, the loser's last transition
  (t-1, same slot) gets -1, and BOTH are terminal for their own player: no bootstrap and no
  recursion past them. A draw gives 0 to both last transitions, both terminal. The move cap is
  such a draw: the ply is in the observation, so the cap is part of the game and a terminal
  (DESIGN.md; Pardo et al. 2018, "Time limits in reinforcement learning").
  The worker therefore marks t and t-1 terminal, with rewards from each mover's view.
- A game still running at the end of the rollout bootstraps its last transition from the
  negated value of the state after it (truncation by the rollout, not by the game).
- gamma and lambda are per ply. A transition that spans k plies (a learner move whose
  opponent reply is folded in spans 2) discounts by gamma^k and decays the trace by lambda^k,
  so one value head learns one meaning of "N plies from now".

For a non-terminal transition t spanning k_t plies:
    delta_t = r_t + gamma^k_t * s_t * V_next_t - V_t
    A_t     = delta_t + (gamma * lam)^k_t * s_t * A_{t+1}  (A_{t+1} only if t+1 continues the game)
and for a terminal one A_t = r_t - V_t. Returns are A + V. s_t is -1 when the next state has
the other player to move (self-play), +1 when the same player moves again (against a fixed
opponent or a league member, whose reply is part of the transition).
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
    plies: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (float32 [T, E]) of a rollout of T steps over E game slots.

    values[t, e]       V of the state before transition t, for its mover.
    rewards[t, e]      reward of transition t for its mover.
    next_values[t, e]  V of the state after transition t, for the side to move THERE; used
                       only where the transition is not terminal.
    terminated[t, e]   no bootstrap and no recursion past t (the mover's game is decided).
    game_over[t, e]    the game in slot e ended at step t, so row t+1 of the slot starts a new
                       game and the recursion stops (a non-terminal row marked so bootstraps
                       from next_values alone). Row T-1 always stops.
    next_sign[t, e]    -1 (the default, self-play) when the state after transition t has the
                       other player to move; +1 when the same player moves again.
    plies[t, e]        plies transition t spans (default 1): gamma and lam apply per ply.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"values must be [T, E], got shape {list(values.shape)}")
    sign = (np.full(values.shape, -1.0, dtype=np.float32) if next_sign is None
            else np.asarray(next_sign, dtype=np.float32))
    span = (np.ones(values.shape, dtype=np.float32) if plies is None
            else np.asarray(plies, dtype=np.float32))
    arrays = {"rewards": rewards, "next_values": next_values, "terminated": terminated,
              "game_over": game_over, "next_sign": sign, "plies": span}
    for name, array in arrays.items():
        if np.shape(array) != values.shape:
            raise ValueError(f"{name} has shape {list(np.shape(array))}, values "
                             f"{list(values.shape)}: they must match")
    if not (0.0 < gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got gamma={gamma!r}, "
                         f"lam={lam!r}")
    if span.size and span.min() < 1:
        raise ValueError(f"plies must be >= 1, got {span.min()!r}")
    rewards = np.asarray(rewards, dtype=np.float32)
    next_values = np.asarray(next_values, dtype=np.float32)
    live = ~np.asarray(terminated, dtype=bool)  # bootstraps from the next state
    chained = live & ~np.asarray(game_over, dtype=bool)  # ... and recurses into t+1
    discount = np.float32(gamma) ** span
    decay = np.float32(gamma * lam) ** span * sign

    deltas = rewards - values + discount * np.where(live, sign * next_values, 0.0)
    advantages = np.empty_like(values)
    carry = np.zeros(values.shape[1], dtype=np.float32)  # A_{t+1}, for the next row's mover
    for t in range(values.shape[0] - 1, -1, -1):
        carry = deltas[t] + decay[t] * np.where(chained[t], carry, 0.0)
        advantages[t] = carry
    return advantages, (advantages + values).astype(np.float32)
