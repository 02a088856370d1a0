"""Players: who chooses the moves of a match, one batch of positions at a time.

Scripted players (`random`, `heuristic`, `mate`), a network (`PolicyPlayer`: one batched
forward over every game in which it is its turn, or with `search.simulations` > 0 a tree search
over all those games at once, `actors.search`) and external USI engines (`EnginePlayer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from actors.search import SearchResult, TreeSearch
from keisei_ray.config import ModelConfig, SearchConfig
from learner.features import encode_planes, legal_mask, to_tensors
from learner.model import ModelSpec, build_model, choose_actions, load_weights
from shogi import (
    CompactState,
    HeuristicPlayer,
    MixedPlayer,
    Move,
    Outcome,
    Position,
    RandomPlayer,
    action_to_move,
)
from shogi.tactics import MatePlayer

BASELINES = ("random", "heuristic")
"""Opponents that need no model (the ladder plays both)."""
MIXES = {"mix10": 0.10, "mix20": 0.20, "mix30": 0.30, "mix40": 0.40}
"""Mixtures (`shogi.players.MixedPlayer`): the heuristic's move on that share of moves, else a
random one; the gauntlet's rungs between random and the rest."""
SCRIPTED = ("random", "heuristic", "mate", *MIXES)
"""Every scripted player: the baselines, `mate` (`shogi.tactics.MatePlayer`), the mixtures."""


class Player(Protocol):
    """Chooses one legal move for each position of a batch (none of them finished), or the
    Outcome that ends a game there (only engines do: resignation, crash, illegal answer)."""

    name: str

    def choose(self, positions: Sequence[Position]) -> Sequence[Move | Outcome]: ...


class BaselinePlayer:
    """`random`, `heuristic`, a mixture such as `mix20` (see `shogi.players`) or `mate`
    (`shogi.tactics`), one move per position."""

    def __init__(self, kind: str, seed: int = 0, name: str | None = None) -> None:
        self._player: RandomPlayer | HeuristicPlayer | MatePlayer | MixedPlayer
        if kind == "random":
            self._player = RandomPlayer(seed)
        elif kind in MIXES:
            self._player = MixedPlayer(MIXES[kind], seed)
        elif kind == "heuristic":
            self._player = HeuristicPlayer(seed)
        elif kind == "mate":
            self._player = MatePlayer(seed)
        else:
            raise ValueError(f"unknown scripted player {kind!r} (expected one of {SCRIPTED})")
        self.kind = kind
        self.name = name or kind

    def choose(self, positions: Sequence[Position]) -> list[Move]:
        return [self._player.choose(p) for p in positions]


@dataclass(frozen=True)
class Decision:
    """A network player's choices for a batch, with its value estimates (side to move)."""

    moves: list[Move]
    values: np.ndarray  # float32 [N], in [-1, 1]
    probabilities: np.ndarray  # float32 [N]: each chosen move's probability (greedy: at
    # temperature 1; sampled: under the sampling temperature; searched: the improved policy's)
    searches: list[SearchResult] | None = None  # a searching player's results, per position


class PolicyPlayer:
    """A policy-value network choosing by argmax or by sampling, over a batch of positions.

    With `greedy`, positions in the first `sample_plies` plies of their game are still sampled
    (at `temperature`), so that two greedy networks do not replay one game over and over.
    With `avoid_repetition`, once the position on the board has occurred before, moves back
    into any earlier position are left out while another move exists: a deterministic player
    otherwise walks the same cycle into a draw by repetition (or loses by perpetual check).
    `max_moves` scales the ply plane exactly as in training.

    With `search` settings of simulations > 0 the player searches (`actors.search.TreeSearch`,
    every game of the batch in one search) instead: deterministic, except in the sampled
    opening plies, where the search samples (Gumbel noise at a Gumbel root, visit counts at a
    PUCT root); `temperature` and `avoid_repetition` are the raw policy's (the search judges
    repetitions by the game's rules itself).
    """

    def __init__(self, name: str, model: nn.Module, max_moves: int, *, greedy: bool = True,
                 temperature: float = 1.0, sample_plies: int = 0, seed: int = 0,
                 avoid_repetition: bool = False, search: SearchConfig | None = None) -> None:
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if max_moves < 1:
            raise ValueError(f"max_moves must be >= 1, got {max_moves!r}")
        self.name = name
        self.model = model.eval()
        self.max_moves = max_moves
        self.greedy = greedy
        self.temperature = temperature
        self.sample_plies = sample_plies
        self.avoid_repetition = avoid_repetition
        # The input layout the network was built for (model.attack_planes); stand-in modules
        # without a spec take DESIGN.md's 46 planes.
        spec = getattr(model, "spec", None)
        self.attack_planes = bool(spec.attack_planes) if isinstance(spec, ModelSpec) else False
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.search = search if search is not None and search.simulations > 0 else None
        self._searcher: TreeSearch | None = None

    @property
    def searcher(self) -> TreeSearch:
        """The player's tree search (built on first use; its trees persist across calls)."""
        if self._searcher is None:
            device = next(iter(self.model.parameters()), torch.zeros(0)).device
            self._searcher = TreeSearch(self.model, self.search or SearchConfig(),
                                        device=device, seed=self.seed,
                                        max_moves=self.max_moves)
        return self._searcher

    @classmethod
    def from_weights(cls, name: str, config: ModelConfig, weights: Mapping[str, np.ndarray],
                     max_moves: int, *, value_material: float = 0.0,
                     **kwargs: Any) -> PolicyPlayer:
        model = build_model(config)
        load_weights(model, weights)
        model.value_material = value_material
        return cls(name, model, max_moves, **kwargs)

    def choose(self, positions: Sequence[Position]) -> list[Move]:
        return self.decide(positions).moves

    def decide(self, positions: Sequence[Position]) -> Decision:
        if self.search is not None:
            return self._search(positions)
        return self._policy(positions)

    def _search(self, positions: Sequence[Position]) -> Decision:
        if not positions or any(p.outcome() is not None for p in positions):
            raise ValueError("every position given to a player must have a legal move")
        sample = [not self.greedy or p.ply < self.sample_plies for p in positions]
        results = self.searcher.search_many(positions, sample=sample)
        return Decision([Move.from_usi(r.move) for r in results],
                        np.array([r.value for r in results], dtype=np.float32),
                        np.array([r.improved_policy.get(r.move, 1.0) for r in results],
                                 dtype=np.float32), results)

    @torch.inference_mode()
    def _policy(self, positions: Sequence[Position]) -> Decision:
        n = len(positions)
        state = CompactState.concat([p.compact() for p in positions])
        rows = [p.legal_actions() for p in positions]
        counts = np.array([len(r) for r in rows])
        if n == 0 or counts.min() == 0:
            raise ValueError("every position given to a player must have a legal move")
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        planes = encode_planes(to_tensors(state), self.max_moves, self.attack_planes)
        mask = legal_mask(offsets, np.concatenate(rows), n)
        if self.avoid_repetition:
            for i, position in enumerate(positions):
                if position.repetition_count() > 0:
                    repeating = position.repeating_actions()
                    if len(repeating) < counts[i]:
                        mask[i, torch.from_numpy(repeating.astype(np.int64))] = False
        logits, values = self.model(planes)
        plies = torch.as_tensor(state.ply.astype(np.int64))
        sampled = plies < self.sample_plies if self.greedy else torch.ones(n, dtype=torch.bool)
        actions = torch.empty(n, dtype=torch.long)
        log_probs = torch.empty(n)
        for which, greedy in ((~sampled, True), (sampled, False)):
            if which.any():
                actions[which], log_probs[which] = choose_actions(
                    logits[which], mask[which], greedy=greedy, temperature=self.temperature,
                    generator=self.generator)
        moves = [action_to_move(int(a), p.turn) for a, p in zip(actions.tolist(), positions,
                                                               strict=True)]
        return Decision(moves, values.float().numpy().copy(), log_probs.exp().numpy())


