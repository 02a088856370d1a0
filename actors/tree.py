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


class Node:
    """One position of the tree. `pending`: created, not yet evaluated by the network;
    `terminal`: the game's value for the side to move when it ends here (or is won by a mate in
    one), else None. A node is `expanded` once evaluated and not terminal."""

    __slots__ = ("N", "W", "children", "logits", "moves", "net_value", "pending", "prior",
                 "terminal", "total", "value_sum", "visited_prior", "visits")

    def __init__(self, moves: list[int] | None = None, terminal: float | None = None) -> None:
        self.moves: list[int] = moves or []  # cshogi moves of the children
        self.terminal = terminal
        self.pending = terminal is None
        self.prior: np.ndarray = _EMPTY_F
        self.logits: np.ndarray = _EMPTY_F  # log prior (normalised over the legal moves)
        self.N: np.ndarray = _EMPTY_I  # visits through each move (virtual ones included)
        self.W: np.ndarray = _EMPTY_F  # value sums of each move, for this node's mover
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
        """Set the network's evaluation: log-probabilities of `moves` (in order) and value."""
        k = len(self.moves)
        self.logits = log_prior.astype(np.float64)
        self.prior = np.exp(self.logits)
        self.N = np.zeros(k, dtype=np.int64)
        self.W = np.zeros(k, dtype=np.float64)
        self.children = [None] * k
        self.net_value = float(value)
        self.pending = False

    def value(self) -> float:
        """This node's mean value for its side to move (the network's until visited)."""
        return self.value_sum / self.visits if self.visits else self.net_value

    def q(self) -> np.ndarray:
        """Mean value of each visited move (0 where unvisited), for this node's mover."""
        return np.where(self.N > 0, self.W / np.maximum(self.N, 1), 0.0)


# ----------------------------------------------------------------------------- PUCT


def puct_select(node: Node, c_puct: float, fpu_reduction: float) -> int:
    """argmax of Q + c_puct * P * sqrt(total) / (1 + N) (AlphaZero). An unvisited move's Q is
    the node's value minus `fpu_reduction` * sqrt(prior mass visited) (first-play urgency, as
    Leela Zero). Before any visit the prior decides. Ties: the lowest index."""
    total = node.total
    if total == 0:
        return int(np.argmax(node.prior))
    n = node.N
    fpu = node.value() - fpu_reduction * math.sqrt(node.visited_prior)
    q = np.where(n > 0, node.W / np.maximum(n, 1), fpu)
    return int(np.argmax(q + (c_puct * math.sqrt(total)) * node.prior / (1.0 + n)))


def add_virtual_loss(node: Node, a: int) -> None:
    """Count a visit of move a as a loss until its leaf is backed up (so that the next leaf
    gathered for the same forward goes elsewhere)."""
    if node.N[a] == 0:
        node.visited_prior += float(node.prior[a])
    node.N[a] += 1
    node.W[a] -= 1.0
    node.total += 1


def revert_virtual_loss(node: Node, a: int) -> None:
    node.N[a] -= 1
    node.W[a] += 1.0
    node.total -= 1
    if node.N[a] == 0:
        node.visited_prior -= float(node.prior[a])


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
            if node.N[a] == 0:
                node.visited_prior += float(node.prior[a])
            node.N[a] += 1
            node.total += 1
            node.W[a] += value
        else:
            node.W[a] += 1.0 + value
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


def mixed_value(net_value: float, prior: np.ndarray, n: np.ndarray, q: np.ndarray) -> float:
    """The value an unvisited root move is completed with (v_mix, eq. 33 of the paper): the
    network's value mixed with the prior-weighted mean Q of the visited moves."""
    visited = n > 0
    total = int(n.sum())
    if total == 0:
        return float(net_value)
    probs = np.maximum(prior, np.finfo(np.float64).tiny)
    mass = float(probs[visited].sum())
    weighted = float((probs[visited] * q[visited]).sum()) / mass
    return (float(net_value) + total * weighted) / (1 + total)


def completed_q(node: Node) -> np.ndarray:
    """Q of each move where visited, the mixed value where not (in [-1, 1], node's mover)."""
    q = node.q()
    return np.where(node.N > 0, q, mixed_value(node.net_value, node.prior, node.N, q))


def sigma(completed: np.ndarray, max_visits: int, c_visit: float, c_scale: float
          ) -> np.ndarray:
    """sigma(q) = (c_visit + max_b N(b)) * c_scale * q, with q mapped from [-1, 1] to [0, 1]
    (a fixed map: values of a board game are bounded)."""
    return (c_visit + max_visits) * c_scale * (completed + 1.0) / 2.0


def improved_policy(node: Node, c_visit: float, c_scale: float) -> np.ndarray:
    """softmax(logits + sigma(completed Q)) over the node's moves: the policy the search
    improves the network's into."""
    n = node.N
    scores = node.logits + sigma(completed_q(node), int(n.max()) if len(n) else 0, c_visit,
                                 c_scale)
    scores = scores - scores.max()
    weights = np.exp(scores)
    return weights / weights.sum()


class GumbelRoot:
    """The state of one search at a Gumbel root: the Gumbel draws `g` (zeros: deterministic
    play), the m moves considered (top-m of g + logits), the visits this search gave each move
    and the sequential-halving schedule over the budget."""

    def __init__(self, root: Node, moves: int, simulations: int, gumbel: np.ndarray,
                 c_visit: float, c_scale: float) -> None:
        k = len(root.moves)
        self.root = root
        self.g = gumbel
        m = min(moves, k)
        # Stable sort of -(g + logits): ties keep the lower index first.
        self.considered = np.argsort(-(gumbel + root.logits), kind="stable")[:m]
        self.visits = np.zeros(k, dtype=np.int64)
        self.schedule = considered_visit_sequence(m, min(simulations, 1 << 16))
        self.done = 0  # root selections made
        self.c_visit = c_visit
        self.c_scale = c_scale

    def scores(self) -> np.ndarray:
        """g + logits + sigma(completed Q), per root move."""
        root = self.root
        return self.g + root.logits + sigma(completed_q(root), int(root.N.max()), self.c_visit,
                                            self.c_scale)

    def select(self) -> int:
        """The root move the next simulation visits."""
        c = self.considered
        visits = self.visits[c]
        if self.done < len(self.schedule):
            target = self.schedule[self.done]
            candidates = c[visits == target]
            if len(candidates) == 0:
                candidates = c[visits == visits.min()]
        else:  # past the planned budget: the last two go on taking turns
            order = np.lexsort((-self.scores()[c], -visits))[:2]
            pair = c[order]
            candidates = pair[self.visits[pair] == self.visits[pair].min()]
        scores = self.scores()[candidates]
        a = int(candidates[int(np.argmax(scores))])
        self.visits[a] += 1
        self.done += 1
        return a

    def unselect(self, a: int) -> None:
        self.visits[a] -= 1
        self.done -= 1

    def best(self) -> int:
        """The move played: among the considered moves visited most, argmax of the score."""
        c = self.considered
        visits = self.visits[c]
        candidates = c[visits == visits.max()]
        return int(candidates[int(np.argmax(self.scores()[candidates]))])
