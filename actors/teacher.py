"""Search as a teacher in self-play (issue 24; docs/learning.md, "Search as a teacher").

With `train.search.simulations` > 0, `SearchTeacher` chooses the moves of a worker's self-play
games with the Gumbel tree search (`TreeSearch.search_many`: every game at once, one forward
per step for all trees) and gives, per move, what the experience batch ships:

- **the move played**, a sample from the search's improved policy pi' = softmax(logits +
  sigma(completed Q)) (Danihelka et al. 2022), drawn with the teacher's own generator, and its
  behaviour log-prob log pi'(a). The PPO ratio stays exact: given the search's outcome (its
  Gumbel draws, visits and values: everything that fixed pi' before the move was drawn), the
  move was drawn from pi' and from nothing else, so pi_theta(a) / pi'(a) is the importance
  ratio of that draw. The search's randomness is extra state of the behaviour policy that the
  learner's policy ignores: E over a ~ pi'[pi_theta(a) / pi'(a) f(a)] = E over a ~ pi_theta
  [f(a)] for every outcome of the search, hence for their mixture too. (The paper's own move,
  the argmax of g + logits + sigma(q) among the most visited, has a probability nobody can
  compute; pi' is what that choice approximates.) pi' is positive on every legal move (a
  softmax), except after a forced mate found before the search, played with probability 1.
- **the distillation target** pi', sparsely (the codec's layout, keisei_ray/codec.py): the
  probabilities of the visited root moves and the mass of the others (pi' is the prior times
  one constant on every unvisited move: their completed Q is the same mixed value), for the
  moves that got the full search (playout-cap randomization, KataGo: each move gets the
  full search with probability `full_search_share`, else the cheap search of
  `cheap_simulations`, which also picks the move, from its own pi', but ships no target; a
  cheap search of 0 simulations is the raw policy: pi' is then the network's own policy);
- **the search value** sum_a pi'(a) completed Q(a), for the side to move (`ppo.search_value_mix`).

The search's settings are `search.*` (c_puct, fpu, sigma's constants, leaves per forward, mate
search, tree reuse), with a Gumbel root always (pi' is its completed-Q policy), m =
`train.search.gumbel_moves` and no time limit (a move must not depend on the clock).
Only the self-play games search: the games against the fixed opponent and league members keep
the raw policy (their rows carry no target).

The teacher mirrors each self-play game as a `Position` (the search judges repetitions against
the game's real history), pushing the moves played and starting anew where the env restarted a
finished game. Resume is exact: the kept trees are dropped at the end of every collect (the
next collect plays new weights anyway), so the state between collects is the two generators,
which `get_state` saves with the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from actors.search import TreeSearch
from keisei_ray.config import Config
from shogi import Observation, Position, VecEnv, material_balance
from shogi.actions import MOVE16_TO_ACTION
from shogi.moves import MOVE16_MASK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherStep:
    """The teacher's choice for the first n rows of an observation (its self-play games)."""

    actions: np.ndarray  # int16 [n]: the moves played (actions, the mover's view)
    log_probs: np.ndarray  # float32 [n]: log pi'(action), the behaviour log-prob
    has_target: np.ndarray  # bool [n]: the row got the full search and ships pi'
    index: list[np.ndarray]  # per row: positions of the visited moves in its legal actions
    probs: list[np.ndarray]  # per row: their pi' (both empty without a target)
    rest: np.ndarray  # float32 [n]: pi' of the unvisited moves together (0 without a target)
    values: np.ndarray  # float32 [n]: sum_a pi'(a) completed Q(a), for the side to move


def sparse_target(legal: np.ndarray, actions: np.ndarray, policy: np.ndarray,
                  visits: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """pi' of a root (`policy` over `actions`, with their `visits`) as the codec ships it:
    (positions of the visited moves in the row's sorted `legal` actions, ascending; their
    probabilities; the unvisited moves' mass). RuntimeError when an action is not legal
    there (the teacher's game is not the env's)."""
    where = np.searchsorted(legal, actions)
    if len(actions) and (where.max() >= len(legal) or np.any(legal[where] != actions)):
        raise RuntimeError("teacher: the searched moves are not the observation's legal actions "
                           "(its game and the env's differ)")
    visited = visits > 0
    order = np.argsort(where[visited])
    return (where[visited][order].astype(np.uint16), policy[visited][order],
            float(policy[~visited].sum()))


class SearchTeacher:
    """Chooses the moves of `num_games` self-play games with the search (see the module)."""

    def __init__(self, config: Config, model: nn.Module, env: VecEnv, seed: int) -> None:
        teach = config.train.search
        if teach.simulations < 1:
            raise ValueError("SearchTeacher needs train.search.simulations >= 1")
        self.config = teach
        settings = config.search.model_copy(update={
            "simulations": teach.simulations, "gumbel": True,
            "gumbel_moves": teach.gumbel_moves, "time_per_move_s": 0.0})
        search_seed, own_seed = np.random.SeedSequence([seed, 24]).generate_state(2)
        self.search = TreeSearch(model, settings, seed=int(search_seed),
                                 max_moves=config.env.max_moves)
        self.rng = np.random.default_rng(int(own_seed))
        self.positions: list[Position] = []
        self.sync(env)

    def shaping(self, coefficient: float) -> None:
        """The material shaping in force this collect (its value head learns returns that count
        it): the search adds it back (TreeSearch.value_material), and the search values this
        teacher reports are taken back to the network's scale."""
        self.search.value_material = coefficient

    def sync(self, env: VecEnv) -> None:
        """Mirror every game of `env` (replayed: O(plies); at the start and on resume)."""
        self.positions = [env.position(slot) for slot in range(env.num_games)]
        self.search.reset()

    # ------------------------------------------------------------------ one ply

    def choose(self, obs: Observation) -> TeacherStep:
        """Search the self-play games (the first len(positions) rows of `obs`) at once and
        sample each move from its search's improved policy."""
        n = len(self.positions)
        teach = self.config
        full = self.rng.random(n) < teach.full_search_share
        budgets = np.where(full, teach.simulations, teach.cheap_simulations)
        results = self.search.search_many(self.positions, simulations=budgets.tolist(),
                                          sample=[True] * n)
        offsets = obs.legal_offsets
        empty_index, empty_probs = np.zeros(0, np.uint16), np.zeros(0, np.float64)
        index, probs = [empty_index] * n, [empty_probs] * n
        rest = np.zeros(n, np.float32)
        actions = np.zeros(n, np.int16)
        log_probs = np.zeros(n, np.float32)
        values = np.zeros(n, np.float32)
        draws = self.rng.random(n)
        # The search values count the balance already on the board; the value head's do not.
        balance = self.search.value_material * material_balance(obs.state)
        for i, result in enumerate(results):
            turn = int(obs.state.color[i])
            moves = np.asarray(result.root_moves, dtype=np.int64)
            acts = MOVE16_TO_ACTION[turn, moves & MOVE16_MASK].astype(np.int64)
            policy = result.root_policy
            # Inverse CDF: an entry of probability 0 is never drawn.
            cumulative = np.cumsum(policy)
            k = min(int(np.searchsorted(cumulative, draws[i] * cumulative[-1], side="right")),
                    len(policy) - 1)
            actions[i] = acts[k]
            log_probs[i] = np.log(policy[k] / cumulative[-1])
            values[i] = result.policy_value - balance[i]
            if full[i]:
                legal = obs.legal_actions[int(offsets[i]):int(offsets[i + 1])]
                index[i], probs[i], rest[i] = sparse_target(
                    legal, acts, policy / cumulative[-1], result.root_visits)
        return TeacherStep(actions, log_probs, full, index, probs, rest, values)

    def advance(self, actions: Sequence[int] | np.ndarray, restarted: set[int]) -> None:
        """The moves played in the self-play games; `restarted`: the slots whose game ended
        (the env restarted them from its start position)."""
        for slot, (position, action) in enumerate(zip(self.positions, actions, strict=True)):
            if slot in restarted:
                self.positions[slot] = Position(position.start_sfen,
                                                max_moves=position.max_moves,
                                                impasse=position.impasse)
            else:
                position.push_action(int(action))

    def end_collect(self) -> None:
        """Drop the kept trees: the next collect searches with new weights, and a resumed
        worker (which has none) must search exactly as this one."""
        self.search.reset()

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        return {"settings": self.config.model_dump(), "rng": self.rng.bit_generator.state,
                "search_rng": self.search.rng.bit_generator.state}

    def set_state(self, state: Mapping[str, Any], env: VecEnv) -> None:
        """Restore `get_state`'s generators and mirror `env`'s (restored) games."""
        rng, search_rng = np.random.default_rng(), np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng"])
            search_rng.bit_generator.state = dict(state["search_rng"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"teacher state: bad generator state ({exc})") from None
        if state.get("settings") != self.config.model_dump():
            log.warning("train.search changed since the state was saved (%s -> %s): the "
                        "search continues with the new settings", state.get("settings"),
                        self.config.model_dump())
        self.rng = rng
        self.search.rng = search_rng
        self.sync(env)
