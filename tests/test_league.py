"""League self-play without Ray: the pool (add, evict, PFSP, state) and a worker's league games."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.league_games import LeagueAssignment, LeagueEnv
from actors.self_play import SelfPlayWorker
from keisei_ray.codec import decode
from keisei_ray.config import Config, ConfigError, LeagueConfig
from keisei_ray.config_loading import load_config
from keisei_ray.training.league import League
from learner.model import export_weights
from shogi import Move, Observation, move_to_action
from tests.test_self_play import GAMMA, LAM, MATE_SFEN, V_BOOT, V_STATE, ScriptedWorker

# ----------------------------------------------------------------------------- the pool


def league(**overrides: object) -> League:
    return League(LeagueConfig(**{"enabled": True, **overrides}), seed=5)


def test_add_and_evict_the_oldest() -> None:
    pool = league(pool_size=2)
    for version in (0, 3, 6):
        pool.add(version, f"w{version}", update=version)
    assert [m.version for m in pool.members.values()] == [3, 6]
    assert set(pool.weights) == set(pool.members) == {1, 2}


def test_evict_the_weakest_but_never_the_newcomer() -> None:
    pool = league(pool_size=3, evict="weakest")
    for version in range(3):
        pool.add(version, None, update=version)
    pool.record([(0, 10, 2, 0), (1, 10, 9, 0), (2, 10, 5, 2)])  # the learner beats 1 most
    pool.add(3, None, update=3)
    assert list(pool.members) == [0, 2, 3]
    pool.record([(3, 4, 4, 0)])  # 3 is now the weakest (4.5 / 5), whatever its age
    pool.add(4, None, update=4)
    assert list(pool.members) == [0, 2, 4]  # and the newcomer is never a candidate


def test_pfsp_weights_are_f_hard_of_the_learner_score() -> None:
    pool = league(pfsp_power=2.0)
    for version in range(3):
        pool.add(version, None, update=version)
    pool.record([(0, 9, 9, 0), (1, 3, 0, 2)])  # member 2: no games
    x = np.array([(9 + 0.5) / 10, (1 + 0.5) / 4, 0.5])  # prior: one drawn game
    expected = (1 - x) ** 2 / ((1 - x) ** 2).sum()
    np.testing.assert_allclose(pool.probabilities(), expected)
    draws = pool.sample(20_000)
    shares = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(shares, expected, atol=0.02)
    uniform = league(pfsp_power=0.0)
    for version in range(2):
        uniform.add(version, None, update=version)
    uniform.record([(0, 50, 50, 0)])
    np.testing.assert_allclose(uniform.probabilities(), [0.5, 0.5])


def test_decay_and_snapshot_interval() -> None:
    pool = league(snapshot_interval=3, win_rate_decay=0.5)
    pool.add(0, None, update=0)
    pool.record([(0, 4, 4, 0)])
    added = [pool.on_update(u, u, None) for u in range(1, 7)]
    assert [a is not None for a in added] == [False, False, True, False, False, True]
    member = pool.members[0]
    assert member.games == pytest.approx(4 * 0.5 ** 6) and member.total_games == 4


def test_an_evicted_member_in_use_is_retired_until_its_games_end() -> None:
    pool = league(pool_size=1)
    pool.add(0, "w0", update=0)
    pool.report_in_use(worker_id=7, member_ids=[0])
    pool.add(1, "w1", update=1)
    assert list(pool.members) == [1] and list(pool.retired) == [0]
    assert pool.weights == {0: "w0", 1: "w1"}  # workers still get member 0's weights
    pool.record([(0, 1, 1, 0)])  # its games still count
    assert pool.retired[0].total_wins == 1
    pool.report_in_use(worker_id=7, member_ids=[1])
    assert not pool.retired and pool.weights == {1: "w1"}


def test_a_worker_that_left_no_longer_holds_a_retired_member() -> None:
    pool = league(pool_size=1)
    pool.add(0, "w0", update=0)
    pool.report_in_use(worker_id=3, member_ids=[0])
    pool.add(1, "w1", update=1)
    assert list(pool.retired) == [0]
    pool.forget_worker(3)
    assert not pool.retired and pool.weights == {1: "w1"} and not pool.in_use


def test_state_round_trip_continues_the_same_draws() -> None:
    pool = league(pool_size=3, evict="weakest")
    for version in range(4):
        pool.add(version, f"w{version}", update=version)
        pool.record([(version, 3, version % 2, 1)])
        pool.on_update(version + 1, version, None)
    pool.report_in_use(0, [0, 2])
    pool.sample(5)
    state = json.loads(json.dumps(pool.state_dict()))  # what a checkpoint holds
    copy = league(pool_size=3, evict="weakest")
    copy.load_state_dict(state, dict(pool.weights))
    assert copy.state_dict() == pool.state_dict()
    assert copy.sample(50) == pool.sample(50)
    with pytest.raises(ValueError, match="no weights for member"):
        league().load_state_dict(state, {})


def test_league_share_must_leave_self_play() -> None:
    with pytest.raises(ConfigError, match="league.share"):
        load_config(None, ["league.enabled=true", "league.share=0.6",
                           "train.opponent_share=0.4"])


# ----------------------------------------------------------------------------- league games


class ScriptedLeagueWorker(ScriptedWorker):
    """The scripted learner of test_self_play; the pool members play the same script."""

    replies: list[int]

    def _league_replies(self, members: np.ndarray, obs: Observation) -> np.ndarray:
        self.replies.extend(members.tolist())
        return ScriptedWorker._policy(self, obs)[0]


def scripted_league_worker(steps: int) -> ScriptedLeagueWorker:
    cfg = load_config(None, ["model.size=tiny", f"train.rollout_steps={steps}",
                             "train.games_per_worker=2", "league.enabled=true",
                             "league.share=0.5", f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedLeagueWorker(cfg, worker_id=0)
    worker.replies = []
    assert worker.num_self == 1 and worker.num_league == 1 and worker.league is not None
    worker.league = LeagueEnv(1, start_sfen=MATE_SFEN)
    worker.obs = None
    return worker


def test_league_games_fold_the_reply_into_the_learners_transition() -> None:
    worker = scripted_league_worker(steps=2)
    weights = export_weights(worker.model)
    plan = LeagueAssignment(members=[4], weights={4: [weights]})
    # Game 1 (learner Black): member 4 opens 9c9d, the learner mates with G*1b. Game 2 (learner
    # White, to move): 9c9d, and member 4 mates with G*1b.
    summary, payload = worker.collect(weights, 0, plan)
    batch = decode(payload)
    assert summary.league_results == ((4, 2, 1, 0),)
    assert summary.opponent_games == 0 and summary.league_in_use == (4,)
    assert worker.replies == [4, 4, 4]  # game 1's opening, game 2's mate, game 3's opening
    np.testing.assert_allclose(batch.returns[-2:], [1.0, -1.0])
    np.testing.assert_allclose(batch.advantage[-2:], [1.0 - V_STATE, -1.0 - V_STATE])
    color = [move_to_action(Move.from_usi("G*1b"), 0), move_to_action(Move.from_usi("9c9d"), 1)]
    assert batch.action[-2:].tolist() == color


def test_league_bootstrap_keeps_the_sign() -> None:
    # The learner's move and the member's reply leave the learner to move: +V, not -V.
    cfg = load_config(None, ["model.size=tiny", "train.rollout_steps=1",
                             "train.games_per_worker=2", "league.enabled=true",
                             "league.share=0.5", f"ppo.gamma={GAMMA}", f"ppo.gae_lambda={LAM}"])
    worker = ScriptedWorker(cfg, worker_id=0)
    weights = export_weights(worker.model)
    _, payload = worker.collect(weights, 0, LeagueAssignment([0], {0: [weights]}))
    batch = decode(payload)
    assert len(batch) == 2  # slot-major: the self-play row, then the league row
    # Two plies (the member's reply is folded in): gamma^2 per ply, like two self-play rows.
    np.testing.assert_allclose(batch.advantage[-1:], [GAMMA**2 * V_BOOT - V_STATE], rtol=1e-6)


def league_config(steps: int = 6) -> Config:
    return load_config(None, ["model.size=tiny", f"train.rollout_steps={steps}",
                              "train.games_per_worker=6", "league.enabled=true",
                              "league.share=0.5", "env.max_moves=24"])


def test_a_running_game_keeps_its_opponent_and_needs_its_weights() -> None:
    worker = SelfPlayWorker(league_config(), worker_id=1)
    weights = export_weights(worker.model)
    summary, _ = worker.collect(weights, 0, LeagueAssignment([0, 1, 0], {0: [weights],
                                                                         1: [weights]}))
    assert worker.league is not None and worker.league.members == [0, 1, 0]
    assert summary.league_in_use == (0, 1) and not summary.league_results
    # New games would play member 2; the running ones go on against 0 and 1, whose networks
    # the worker keeps (by member id). A restored worker has none yet: it needs their weights.
    restored = SelfPlayWorker(league_config(), worker_id=1)
    restored.set_state(worker.get_state())
    with pytest.raises(ValueError, match=r"no weights for league member\(s\) \[0, 1\]"):
        restored.collect(weights, 0, LeagueAssignment([2, 2, 2], {2: [weights]}))
    plan = LeagueAssignment([2, 2, 2], {0: [weights], 1: [weights], 2: [weights]})
    summary, _ = worker.collect(weights, 0, plan)  # the cap (24 plies) ends every game
    assert sum(r.games for r in summary.league_results) == 3
    assert {r.member_id for r in summary.league_results} == {0, 1}
    assert worker.league.members == [2, 2, 2] and summary.league_in_use == (2,)
    worker.collect(weights, 0, plan)
    assert set(worker.opponent_models) == {2}  # members no game plays are dropped


def test_worker_state_round_trip_with_league_games() -> None:
    cfg = league_config(steps=5)
    a = SelfPlayWorker(cfg, worker_id=2)
    weights = export_weights(a.model)
    other = {k: v + 0.01 for k, v in weights.items()}  # a different past self
    plan = LeagueAssignment([0, 1, 1], {0: [weights], 1: [other]})
    a.collect(weights, 0, plan)
    b = SelfPlayWorker(cfg, worker_id=2)
    b.set_state(a.get_state())
    for _ in range(4):
        sa, pa = a.collect(weights, 0, plan)
        sb, pb = b.collect(weights, 0, plan)
        assert pa == pb and sa.league_results == sb.league_results
