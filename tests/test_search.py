"""The tree search (actors/search.py, actors/tree.py, shogi/search_board.py): legal moves only,
terminal values and repetitions exactly as the game's rules judge them, mates found, the Gumbel
maths checked against a separate computation, tree reuse, and many trees at once equal to one
at a time."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from actors.evaluation import Contestant, make_player, play_match
from actors.players import PolicyPlayer
from actors.search import SearchResult, TreeSearch
from actors.tree import (
    GumbelRoot,
    Node,
    considered_visit_sequence,
    improved_policy,
    puct_select,
)
from keisei_ray.arena.evaluation import load_contestant, split_model_spec
from keisei_ray.config import ConfigError, ModelConfig, SearchConfig
from keisei_ray.config_loading import load_config
from keisei_ray.store.model_file import save_model
from learner.model import build_model, export_weights
from shogi import NUM_ACTIONS, Move, Position, Termination
from shogi.search_board import SearchBoard, compact_rows
from shogi.tactics import forced_mate
from tests.test_cli import run_cli

MATE_IN_ONE = "4k4/9/4G4/9/9/9/9/9/4K4 b G 1"  # G*5b
MATE_IN_THREE = "8k/9/8S/4n4/G8/9/9/9/K8 b B 1"  # found by cshogi's mate search, no mate in 1
# Black's rook checks White's king on every move, back and forth: 2h1h 1a2a 1h2h 2a1a.
PERPETUAL = "8k/9/9/9/9/9/9/7R1/K8 b - 1"
CYCLE = ["2h1h", "1a2a", "1h2h", "2a1a"]


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return build_model(ModelConfig(size="tiny")).eval()


class ExactNet(nn.Module):
    """A network whose outputs for one position do not depend on the rest of the batch:
    integer arithmetic in float64 (every sum exact), so batched and single forwards agree to
    the bit."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.policy = torch.randint(-3, 4, (46 * 81, NUM_ACTIONS), generator=g).double()
        self.value = torch.randint(-3, 4, (46 * 81,), generator=g).double()

    def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.round(planes.double() * 72).flatten(1)
        logits = torch.stack([row @ self.policy for row in x]) / 2000.0
        value = torch.tanh(torch.stack([row @ self.value for row in x]) / 20000.0)
        return logits.float(), value.float()


def random_position(seed: int, plies: int, max_moves: int | None = None) -> Position:
    """A position after up to `plies` random moves from the start (stops at a game's end)."""
    rng = random.Random(seed)
    position = Position(max_moves=max_moves)
    for _ in range(plies):
        moves = position.legal_moves()
        if not moves:
            break
        position.push(rng.choice(moves))
    return position


def replay(position: Position, moves: list[str]) -> Position:
    for usi in moves:
        position.push_usi(usi)
    return position


# ----------------------------------------------------------------------------- legal moves


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), plies=st.integers(0, 120), gumbel=st.booleans(),
       sample=st.booleans(), sims=st.sampled_from([1, 4, 12]))
def test_the_chosen_move_is_legal(tiny: nn.Module, seed: int, plies: int, gumbel: bool,
                                  sample: bool, sims: int) -> None:
    position = random_position(seed, plies)
    if position.is_game_over():
        position.pop()
    search = TreeSearch(tiny, SearchConfig(simulations=sims, gumbel=gumbel, gumbel_moves=4,
                                           leaves_per_forward=3), seed=seed)
    result = search.search(position, sample=sample)
    legal = {m.usi() for m in position.legal_moves()}
    assert result.move in legal
    assert set(result.visits) <= legal
    assert set(result.improved_policy) == ({result.move} if result.mate else legal)
    assert math.isclose(sum(result.improved_policy.values()), 1.0, rel_tol=1e-6)
    assert -1.0 <= result.value <= 1.0
    assert result.nodes <= sims
    # The principal variation is a legal line.
    line = position.copy()
    for usi in result.pv:
        assert not line.is_game_over()
        line.push_usi(usi)


def test_many_games_of_a_match_search_together(tiny: nn.Module) -> None:
    cfg = load_config(None, ["search.simulations=4", "env.max_moves=24"])
    torch.manual_seed(1)
    contestant = Contestant("tiny", ModelConfig(size="tiny"),
                            export_weights(build_model(ModelConfig(size="tiny"))))
    player = make_player(contestant, cfg)
    assert isinstance(player, PolicyPlayer) and player.search is not None
    result = play_match(player, make_player(Contestant.baseline("random"), cfg), 6,
                        max_moves=24)
    assert result.games == 6
    # Every game's moves went through one search_many per ply: few forwards for many nodes.
    assert player.searcher.evaluations > player.searcher.forwards * 2


# ----------------------------------------------------------------------------- the rules


def walk(seed: int, plies: int) -> tuple[list[Move], Position]:
    """A random game that likes to undo the move played two plies before (so positions
    repeat), from the standard start or a small endgame."""
    rng = random.Random(seed)
    start = PERPETUAL if seed % 2 else None
    position = Position(start, max_moves=rng.choice([None, 30, 60]), impasse=seed % 3 == 0)
    played: list[Move] = []
    for _ in range(plies):
        moves = position.legal_moves()
        if not moves:
            break
        back = None
        if len(played) >= 2:
            undo = played[-2]
            back = next((m for m in moves if m.usi() == _reverse(undo.usi())), None)
        move = back if back is not None and rng.random() < 0.8 else rng.choice(moves)
        position.push(move)
        played.append(move)
    return played, position


def _reverse(usi: str) -> str:
    return usi[2:4] + usi[0:2] if "*" not in usi and not usi.endswith("+") else ""


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), plies=st.integers(0, 80), split=st.integers(0, 80))
def test_terminal_values_agree_with_the_rules(seed: int, plies: int, split: int) -> None:
    """The game's history up to `split`, then a path walked on the SearchBoard: every
    position judged as the game's own Position judges it."""
    played, game = walk(seed, plies)
    split = min(split, len(played))
    root = Position(game.start_sfen, max_moves=game.max_moves, impasse=game.impasse)
    for move in played[:split]:
        root.push(move)
    board = SearchBoard(root)
    reference = root.copy()
    for move in played[split:]:
        full = next(m for m in board.legal_moves() if m & 0xFFFF == move.move16)
        board.push(full)
        reference.push(move)
        assert board.repetition() == reference.repetition_count()
        assert board.outcome(len(board.legal_moves())) == reference.outcome()
        assert compact_rows([board.row()]).equals(reference.compact())


def test_the_fourth_occurrence_in_the_tree_counts_the_games_history(tiny: nn.Module) -> None:
    """Two cycles played and three plies of the third: White's 2a1a makes the start position
    occur for the 4th time, Black gave check with every move, so White wins by the rules; the
    search, which sees only one ply of this inside its tree, takes it."""
    position = replay(Position(PERPETUAL), CYCLE * 2 + CYCLE[:3])
    after = position.copy()
    after.push_usi("2a1a")
    outcome = after.outcome()
    assert outcome is not None and outcome.reason is Termination.PERPETUAL_CHECK
    assert outcome.winner == position.turn
    for gumbel in (True, False):
        search = TreeSearch(tiny, SearchConfig(simulations=32, gumbel=gumbel, mate_plies=0),
                            seed=0)
        result = search.search(position)
        assert result.move == "2a1a"
        assert result.value == 1.0


def test_a_draw_by_repetition_is_valued_as_a_draw(tiny: nn.Module) -> None:
    """Without checks the 4th occurrence is a draw: the root's move into it has value 0 (a
    Gumbel root considering every move visits each at least once)."""
    cycle = ["2h3h", "8b7b", "3h2h", "7b8b"]
    position = replay(Position(), cycle * 2 + cycle[:3])
    search = TreeSearch(tiny, SearchConfig(simulations=64, gumbel_moves=1000, mate_plies=0),
                        seed=0)
    result = search.search(position)
    root = next(iter(search._kept.values()))[0]
    index = [Move(m).usi() for m in root.moves].index("7b8b")
    child = root.children[index]
    assert child is not None and child.terminal == 0.0
    assert result.visits.get("7b8b", 0) == root.N[index]
    assert root.W[index] == 0.0  # every visit of it backed up exactly 0


def test_the_move_cap_ends_the_tree_as_a_draw(tiny: nn.Module) -> None:
    position = random_position(3, 9, max_moves=10)
    search = TreeSearch(tiny, SearchConfig(simulations=16, gumbel=False, mate_plies=0), seed=0)
    search.search(position)
    root = next(iter(search._kept.values()))[0]
    children = [c for c in root.children if c is not None]
    assert children and all(c.terminal == 0.0 for c in children)


def test_an_impasse_declaration_ends_the_tree_when_the_rule_is_on(tiny: nn.Module) -> None:
    """White to move; after any move Black may declare a 27-point impasse win: with the rule
    on, every child is a terminal loss for White (the network never asked); off, none is."""
    sfen = "RRBB5/4K4/PPPPPPPP1/9/9/9/9/9/8k w - 1"
    on = Position(sfen, impasse=True)
    replies = on.legal_moves()
    for reply in replies:  # what the game's rules say
        on.push(reply)
        outcome = on.outcome()
        assert outcome is not None and outcome.reason is Termination.IMPASSE
        on.pop()
    config = SearchConfig(simulations=3 * len(replies), gumbel_moves=100, mate_plies=0,
                          mate_leaves=False)
    result = TreeSearch(tiny, config).search(on)
    assert result.value == -1.0 and result.evaluations == 1
    off = TreeSearch(tiny, config).search(Position(sfen))
    assert off.value > -1.0 and off.evaluations > 1


# ----------------------------------------------------------------------------- mates


@pytest.mark.parametrize("gumbel", [True, False])
def test_a_mate_in_one_is_played(tiny: nn.Module, gumbel: bool) -> None:
    search = TreeSearch(tiny, SearchConfig(simulations=8, gumbel=gumbel), seed=0)
    result = search.search(Position(MATE_IN_ONE))
    assert (result.move, result.mate, result.value) == ("G*5b", True, 1.0)
    # Without the root mate search the tree finds it too once it visits it (its child is
    # checkmate by the rules): a Gumbel root considering every move visits each.
    moves = len(Position(MATE_IN_ONE).legal_moves())
    search = TreeSearch(tiny, SearchConfig(simulations=2 * moves, gumbel=True,
                                           gumbel_moves=1000, mate_plies=0), seed=0)
    result = search.search(Position(MATE_IN_ONE))
    assert result.move == "G*5b" and not result.mate and result.value == 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), plies=st.integers(20, 160), depth=st.sampled_from([1, 3]))
def test_the_quick_mate_test_never_hides_a_forced_mate(seed: int, plies: int,
                                                       depth: int) -> None:
    position = random_position(seed, plies)
    if position.is_game_over():
        return
    mate = forced_mate(position.copy(), depth)
    if mate is not None:
        assert SearchBoard(position).may_mate(depth)


def test_a_solved_position_still_answers_at_its_deadline(tiny: nn.Module) -> None:
    """Every walk ends in a terminal node (no forward at all): the search still looks at its
    clock between walks and stops on time, however large its budget."""
    first = forced_mate(Position(MATE_IN_THREE), 3)
    assert first is not None
    position = Position(MATE_IN_THREE)
    position.push(first)
    search = TreeSearch(tiny, SearchConfig(simulations=10_000_000, mate_plies=0))
    started = time.monotonic()
    result = search.search(position, deadline=started + 0.3)
    assert time.monotonic() - started < 5.0
    assert result.value == -1.0 and result.nodes > 0


def test_a_mate_in_three_is_played_and_is_forced(tiny: nn.Module) -> None:
    position = Position(MATE_IN_THREE)
    assert position.mate_in_one() is None
    board = SearchBoard(position)
    assert board.may_mate(3) and not board.may_mate(1)
    assert SearchBoard(Position(MATE_IN_ONE)).may_mate(1)
    result = TreeSearch(tiny, SearchConfig(simulations=8, mate_plies=3), seed=0).search(
        position)
    assert result.mate
    position.push_usi(result.move)
    replies = position.legal_moves()
    assert replies
    for reply in replies:  # every defence is mated at once
        position.push(reply)
        mate = position.mate_in_one()
        assert mate is not None
        position.push(mate)
        outcome = position.outcome()
        assert outcome is not None and outcome.winner != position.turn
        position.pop()
        position.pop()
    # With mate_plies=1 the root search does not see it.
    shallow = TreeSearch(tiny, SearchConfig(simulations=1, mate_plies=1), seed=0).search(
        Position(MATE_IN_THREE))
    assert not shallow.mate


@pytest.mark.parametrize("gumbel", [True, False])
def test_leaves_with_a_mate_in_one_are_won(tiny: nn.Module, gumbel: bool) -> None:
    """After the mate in three's first move every defence leaves Black a mate in one: each
    such leaf is valued as won, so the defender's search sees a lost position, exactly -1."""
    first = forced_mate(Position(MATE_IN_THREE), 3)
    assert first is not None
    position = Position(MATE_IN_THREE)
    position.push(first)
    replies = len(position.legal_moves())
    search = TreeSearch(tiny, SearchConfig(simulations=4 * replies, gumbel=gumbel,
                                           mate_plies=0), seed=0)
    result = search.search(position)
    assert result.value == -1.0
    assert result.evaluations == 1  # the root only: every leaf was decided by the mate rule
    off = TreeSearch(tiny, SearchConfig(simulations=4 * replies, gumbel=gumbel, mate_plies=0,
                                        mate_leaves=False), seed=0).search(position)
    assert off.value > -1.0 and off.evaluations > 1


# ----------------------------------------------------------------------------- Gumbel maths


class FlatNet(nn.Module):
    """A uniform policy and a value of 0 everywhere, trained (so it says) with material
    shaping `value_material`: all a search can learn is what that shaping adds."""

    def __init__(self, value_material: float) -> None:
        super().__init__()
        self.value_material = value_material

    def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = planes.shape[0]
        return torch.zeros(n, NUM_ACTIONS), torch.zeros(n)


@pytest.mark.parametrize("gumbel", [True, False])
def test_a_shaped_value_gets_the_material_it_left_out_back(gumbel: bool) -> None:
    """A value trained with shaping C is E[result] + C * (final balance - current balance):
    the search adds C * the balance back, so winning a rook is worth C * 20 pawn units to the
    mover (rook off the board and into the hand), and a mate its result plus C * the final
    balance. Without the correction every move of a flat network is worth 0."""
    settings = SearchConfig(simulations=64, gumbel=gumbel, mate_plies=0, mate_leaves=False)
    rook = Position.from_sfen("4k4/9/9/9/4r4/9/9/4R4/4K4 b - 1")  # 5h5e takes the rook
    result = TreeSearch(FlatNet(0.05), settings).search(rook)
    assert result.move == "5h5e" and result.value == pytest.approx(0.05 * 20, abs=0.2)
    assert TreeSearch(FlatNet(0.0), settings).search(rook).value == pytest.approx(0.0)
    mate = TreeSearch(FlatNet(0.05), settings).search(Position.from_sfen(MATE_IN_ONE))
    # After G*5b Black holds two golds (6 each) to nothing: won, plus 0.05 * 12.
    assert mate.move == "G*5b" and mate.value == pytest.approx(1.0 + 0.05 * 12)


def hand_built_root() -> Node:
    root = Node([11, 22, 33, 44])
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    root.expand(logits, value=0.1)
    root.add(0, 3, 1.5)
    root.add(1, 1, -0.5)
    return root


def test_the_improved_policy_matches_the_paper() -> None:
    """Completed Q with the mixed value for unvisited moves, sigma = (c_visit + max N) *
    c_scale * q (q in [0, 1]), softmax(logits + sigma): computed here term by term."""
    root = hand_built_root()
    c_visit, c_scale = 50.0, 0.1
    prior = [0.4, 0.3, 0.2, 0.1]
    q = {0: 1.5 / 3, 1: -0.5 / 1}
    total = 4
    weighted = (prior[0] * q[0] + prior[1] * q[1]) / (prior[0] + prior[1])
    v_mix = (0.1 + total * weighted) / (1 + total)
    completed = [q[0], q[1], v_mix, v_mix]
    scores = [math.log(p) + (c_visit + 3) * c_scale * (c + 1) / 2
              for p, c in zip(prior, completed, strict=True)]
    expected = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
    assert np.allclose(improved_policy(root, c_visit, c_scale), expected, rtol=1e-12)


def test_sequential_halving_schedule() -> None:
    # m = 8, 24 simulations: 8 moves once, the best 4 twice more, the best 2 four times more.
    assert considered_visit_sequence(8, 24) == [0] * 8 + [1] * 4 + [2] * 4 + [3, 3, 4, 4, 5, 5,
                                                                              6, 6]
    assert considered_visit_sequence(1, 3) == [0, 1, 2]
    assert considered_visit_sequence(4, 2) == [0, 0]


def test_gumbel_root_spends_the_budget_on_the_best_half() -> None:
    root = Node(list(range(8)))
    root.expand(np.log(np.full(8, 1 / 8)), 0.0)
    gumbel = GumbelRoot(root, 8, 24, np.zeros(8), 50.0, 1.0)
    values = np.linspace(-0.8, 0.6, 8)  # move 7 is the best
    for _ in range(24):
        a = gumbel.select()
        root.add(a, 1, values[a])
        root.visits += 1
    assert gumbel.visits == [1, 1, 1, 1, 3, 3, 7, 7]
    assert gumbel.best() == 7


def test_puct_prefers_prior_then_value() -> None:
    root = hand_built_root()
    root.visits, root.value_sum = 5, 0.5
    # Unvisited moves get first-play urgency: the parent's value minus the reduction.
    a = puct_select(root, c_puct=1.25, fpu_reduction=0.2)
    q = np.array([0.5, -0.5, 0.1 - 0.2 * math.sqrt(0.7), 0.1 - 0.2 * math.sqrt(0.7)])
    u = 1.25 * root.prior * math.sqrt(4) / (1 + root.N)
    assert a == int(np.argmax(q + u))


# ----------------------------------------------------------------------------- reuse, batching


def test_tree_reuse_keeps_the_subtree(tiny: nn.Module) -> None:
    search = TreeSearch(tiny, SearchConfig(simulations=48, gumbel=False, mate_plies=0), seed=0)
    position = Position()
    first = search.search(position)
    root = next(iter(search._kept.values()))[0]
    a = [Move(m).usi() for m in root.moves].index(first.move)
    child = root.children[a]
    assert child is not None and child.expanded
    reply = Move(child.moves[int(np.argmax(child.N))]).usi()
    grandchild = child.children[int(np.argmax(child.N))]
    assert grandchild is not None and grandchild.expanded
    kept_visits = int(grandchild.N.sum())
    position.push_usi(first.move)
    position.push_usi(reply)
    second = search.search(position)
    assert sum(second.visits.values()) == kept_visits + second.nodes
    assert next(iter(search._kept.values()))[0] is grandchild
    assert second.evaluations == second.nodes  # no new root evaluation
    # advance() moves a single kept tree by hand (the USI engine's way).
    search.advance(second.move)
    node = next(iter(search._kept.values()))[0]
    assert node is grandchild.children[[Move(m).usi() for m in grandchild.moves]
                                       .index(second.move)]
    search.reset()
    assert not search._kept


def test_a_kept_tree_serves_one_game(tiny: nn.Module) -> None:
    """Two games in the same position: the kept tree goes to one of them, the other gets its
    own (sharing one root would back both searches up into it)."""
    search = TreeSearch(tiny, SearchConfig(simulations=16, mate_plies=0), seed=0)
    first = search.search(Position())
    kept = sum(first.visits.values())
    a, b = search.search_many([Position(), Position()])
    assert sorted([sum(a.visits.values()), sum(b.visits.values())]) == [16, kept + 16]


@pytest.mark.parametrize("gumbel", [True, False])
def test_many_trees_at_once_equal_one_at_a_time(gumbel: bool) -> None:
    net = ExactNet()
    positions = [random_position(seed, plies) for seed, plies in ((1, 0), (2, 7), (3, 30),
                                                                    (4, 55))]
    positions.append(replay(Position(PERPETUAL), CYCLE * 2 + CYCLE[:3]))
    config = SearchConfig(simulations=24, gumbel=gumbel, gumbel_moves=6, leaves_per_forward=4,
                          reuse_tree=False, mate_plies=0)
    together = TreeSearch(net, config).search_many(positions)
    alone = [TreeSearch(net, config).search(p) for p in positions]
    for a, b in zip(together, alone, strict=True):
        assert (a.move, a.visits, a.pv, a.nodes) == (b.move, b.visits, b.pv, b.nodes)
        assert a.value == pytest.approx(b.value, abs=1e-12)
        assert a.improved_policy == pytest.approx(b.improved_policy, abs=1e-12)


def test_leaves_per_forward_cuts_the_forwards(tiny: nn.Module) -> None:
    one = TreeSearch(tiny, SearchConfig(simulations=32, leaves_per_forward=1, mate_plies=0))
    eight = TreeSearch(tiny, SearchConfig(simulations=32, leaves_per_forward=8, mate_plies=0))
    one.search(Position())
    eight.search(Position())
    assert one.forwards >= 30 and eight.forwards <= 12


def test_a_stop_or_deadline_answers_the_best_move_so_far(tiny: nn.Module) -> None:
    stop = threading.Event()
    infos: list[int] = []
    search = TreeSearch(tiny, SearchConfig(simulations=1_000_000, leaves_per_forward=4,
                                           mate_plies=0))

    def on_info(result: SearchResult) -> None:
        infos.append(result.nodes)
        if len(infos) >= 2:
            stop.set()

    result = search.search(Position(), stop=stop, on_info=on_info, info_interval_s=0.05)
    assert stop.is_set() and result.nodes >= infos[-1] > 0
    assert result.move in {m.usi() for m in Position().legal_moves()}
    started = time.monotonic()
    timed = search.search(Position(), deadline=started + 0.2)
    assert time.monotonic() - started < 2.0 and timed.nodes > 0


# ----------------------------------------------------------------------------- settings


def test_bad_search_settings_are_one_line_config_errors() -> None:
    for override, field in (("search.simulations=-1", "search.simulations"),
                            ("search.c_puct=0", "search.c_puct"),
                            ("search.mate_plies=2", "search.mate_plies"),
                            ("search.leaves_per_forward=0", "search.leaves_per_forward"),
                            ("search.gumbel=maybe", "search.gumbel")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
            load_config(None, [override])
        assert "\n" not in str(info.value)


def test_model_specs_carry_search_settings(tmp_path: Path) -> None:
    assert split_model_spec("m.pt,sims=64,gumbel=false") == (
        "m.pt", (("simulations", 64), ("gumbel", False)))
    assert split_model_spec("m.pt") == ("m.pt", ())
    with pytest.raises(ValueError, match="simulations"):
        split_model_spec("m.pt,sims=-2")
    with pytest.raises(ValueError, match="'depth=3' is not a search setting"):
        split_model_spec("m.pt,depth=3")
    config = ModelConfig(size="tiny")
    path = save_model(tmp_path / "tiny.pt", export_weights(build_model(config)),
                      config, {"timestep": 0})
    contestant = load_contestant(f"{path},sims=5,c_puct=2")
    assert contestant.name == "tiny.pt,sims=5,c_puct=2"
    player = make_player(contestant, load_config(None, ["search.gumbel=false"]))
    assert isinstance(player, PolicyPlayer) and player.search is not None
    assert (player.search.simulations, player.search.c_puct, player.search.gumbel) == (5, 2.0,
                                                                                      False)
    raw = make_player(load_contestant(str(path)), load_config(None, []))
    assert isinstance(raw, PolicyPlayer) and raw.search is None


# ----------------------------------------------------------------------------- the CLI


def test_evaluate_plays_the_searched_player_against_the_raw_one(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = ModelConfig(size="tiny")
    torch.manual_seed(2)
    model = save_model(tmp_path / "m.pt", export_weights(build_model(config)), config, {})
    code, out, _ = run_cli(["evaluate", f"{model},sims=4", str(model), "-n", "2", "--json",
                            "env.max_moves=16"], capsys)
    assert code == 0, out
    data = json.loads(out)
    assert (data["player"], data["opponent"], data["games"]) == ("m.pt,sims=4", "m.pt", 2)
    for args, named in (([f"{model},sims=-4", "random"], "simulations"),
                        ([str(model), "random", "search.c_puct=-1"], "search.c_puct"),
                        ([f"{model},depth=2", "random"], "depth=2")):
        code, _, err = run_cli(["evaluate", *args, "-n", "2"], capsys)
        assert code == 2 and named in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_bench_search_reports_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["bench", "search", "--sizes", "tiny", "--trees", "2",
                            "--simulations", "4", "--seconds", "0.01", "--json"], capsys)
    assert code == 0, out
    figures = json.loads(out)
    share = figures["tiny, 2 trees: tree's own share of CPU time"]
    assert 0.0 < share < 1.0
    assert figures["tiny, 2 trees: simulations per wall s"] > 0
    code, _, err = run_cli(["bench", "search", "train.seed=3"], capsys)
    assert code == 2 and "not a search.* setting" in err
