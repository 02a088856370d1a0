"""Evaluation matches without Ray: colours, results by reason, records, network players."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from actors.evaluation import Contestant, Evaluator, MatchResult, lower_priority, play_match
from actors.players import BaselinePlayer, PolicyPlayer
from keisei_ray.config import Config, ModelConfig
from keisei_ray.config_loading import load_config
from learner.features import encode_planes, to_tensors
from learner.model import build_model, export_weights
from shogi import NUM_ACTIONS, Color, Move, Outcome, Position, Termination, move_to_action

# Black to move mates at once with G*5b (its own knights box the king in).
MATE_IN_ONE = "3nkn3/9/4P4/9/9/9/9/9/4K4 b G 1"


def config(*extra: str) -> Config:
    return load_config(None, ["model.size=tiny", "env.max_moves=48", "evaluation.games_at_once=8",
                              "evaluation.records=2", *extra])


def tiny_network(name: str, seed: int = 0, **kwargs: object) -> PolicyPlayer:
    torch.manual_seed(seed)
    model = build_model(config().model)
    return PolicyPlayer(name, model, 48, **kwargs)  # type: ignore[arg-type]


def test_colours_alternate_and_results_add_up() -> None:
    result = play_match(BaselinePlayer("heuristic", 1), BaselinePlayer("random", 2), 11,
                        max_moves=200, games_at_once=4, records=3)
    assert result.games == 11
    assert sum(result.as_black) == 6 and sum(result.as_white) == 5
    assert sum(result.reasons.values()) == 11
    assert result.wins == sum(v for k, v in result.reasons.items() if k.startswith("win_"))
    assert result.wins >= 9  # mate-in-one and captures crush random play
    assert result.score == pytest.approx((result.wins + result.draws / 2) / 11)
    assert result.win_rate == pytest.approx(result.wins / 11)
    assert [r.black for r in result.records] == ["heuristic", "random", "heuristic"]


def test_records_replay_to_their_result() -> None:
    result = play_match(BaselinePlayer("random", 0), BaselinePlayer("random", 1, name="other"),
                        4, max_moves=40, records=4)
    assert len(result.records) == 4
    for record in result.records:
        position = record.position(max_moves=40)
        outcome = position.outcome()
        assert outcome is not None and outcome.reason.value == record.reason
        assert (None if outcome.winner is None else int(outcome.winner)) == record.winner
        assert len(record.moves) == position.ply
    # 40 plies of random play end in the move cap: draws, named by reason.
    assert result.reasons.get("draw_max_moves", 0) >= 1


def test_a_mate_in_one_is_found_by_the_heuristic_from_a_given_start() -> None:
    result = play_match(BaselinePlayer("heuristic"), BaselinePlayer("random"), 1, max_moves=10,
                        start_sfen=MATE_IN_ONE, records=1)
    assert (result.wins, result.draws, result.losses) == (1, 0, 0)
    assert result.reasons == {"win_checkmate": 1}
    assert result.records[0].moves == ["G*5b"] and result.records[0].result == "1-0"
    assert result.plies == 1


def test_greedy_network_takes_the_best_legal_move() -> None:
    player = tiny_network("net", greedy=True, sample_plies=0)
    position = Position()
    for usi in ("7g7f", "3c3d", "8h2b+"):
        position.push_usi(usi)
    decision = player.decide([position])
    with torch.inference_mode():
        logits, value = player.model(encode_planes(to_tensors(position.compact()), 48))
    legal = position.legal_actions().astype(np.int64)
    best = legal[int(torch.argmax(logits[0, legal]))]
    move = decision.moves[0]
    assert move in position.legal_moves()
    assert move_to_action(move, position.turn) == best
    assert decision.values[0] == pytest.approx(float(value[0]))
    assert 0.0 < decision.probabilities[0] <= 1.0


class Prefers(nn.Module):
    """A stand-in policy with fixed logits: the given actions first, in the given order."""

    def __init__(self, *actions: int) -> None:
        super().__init__()
        self.logits = torch.zeros(NUM_ACTIONS)
        for rank, action in enumerate(actions):
            self.logits[action] = float(len(actions) - rank)

    def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = planes.shape[0]
        return self.logits.expand(n, -1), torch.zeros(n)


def test_network_player_feeds_the_input_layout_its_model_was_built_for() -> None:
    for attack_planes in (False, True):
        model_config = ModelConfig(size="tiny", attack_planes=attack_planes)
        weights = export_weights(build_model(model_config))
        player = PolicyPlayer.from_weights("net", model_config, weights, 48)
        assert player.attack_planes is attack_planes
        assert player.choose([Position()])[0] in Position().legal_moves()


@pytest.mark.parametrize("avoid", [True, False])
def test_avoid_repetition_leaves_the_cycle(avoid: bool) -> None:
    shuffle, push, corner = (move_to_action(Move.from_usi(u), Color.BLACK)
                             for u in ("5i4h", "7g7f", "9i8i"))
    player = PolicyPlayer("net", Prefers(shuffle, push, corner), 48, avoid_repetition=avoid)
    position = Position()
    assert player.choose([position]) == [Move.from_usi("5i4h")]  # a new position: no change
    for usi in ("5i4h", "5a4b", "4h5i", "4b5a"):
        position.push_usi(usi)
    expected = "7g7f" if avoid else "5i4h"  # 5i4h would repeat the position after ply 1
    assert player.choose([position]) == [Move.from_usi(expected)]
    # Two kings alone: after a cycle, the preferred 9i8i would repeat; 9h and 8h are new.
    kings = Position("8k/9/9/9/9/9/9/9/K8 b - 1")
    for usi in ("9i8i", "1a2a", "8i9i", "2a1a"):
        kings.push_usi(usi)
    move = player.choose([kings])[0]
    repeats = move_to_action(move, Color.BLACK) in kings.repeating_actions()
    assert move in kings.legal_moves() and repeats is not avoid


def test_greedy_games_repeat_unless_the_opening_is_sampled() -> None:
    def games(sample_plies: int) -> set[tuple[str, ...]]:
        a = tiny_network("a", 1, greedy=True, sample_plies=sample_plies)
        b = tiny_network("b", 2, greedy=True, sample_plies=sample_plies)
        result = play_match(a, b, 6, max_moves=24, records=6)
        return {tuple(r.moves) for r in result.records}

    assert len(games(0)) == 2  # one game per colour assignment, replayed
    assert len(games(6)) > 2


def test_network_moves_are_always_legal_in_sampled_play() -> None:
    player = tiny_network("net", greedy=False, temperature=2.0)
    result = play_match(player, BaselinePlayer("random"), 8, max_moves=48, games_at_once=3)
    assert result.games == 8 and result.plies > 8  # Position.push raises on an illegal move


def test_merge_adds_parts_of_one_match() -> None:
    a = play_match(BaselinePlayer("heuristic"), BaselinePlayer("random"), 3, max_moves=60)
    b = play_match(BaselinePlayer("heuristic"), BaselinePlayer("random"), 2, max_moves=60,
                   first_game=3)
    both = a.merge(b)
    assert both.games == 5 and sum(both.as_black) == 3  # games 0, 2, 4
    assert both.plies == a.plies + b.plies
    with pytest.raises(ValueError, match="cannot merge 'x' vs 'random'"):
        a.merge(MatchResult("x", "random"))


def test_add_game_counts_by_colour_and_reason() -> None:
    r = MatchResult("p", "q")
    r.add_game(Color.WHITE, Outcome(Color.WHITE, Termination.PERPETUAL_CHECK), 30)
    r.add_game(Color.BLACK, Outcome(None, Termination.SENNICHITE), 40)
    assert r.as_white == [1, 0, 0] and r.as_black == [0, 1, 0]
    assert r.reasons == {"win_perpetual_check": 1, "draw_sennichite": 1}
    assert r.score == pytest.approx(0.75)


def test_evaluator_plays_a_network_against_baselines() -> None:
    cfg = config()
    torch.manual_seed(3)
    weights = export_weights(build_model(cfg.model))
    policy = Contestant("ts-100", cfg.model, weights)
    results = Evaluator(cfg).evaluate(
        policy, [Contestant.baseline("random"), Contestant.baseline("heuristic")], 4, seed=5)
    assert [(r.player, r.opponent, r.games) for r in results] == [
        ("ts-100", "random", 4), ("ts-100", "heuristic", 4)]
    assert all(len(r.records) == 2 for r in results)
    again = Evaluator(cfg).evaluate(policy, [Contestant.baseline("random")], 4, seed=5)
    assert again[0].records == results[0].records  # seeded: reproducible


def test_evaluator_errors_name_the_problem() -> None:
    cfg = config()
    evaluator = Evaluator(cfg)
    with pytest.raises(ValueError, match="unknown scripted player 'stockfish'"):
        Contestant.baseline("stockfish")
    with pytest.raises(ValueError, match="two different players, got 'random' twice"):
        evaluator.match(Contestant.baseline("random"), Contestant.baseline("random"), 2, seed=0)
    with pytest.raises(ValueError, match="'net' has no weights"):
        evaluator.match(Contestant("net", cfg.model), Contestant.baseline("random"), 2, seed=0)
    with pytest.raises(ValueError, match="unknown scripted player 'x'"):
        BaselinePlayer("x")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        tiny_network("n", temperature=0.0)


@pytest.mark.slow
@pytest.mark.parametrize(("priority", "check"), [
    ("idle", "os.sched_getscheduler(0) == os.SCHED_IDLE"),
    ("low", "os.nice(0) >= 10"),
    ("normal", "os.sched_getscheduler(0) == os.SCHED_OTHER"),
])
def test_lower_priority_in_a_child_process(priority: str, check: str) -> None:
    code = (f"import os; from actors.evaluation import lower_priority; "
            f"lower_priority({priority!r}); print({check})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_unknown_priority_is_named() -> None:
    with pytest.raises(ValueError, match="unknown priority 'urgent'"):
        lower_priority("urgent")
