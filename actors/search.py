"""Tree search over the policy-value network at play time (docs/search.md).

`TreeSearch` searches one position (`search`: the USI engine) or many at once (`search_many`:
every game of a match): each step gathers leaves from every tree (several per tree, kept apart
by virtual loss), evaluates them in ONE batched forward (the same features and network as the
players and self-play), and backs the values up. Selection is PUCT (AlphaZero) with first-play
urgency and no exploration noise; with `search.gumbel` the root samples m moves by Gumbel-top-k
and spends the budget on them by sequential halving, and the move and the improved policy come
from the completed Q-values (Danihelka et al. 2022). Terminal nodes get the game's own value
(`shogi.rules.judge` on the game's history plus the path: checkmate, no legal move, sennichite
and perpetual check at the 4th occurrence, impasse when on, the move cap); a leaf whose side to
move mates in one is won. Before searching, a forced mate found by cshogi's mate search is
played at once. Between the moves of a game the subtree of the moves played is kept.

Play is deterministic unless a position is marked to be sampled (a player's opening plies):
then the Gumbel root draws its Gumbel noise (the move is a sample from the improved policy, as
in the paper), and a PUCT root samples in proportion to the visits.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
from torch import nn

from actors.tree import (
    GumbelRoot,
    Node,
    add_virtual_loss,
    backup,
    completed_q,
    improved_policy,
    puct_select,
    revert_virtual_loss,
)
from keisei_ray.config import EnvConfig, SearchConfig
from learner.features import encode_planes, to_tensors
from learner.model import ModelSpec
from shogi import NUM_ACTIONS, Move, Position, material_balance
from shogi.actions import MOVE16_TO_ACTION
from shogi.moves import MOVE16_MASK
from shogi.search_board import SearchBoard, StateRow, compact_rows
from shogi.tactics import forced_mate


@dataclass
class SearchResult:
    """What a search found for the side to move (USI moves throughout)."""

    move: str  # the move chosen, e.g. "7g7f"
    value: float  # its value for the side to move, in [-1, 1] (plus the shaping's prize:
    # TreeSearch.value_material)
    visits: dict[str, int] = field(default_factory=dict)  # root visits per move (> 0 only)
    improved_policy: dict[str, float] = field(default_factory=dict)  # completed-Q softmax
    # (Gumbel) or normalised visits (PUCT), over every legal move
    pv: list[str] = field(default_factory=list)  # principal variation
    nodes: int = 0  # simulations of this search (leaf evaluations and terminal visits)
    depth: int = 0  # length of the principal variation
    seldepth: int = 0  # deepest ply reached
    mate: bool = False  # played by the mate search, before any simulation
    evaluations: int = 0  # positions the network evaluated (the root included)
    seconds: float = 0.0
    # The same improved policy as arrays (search as a teacher, actors/teacher.py): the root's
    # cshogi moves, their probabilities and visits (kept subtrees' included), and the policy's
    # value sum_a policy(a) * completed Q(a) for the side to move (the network's value before
    # any simulation; 1 for a mate played: then the one move, visited once).
    root_moves: list[int] = field(default_factory=list)
    root_policy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    root_visits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    policy_value: float = 0.0


@dataclass(slots=True)
class _Leaf:
    """A position gathered for the next forward: its tree, the path to it, its node (whose
    moves are the legal moves) and the raw state."""

    tree: _Tree
    path: list[tuple[Node, int]]
    node: Node
    row: StateRow


_COLLISION = object()  # a walk that reached a leaf already waiting for the network


class _Tree:
    """One position's search in progress."""

    def __init__(self, position: Position, root: Node, settings: SearchConfig, budget: int,
                 sampled: bool, gumbel_noise: np.ndarray, value_material: float = 0.0) -> None:
        self.position = position
        self.value_material = value_material  # TreeSearch.value_material
        self.board = SearchBoard(position)
        self.root = root
        self.settings = settings
        self.budget = budget
        self.sampled = sampled
        self.noise = gumbel_noise  # Gumbel(0, 1) per root move when sampled, else zeros
        self.sims = 0
        self.inflight = 0
        self.seldepth = 0
        self.gumbel: GumbelRoot | None = None
        self.mate: Move | None = None

    @property
    def done(self) -> bool:
        # A single legal move is searched too: its value is reported, its subtree kept.
        return self.mate is not None or (self.root.expanded and self.sims >= self.budget)

    def root_leaf(self) -> _Leaf | None:
        """The root's own evaluation, when the root is new."""
        if not self.root.pending or self.mate is not None:
            return None
        board = self.board
        return _Leaf(self, [], self.root, board.row())

    def start_gumbel(self) -> None:
        s = self.settings
        if s.gumbel and self.gumbel is None and self.root.expanded:
            self.gumbel = GumbelRoot(self.root, s.gumbel_moves, self.budget, self.noise,
                                     s.gumbel_c_visit, s.gumbel_c_scale)

    def gather(self, limit: int, out: list[_Leaf]) -> None:
        """Walk down up to `limit` times; leaves for the network go to `out`, terminal ones are
        backed up at once. Stops early at a collision or when the budget is spent."""
        if not self.root.expanded:
            return
        self.start_gumbel()
        taken = walks = 0
        # Walks that end in terminal nodes need no forward; bounding them lets the caller
        # look at its clock and stop event between gathers even in a solved position.
        while taken < limit and walks < 4 * limit and self.sims + self.inflight < self.budget:
            walks += 1
            leaf = self._walk()
            if leaf is _COLLISION:
                return
            if isinstance(leaf, _Leaf):
                out.append(leaf)
                self.inflight += 1
                taken += 1

    def _walk(self) -> _Leaf | object | None:
        s = self.settings
        board = self.board
        node = self.root
        path: list[tuple[Node, int]] = []
        gumbel = self.gumbel
        try:
            while True:
                if gumbel is not None and node is self.root:
                    a = gumbel.select()
                else:
                    a = puct_select(node, s.c_puct, s.fpu_reduction)
                    add_virtual_loss(node, a)
                path.append((node, a))
                board.push(node.moves[a])
                child = node.children[a]
                if child is None:
                    child = node.children[a] = self._new_node()
                    if child.pending:
                        self.seldepth = max(self.seldepth, len(path))
                        return _Leaf(self, path, child, board.row())
                if child.terminal is not None:
                    self.seldepth = max(self.seldepth, len(path))
                    backup(path, child, child.terminal, gumbel is None)
                    self.sims += 1
                    return None
                if child.pending:  # waiting for this forward already: undo the walk
                    for i, (n, b) in enumerate(path):
                        if i == 0 and gumbel is not None:
                            gumbel.unselect(b)
                        else:
                            revert_virtual_loss(n, b)
                    return _COLLISION
                node = child
        finally:
            for _ in path:
                board.pop()

    def _new_node(self) -> Node:
        """The node of the board's position, judged by the game's rules."""
        board = self.board
        moves = board.legal_moves()
        outcome = board.outcome(len(moves))
        if outcome is not None:
            if outcome.winner is None:
                return Node(terminal=self._with_material(0.0))
            won = int(outcome.winner) == board.turn
            return Node(terminal=self._with_material(1.0 if won else -1.0))
        if self.settings.mate_leaves and board.winning_mate_in_one():
            return Node(terminal=self._with_material(1.0))
        return Node(moves)

    def _with_material(self, result: float) -> float:
        """A terminal's value on the scale of the network's (TreeSearch.value_material): the
        result plus the shaping's prize for the final balance, for the side to move."""
        if not self.value_material:
            return result
        return result + self.value_material * float(
            material_balance(compact_rows([self.board.row()]))[0])

    def finish(self, leaf: _Leaf, log_prior: np.ndarray, value: float) -> None:
        leaf.node.expand(log_prior, value)
        if leaf.path:
            backup(leaf.path, leaf.node, value, self.gumbel is None)
            self.sims += 1
            self.inflight -= 1
        else:
            leaf.node.visits += 1
            leaf.node.value_sum += value

    # ------------------------------------------------------------------ answers

    def best(self, rng: np.random.Generator) -> int:
        root = self.root
        root.grow()
        if self.gumbel is not None:
            return self.gumbel.best()
        if len(root.moves) == 1:
            return 0
        if root.total == 0 or self.settings.gumbel:  # no simulation: the policy itself
            if self.sampled and not self.settings.gumbel:
                return int(rng.choice(len(root.moves), p=root.prior / root.prior.sum()))
            return int(np.argmax(self.noise + root.logits))  # Gumbel-max: a sample if noisy
        if self.sampled:  # in proportion to the visits
            return int(rng.choice(len(root.moves), p=root.N / root.N.sum()))
        # Most visits; ties: the better Q, then the higher prior.
        return int(np.lexsort((-root.prior, -root.q(), -root.N))[0])

    def result(self, rng: np.random.Generator, started: float, evaluations: int
               ) -> SearchResult:
        if self.mate is not None:
            usi = self.mate.usi()
            return SearchResult(usi, 1.0, {}, {usi: 1.0}, [usi], 0, 1, 1, True, 0,
                                time.perf_counter() - started, [self.mate.cshogi_move],
                                np.ones(1), np.ones(1, dtype=np.int64), 1.0)
        root = self.root
        s = self.settings
        a = self.best(rng)  # (grows the root's statistics)
        names = SearchBoard.usi(root.moves)
        if s.gumbel:
            policy = improved_policy(root, s.gumbel_c_visit, s.gumbel_c_scale)
            policy_value = float(policy @ completed_q(root))
        else:
            policy = root.N / root.total if root.total > 0 else root.prior
            policy_value = float(policy @ root.q()) if root.total > 0 else root.value()
        value = float(root.W[a] / root.N[a]) if root.N[a] > 0 else root.value()
        pv = [names[a]]
        node = root.children[a]
        while node is not None and node.expanded and node.total > 0:
            b = int(np.argmax(node.N))
            pv.append(SearchBoard.usi([node.moves[b]])[0])
            node = node.children[b]
        return SearchResult(
            names[a], value, {names[i]: int(n) for i, n in enumerate(root.N) if n > 0},
            {names[i]: float(p) for i, p in enumerate(policy)}, pv, self.sims, len(pv),
            max(self.seldepth, len(pv)), False, evaluations, time.perf_counter() - started,
            list(root.moves), policy, root.N.copy(), policy_value)


class TreeSearch:
    """Searches positions with one network (see the module docstring).

    `max_moves` scales the network's ply plane as in training (the player's; None: the
    position's own cap, else `env.max_moves`'s default); the game's cap itself is the
    position's. Trees are kept between calls (`search.reuse_tree`) for the positions that
    follow from them by up to two moves.
    """

    def __init__(self, model: nn.Module, settings: SearchConfig, *, device: str | torch.device
                 = "cpu", seed: int = 0, max_moves: int | None = None) -> None:
        self.model = model.eval()
        self.settings = settings
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.max_moves = max_moves
        # A network trained with material shaping C (learner.model.PolicyValueNet) values a
        # position at E[result] + C * (E[final balance] - its balance): the balance already
        # gained is missing, so a capture would look worse to the search by exactly what it
        # won. Leaves get C * their balance back, terminals the result plus C * the final one.
        self.value_material = float(getattr(model, "value_material", 0.0))
        spec = getattr(model, "spec", None)
        self.attack_planes = bool(spec.attack_planes) if isinstance(spec, ModelSpec) else False
        self._kept: dict[tuple[str, tuple[int, ...]], tuple[Node, int]] = {}
        self._call = 0
        self.evaluations = 0  # positions evaluated by the network, over the searcher's life
        self.forwards = 0
        self.network_seconds = 0.0  # in features + forward (the rest is the tree's own work)
        self.network_cpu_seconds = 0.0  # the same in CPU time of this process

    def reset(self) -> None:
        """Forget every kept tree (a new game)."""
        self._kept.clear()

    def advance(self, usi_move: str) -> None:
        """Tree reuse for one game (USI): the kept tree of the last search moves its root to
        the child of `usi_move`. Without one kept tree this does nothing; `search` also finds
        its tree by itself, from the position's moves."""
        if len(self._kept) != 1:
            return
        (key, (root, call)), = self._kept.items()
        self._kept.clear()
        child = _child(root, Move.from_usi(usi_move).move16)
        if child is not None:
            played = int(child[1])
            self._kept[(key[0], (*key[1], played))] = (child[0], call)

    # ------------------------------------------------------------------ searching

    def search(self, position: Position, *, simulations: int | None = None,
               deadline: float | None = None, stop: threading.Event | None = None,
               on_info: Callable[[SearchResult], None] | None = None,
               info_interval_s: float = 0.5, sample: bool = False) -> SearchResult:
        """Search one position: several leaves per forward (virtual loss); stops at the
        simulation budget, at `deadline` (time.monotonic()) or when `stop` is set, with the
        best move so far. `on_info` gets the current best every `info_interval_s`."""
        return self.search_many([position], simulations=simulations, deadline=deadline,
                                stop=stop, on_info=on_info, info_interval_s=info_interval_s,
                                sample=[sample])[0]

    def search_many(self, positions: Sequence[Position], *,
                    simulations: int | Sequence[int] | None = None,
                    deadline: float | None = None, stop: threading.Event | None = None,
                    on_info: Callable[[SearchResult], None] | None = None,
                    info_interval_s: float = 0.5, sample: Sequence[bool] | None = None
                    ) -> list[SearchResult]:
        """Search every position at once: one forward per step for all trees. `simulations`
        may give each position its own budget (self-play's playout-cap randomization)."""
        with _collector_paused(), torch.inference_mode():
            return self._search_many(positions, simulations, deadline, stop, on_info,
                                     info_interval_s, sample)

    def _search_many(self, positions: Sequence[Position],
                     simulations: int | Sequence[int] | None,
                     deadline: float | None, stop: threading.Event | None,
                     on_info: Callable[[SearchResult], None] | None, info_interval_s: float,
                     sample: Sequence[bool] | None) -> list[SearchResult]:
        started = time.perf_counter()
        s = self.settings
        if simulations is None or isinstance(simulations, int):
            budgets = [s.simulations if simulations is None else int(simulations)] * len(
                positions)
        else:
            budgets = [int(b) for b in simulations]
            if len(budgets) != len(positions):
                raise ValueError(f"simulations has {len(budgets)} entries for "
                                 f"{len(positions)} positions")
        if any(b < 0 for b in budgets):
            raise ValueError(f"simulations must be >= 0, got {simulations!r}")
        if s.time_per_move_s > 0:
            limit = time.monotonic() + s.time_per_move_s
            deadline = limit if deadline is None else min(deadline, limit)
        sample = [False] * len(positions) if sample is None else list(sample)
        if len(sample) != len(positions):
            raise ValueError(f"sample has {len(sample)} entries for {len(positions)} positions")
        self._call += 1
        trees = [self._tree(p, budget, sampled) for p, budget, sampled in zip(
            positions, budgets, sample, strict=True)]
        evaluations = 0
        next_info = time.monotonic() + info_interval_s
        # The roots first (new trees), then steps until every tree is done or time is up.
        leaves = [leaf for t in trees if (leaf := t.root_leaf()) is not None]
        while True:
            if leaves:
                self._evaluate(leaves)
                evaluations += len(leaves)
            if (stop is not None and stop.is_set()) or (deadline is not None
                                                        and time.monotonic() >= deadline):
                break
            if on_info is not None and time.monotonic() >= next_info:
                next_info = time.monotonic() + info_interval_s
                # Its own generator: an info line must not change the move a sampled search
                # draws at the end.
                on_info(trees[0].result(np.random.default_rng(0), started, evaluations))
            leaves = []
            for t in trees:
                if not t.done:
                    t.gather(s.leaves_per_forward, leaves)
            if not leaves and all(t.done for t in trees):
                break
        results = [t.result(self.rng, started, evaluations) for t in trees]
        self._keep(trees)
        return results

    def _tree(self, position: Position, budget: int, sampled: bool) -> _Tree:
        if position.outcome() is not None:
            raise ValueError(f"cannot search a finished game ({position.outcome()}): "
                             f"{position.sfen()!r}")
        root = self._reused_root(position) if self.settings.reuse_tree else None
        tree = _Tree(position, root or Node(), self.settings, budget, sampled, np.zeros(0),
                     self.value_material)
        if root is None:
            tree.root.moves = tree.board.legal_moves()
        k = len(tree.root.moves)
        tree.noise = self.rng.gumbel(size=k) if sampled else np.zeros(k)
        plies = self.settings.mate_plies
        # cshogi's mate searches first (about a microsecond); the exact, slower check only
        # where they see something.
        if budget > 0 and plies > 0 and tree.board.may_mate(plies):
            tree.mate = forced_mate(position.copy(), plies)
        return tree

    def _reused_root(self, position: Position) -> Node | None:
        """The kept node of `position`: its tree's root or a descendant by up to two moves."""
        history = tuple(position.cshogi_history())
        for back in range(3):
            if back > len(history):
                break
            # Taken out: a kept node serves one tree (the same game twice gets a new one).
            kept = self._kept.pop((position.start_sfen, history[:len(history) - back]), None)
            if kept is None:
                continue
            node: Node | None = kept[0]
            for move in history[len(history) - back:]:
                found = _child(node, move & 0xFFFF) if node is not None else None
                node = found[0] if found is not None else None
            if node is not None and node.expanded:
                return node
            return None
        return None

    def _keep(self, trees: list[_Tree]) -> None:
        """Keep this call's trees, and the previous call's (a match alternates between the
        games where a player moves as Black and those where it moves as White)."""
        if not self.settings.reuse_tree:
            return
        self._kept = {k: v for k, v in self._kept.items() if v[1] >= self._call - 1}
        for t in trees:
            if t.root.expanded:
                key = (t.position.start_sfen, tuple(t.position.cshogi_history()))
                self._kept[key] = (t.root, self._call)

    def _evaluate(self, leaves: list[_Leaf]) -> None:
        """One forward for `leaves`: log-priors over each one's legal moves, and its value."""
        state = compact_rows([leaf.row for leaf in leaves])
        max_moves = self.max_moves or leaves[0].tree.position.max_moves \
            or EnvConfig().max_moves
        started, cpu = time.perf_counter(), time.process_time()
        planes = encode_planes(to_tensors(state, self.device), max_moves, self.attack_planes)
        logits, values = self.model(planes)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.network_seconds += time.perf_counter() - started
        self.network_cpu_seconds += time.process_time() - cpu
        counts = np.array([len(leaf.node.moves) for leaf in leaves])
        moves = np.fromiter(chain.from_iterable(leaf.node.moves for leaf in leaves),
                            dtype=np.int64, count=int(counts.sum()))
        turns = np.repeat(state.color.astype(np.intp), counts)
        rows = np.repeat(np.arange(len(leaves)) * NUM_ACTIONS, counts)
        flat = torch.from_numpy(rows + MOVE16_TO_ACTION[turns, moves & MOVE16_MASK])
        chosen = logits.reshape(-1).index_select(0, flat.to(self.device)).float().cpu().numpy()
        value = values.float().cpu().numpy().reshape(-1)
        if self.value_material:
            value = value + self.value_material * material_balance(state)
        starts = np.zeros(len(leaves), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        top = np.maximum.reduceat(chosen, starts)
        shifted = chosen.astype(np.float64) - np.repeat(top, counts)
        log_norm = np.log(np.add.reduceat(np.exp(shifted), starts))
        log_prior = shifted - np.repeat(log_norm, counts)
        for leaf, start, count, v in zip(leaves, starts.tolist(), counts.tolist(),
                                         value.tolist(), strict=True):
            leaf.tree.finish(leaf, log_prior[start:start + count], float(v))
        self.evaluations += len(leaves)
        self.forwards += 1


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a search runs. The trees' nodes form no
    cycles (a node knows its children, never its parent: reference counting frees them), yet
    each of them, created by the thousand per move and alive to the end of the search, counts
    towards the collector's next full pass, which then walks every object of the process: at
    64 trees of the tiny network that was about a third of the tree's own time. Turned back on
    afterwards only if it was on (another thread's search may still run: it merely collects
    later)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _child(node: Node, move16: int) -> tuple[Node, int] | None:
    """The expanded child of `node` reached by the move with this move16, and its cshogi move."""
    for i, move in enumerate(node.moves):
        if move & 0xFFFF == move16:
            child = node.children[i] if node.children else None
            return (child, move) if child is not None else None
    return None

