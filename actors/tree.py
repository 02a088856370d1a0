"""The search tree's nodes and the maths of choosing in them: PUCT with first-play urgency and
virtual loss, and the Gumbel root (Danihelka et al. 2022, "Policy improvement by planning with
Gumbel"). Numbers only: the game is `shogi.search_board`, the network `actors.search`.

A node keeps its children's statistics in numpy arrays (prior, visits N, value sums W), one
entry per legal move, and creates a child node only when the search first walks into it. Every
value is from the point of view of the side to move at the node that holds it: W[a] sums the
values of move a for the side choosing it, and a child's own value is negated on the way up.
"""

from __future__ import annotations

import math

import numpy as np

_EMPTY_F = np.zeros(0, dtype=np.float64)
_EMPTY_I = np.zeros(0, dtype=np.int64)
_TINY = float(np.finfo(np.float64).tiny)


class Node:
    """One position of the tree. `pending`: created, not yet evaluated by the network;
    `terminal`: the game's value for the side to move when it ends here (or is won by a mate in
    one), else None. A node is `expanded` once evaluated and not terminal.

    Besides N and W the node keeps what PUCT reads, updated one entry per visit (a handful of
    whole-array operations per selection instead of a dozen): Q = W / N (0 where unvisited),
    U = P / (1 + N) and `fresh` (1 where unvisited)."""

    __slots__ = ("N", "Q", "U", "W", "children", "fresh", "logits", "moves", "net_value",
                 "pending", "prior", "terminal", "total", "value_sum", "visited_prior", "visits")

    def __init__(self, moves: list[int] | None = None, terminal: float | None = None) -> None:
        self.moves: list[int] = moves or []  # cshogi moves of the children
        self.terminal = terminal
        self.pending = terminal is None
        self.prior: np.ndarray = _EMPTY_F
        self.logits: np.ndarray = _EMPTY_F  # log prior (normalised over the legal moves)
        self.N: np.ndarray = _EMPTY_I  # visits through each move (virtual ones included)
        self.W: np.ndarray = _EMPTY_F  # value sums of each move, for this node's mover
        self.Q: np.ndarray = _EMPTY_F
        self.U: np.ndarray = _EMPTY_F
        self.fresh: np.ndarray = _EMPTY_F
        self.children: list[Node | None] = []
        self.total = 0  # sum of N
        self.visited_prior = 0.0  # prior mass of the moves with N > 0
        self.visits = 0  # evaluations and backups through this node (virtual ones excluded)
        self.value_sum = 0.0
        self.net_value = 0.0  # the value head's estimate here

    @property
    def expanded(self) -> bool:
        return not self.pending and self.terminal is None

    def expand(self, log_prior: np.ndarray, value: float) -> None:
        """Set the network's evaluation: log-probabilities (float64) of `moves`, in order, and
        the value. The statistics arrays come with the first visit through the node (`grow`):
        most leaves of a search are never walked through again."""
        self.logits = log_prior
        self.children = [None] * len(self.moves)
        self.net_value = float(value)
        self.pending = False

    def grow(self) -> None:
        """Allocate the children's statistics (once)."""
        if self.N is _EMPTY_I and self.moves:
            k = len(self.moves)
            self.prior = np.exp(self.logits)
            self.N = np.zeros(k, dtype=np.int64)
            self.W = np.zeros(k, dtype=np.float64)
            self.Q = np.zeros(k, dtype=np.float64)
            self.U = self.prior.copy()
            self.fresh = np.ones(k, dtype=np.float64)

    def value(self) -> float:
        """This node's mean value for its side to move (the network's until visited)."""
        return self.value_sum / self.visits if self.visits else self.net_value

    def q(self) -> np.ndarray:
        """Mean value of each visited move (0 where unvisited), for this node's mover."""
        return self.Q

    def add(self, a: int, visits: int, value: float) -> None:
        """N[a] += visits, W[a] += value, and what depends on them."""
        if self.N is _EMPTY_I:
            self.grow()
        n = int(self.N[a]) + visits
        w = float(self.W[a]) + value
        self.N[a] = n
        self.W[a] = w
        if visits:
            p = float(self.prior[a])
            self.total += visits
            self.U[a] = p / (1 + n)
            if n == visits:  # first visit
                self.visited_prior += p
                self.fresh[a] = 0.0
            elif n == 0:  # back to unvisited
                self.visited_prior -= p
                self.fresh[a] = 1.0
        self.Q[a] = w / n if n else 0.0

    def settle(self, a: int, value: float) -> None:
        """W[a] += value with N[a] unchanged (a virtual loss replaced by the value backed
        up: `add(a, 0, value)` without the visit bookkeeping, once per ply of each backup)."""
        w = float(self.W[a]) + value
        self.W[a] = w
        n = int(self.N[a])
        self.Q[a] = w / n if n else 0.0


# ----------------------------------------------------------------------------- PUCT


def puct_select(node: Node, c_puct: float, fpu_reduction: float) -> int:
    """argmax of Q + c_puct * P * sqrt(total) / (1 + N) (AlphaZero). An unvisited move's Q is
    the node's value minus `fpu_reduction` * sqrt(prior mass visited) (first-play urgency, as
    Leela Zero). Before any visit the prior decides. Ties: the lowest index."""
    total = node.total
    if total == 0:
        return int(node.logits.argmax())
    fpu = node.value() - fpu_reduction * math.sqrt(node.visited_prior)
    return int((node.Q + fpu * node.fresh + (c_puct * math.sqrt(total)) * node.U).argmax())


def add_virtual_loss(node: Node, a: int) -> None:
    """Count a visit of move a as a loss until its leaf is backed up (so that the next leaf
    gathered for the same forward goes elsewhere)."""
    node.add(a, 1, -1.0)


def revert_virtual_loss(node: Node, a: int) -> None:
    node.add(a, -1, 1.0)


def backup(path: list[tuple[Node, int]], leaf: Node, value: float, virtual_root: bool) -> None:
    """Add `value` (for the leaf's side to move) to the leaf and, negated ply by ply, to each
    node of `path` (node, move) above it. The virtual loss every edge took is replaced by the
    value; with `virtual_root` False the first edge took none (a Gumbel root's)."""
    leaf.visits += 1
    leaf.value_sum += value
    for i in range(len(path) - 1, -1, -1):
        node, a = path[i]
        value = -value
        if i == 0 and not virtual_root:
            node.add(a, 1, value)
        else:
            node.settle(a, 1.0 + value)
        node.visits += 1
        node.value_sum += value


# ----------------------------------------------------------------------------- Gumbel root


def considered_visit_sequence(max_considered: int, simulations: int) -> list[int]:
    """Sequential halving as a schedule: for simulation k, the visit count a root move must
    have to be visited next (Danihelka et al. 2022; as DeepMind's mctx computes it). Each phase
    gives every remaining move the same visits; then the better half goes on (at least 2)."""
    if max_considered <= 1:
        return list(range(simulations))
    log2max = math.ceil(math.log2(max_considered))
    sequence: list[int] = []
    visits = [0] * max_considered
    considered = max_considered
    while len(sequence) < simulations:
        extra = max(1, int(simulations / (log2max * considered)))
        for _ in range(extra):
            sequence.extend(visits[:considered])
            for i in range(considered):
                visits[i] += 1
        considered = max(2, considered // 2)
    return sequence[:simulations]


def mixed_value(node: Node) -> float:
    """The value an unvisited root move is completed with (v_mix, eq. 33 of the paper): the
    network's value mixed with the prior-weighted mean Q of the visited moves. (Q is 0 where
    unvisited, so the sums may run over every move.)"""
    total = node.total
    if total == 0:
        return node.net_value
    mass = node.visited_prior
    if mass > 0.0:
        weighted = float(node.prior @ node.Q) / mass
    else:  # visited priors all underflowed to 0: their plain mean
        weighted = float(node.Q.sum()) / float(len(node.fresh) - node.fresh.sum())
    return (node.net_value + total * weighted) / (1 + total)


def completed_q(node: Node) -> np.ndarray:
    """Q of each move where visited, the mixed value where not (in [-1, 1], node's mover)."""
    node.grow()
    return node.Q + mixed_value(node) * node.fresh


def sigma(completed: np.ndarray, max_visits: int, c_visit: float, c_scale: float
          ) -> np.ndarray:
    """sigma(q) = (c_visit + max_b N(b)) * c_scale * q, with q mapped from [-1, 1] to [0, 1]
    (a fixed map: values of a board game are bounded)."""
    half = (c_visit + max_visits) * c_scale / 2.0
    return completed * half + half


def improved_policy(node: Node, c_visit: float, c_scale: float) -> np.ndarray:
    """softmax(logits + sigma(completed Q)) over the node's moves: the policy the search
    improves the network's into."""
    node.grow()
    n = node.N
    scores = node.logits + sigma(completed_q(node), int(n.max()) if len(n) else 0, c_visit,
                                 c_scale)
    scores = scores - scores.max()
    weights = np.exp(scores)
    return weights / weights.sum()


class GumbelRoot:
    """The state of one search at a Gumbel root: the Gumbel draws `g` (zeros: deterministic
    play), the m moves considered (top-m of g + logits), the visits this search gave each move
    and the sequential-halving schedule over the budget. (Plain lists: m is small, and numpy's
    per-call cost would dominate.)"""

    def __init__(self, root: Node, moves: int, simulations: int, gumbel: np.ndarray,
                 c_visit: float, c_scale: float) -> None:
        k = len(root.moves)
        root.grow()
        self.root = root
        self.g = gumbel
        m = min(moves, k)
        self._base = gumbel + root.logits
        # Stable sort of -(g + logits): ties keep the lower index first.
        self.considered: list[int] = np.argsort(-self._base, kind="stable")[:m].tolist()
        self.visits = [0] * k
        self.schedule = considered_visit_sequence(m, min(simulations, 1 << 16))
        self.done = 0  # root selections made
        self.c_visit = c_visit
        self.c_scale = c_scale
        self._cached: tuple[int, list[float]] | None = None

    def scores(self) -> list[float]:
        """g + logits + sigma(completed Q), per root move (recomputed after each backup)."""
        root = self.root
        if self._cached is None or self._cached[0] != root.visits:
            self._cached = (root.visits, (self._base + sigma(
                completed_q(root), int(root.N.max()), self.c_visit, self.c_scale)).tolist())
        return self._cached[1]

    def _argmax(self, candidates: list[int]) -> int:
        scores = self.scores()
        return max(candidates, key=scores.__getitem__)  # ties: the first (higher g + logits)

    def select(self) -> int:
        """The root move the next simulation visits: within the schedule, the best-scored
        considered move with the scheduled visits (else with the fewest). One pass over the
        considered moves, no closures: this runs once per simulation."""
        visits = self.visits
        if self.done >= len(self.schedule):
            return self._select_past_schedule()
        target = self.schedule[self.done]
        scores = self.scores()
        best = -1
        best_score = 0.0
        for a in self.considered:
            if visits[a] == target and (best < 0 or scores[a] > best_score):
                best, best_score = a, scores[a]
        if best < 0:
            least = min(visits[a] for a in self.considered)
            best = self._argmax([a for a in self.considered if visits[a] == least])
        visits[best] += 1
        self.done += 1
        return best

    def _select_past_schedule(self) -> int:
        """Past the planned budget: the two most visited moves go on taking turns."""
        visits = self.visits
        scores = self.scores()
        pair = sorted(self.considered, key=lambda a: (-visits[a], -scores[a]))[:2]
        least = min(visits[a] for a in pair)
        a = self._argmax([a for a in pair if visits[a] == least])
        visits[a] += 1
        self.done += 1
        return a

    def unselect(self, a: int) -> None:
        self.visits[a] -= 1
        self.done -= 1

    def best(self) -> int:
        """The move played: among the considered moves visited most, argmax of the score."""
        most = max(self.visits[a] for a in self.considered)
        return self._argmax([a for a in self.considered if self.visits[a] == most])
