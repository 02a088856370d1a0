"""The worker's rows against independent computations: every row's value, reward, return and
behaviour version.

A scripted policy plays random legal moves (and mates when it may) and reports a distinct value
for every state, a hash of the state. The test replays each slot's games with `shogi.Position`
from the batch's own states and actions, judges every game end by the rules, and computes the
forward-view lambda-return of every row (tests/test_gae.py's naive `lambda_returns`), so a row
that got another state's value or bootstrap (an off-by-one in the worker's next values) fails.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch

from actors.self_play import SelfPlayWorker
from keisei_ray.codec import ExperienceBatch, decode
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from learner import Learner
from learner.features import encode_planes, legal_mask, to_tensors
from learner.model import LegalPolicy, build_model, export_weights, load_weights
from shogi import Color, CompactState, Move, Observation, Position, VecEnv, move_to_action
from shogi.duel import OpponentEnv
from tests.test_gae import lambda_returns
from tests.test_self_play import MATE_SFEN, ScriptedOpponent

GAMMA, LAM = 0.9, 0.8
MAX_MOVES = 6
STEPS = 5


def state_value(state: CompactState) -> np.ndarray:
    """A distinct value in [-0.8, 0.8] for every state: a hash of its fields."""
    out = []
    for i in range(len(state)):
        row = state.take([i])
        data = b"".join(np.ascontiguousarray(getattr(row, f.name)).tobytes()
                        for f in dataclasses.fields(CompactState))
        out.append((zlib.crc32(data) % 20011) / 20011 * 1.6 - 0.8)
    return np.array(out, np.float32)


def version_log_prob(version: int) -> float:
    return -0.01 * (1 + version)


class HashValueWorker(SelfPlayWorker):
    """Random legal moves, G*1b (the mate of MATE_SFEN) half the time it is legal; the value
    of each state is its hash; the log-prob says which version played."""

    rng = np.random.default_rng(0)

    def _policy(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(obs.state)
        actions = np.empty(n, np.int16)
        for i in range(n):
            row = obs.legal_actions[obs.legal_offsets[i]:obs.legal_offsets[i + 1]]
            mate = move_to_action(Move.from_usi("G*1b"), int(obs.state.color[i]))
            take_mate = mate in row and self.rng.random() < 0.5
            actions[i] = mate if take_mate else self.rng.choice(row)
        return (actions, np.full(n, version_log_prob(self.version), np.float32),
                state_value(obs.state))

    def _values(self, state: CompactState) -> np.ndarray:
        return state_value(state)


def hash_worker() -> HashValueWorker:
    cfg = load_config(None, ["model.size=tiny", f"train.rollout_steps={STEPS}",
                             "train.games_per_worker=4", "train.opponent_share=0.5",
                             f"env.max_moves={MAX_MOVES}", f"ppo.gamma={GAMMA}",
                             f"ppo.gae_lambda={LAM}"])
    worker = HashValueWorker(cfg, worker_id=0)
    assert worker.num_self == 2
    worker.env = VecEnv(2, MAX_MOVES, seed=0, start_sfen=MATE_SFEN)
    worker.duels = OpponentEnv(2, ScriptedOpponent(), MAX_MOVES, start_sfen=MATE_SFEN)
    worker.obs = worker._observe()
    return worker


def result_for(position: Position, mover: Color) -> float | None:
    """The game's result for `mover` once it is over (+1, -1, 0 for a draw or the cap)."""
    outcome = position.outcome()
    if outcome is None:
        return None
    return 0.0 if outcome.winner is None else 1.0 if outcome.winner == mover else -1.0


class SlotReplay:
    """One slot's games replayed by the rules from the rows the worker shipped."""

    def __init__(self, duel_colour: Color | None) -> None:
        self.agent = duel_colour  # None: self-play; else the learner's colour in the game
        self.opponent = ScriptedOpponent()
        self.position = self._new_game()
        self.games = 0

    def _new_game(self) -> Position:
        position = Position(MATE_SFEN, max_moves=MAX_MOVES)
        if self.agent is not None and position.turn != self.agent:
            position.push(self.opponent.choose(position))  # the opponent opens
        return position

    def rollout(self, batch_rows: ExperienceBatch, after: CompactState) -> dict[str, list]:
        """The fields `lambda_returns` takes, for this slot's rows of one collect."""
        n = len(batch_rows)
        rows: dict[str, list] = {"values": [], "rewards": [0.0] * n, "terminal": [False] * n,
                                 "stop": [False] * n, "boot": [np.nan] * n, "sign": [],
                                 "plies": []}
        game_first_row = 0
        for t in range(n):
            state = batch_rows.state.take([t])
            assert state.equals(self.position.compact()), f"row {t} is not the replayed state"
            rows["values"].append(float(state_value(state)[0]))
            mover = self.position.turn
            self.position.push_action(int(batch_rows.action[t]))
            result = result_for(self.position, mover)
            plies = 1
            if result is None and self.agent is not None:
                self.position.push(self.opponent.choose(self.position))
                plies = 2
                result = result_for(self.position, mover)
            rows["sign"].append(1.0 if plies == 2 else -1.0)
            rows["plies"].append(plies)
            if result is None:
                continue
            rows["rewards"][t], rows["terminal"][t], rows["stop"][t] = result, True, True
            if self.agent is None and t > game_first_row:  # the other player's last move
                rows["rewards"][t - 1], rows["terminal"][t - 1] = -result, True
            game_first_row = t + 1
            self.games += 1
            if self.agent is not None:
                self.agent = self.agent.opponent()
            self.position = self._new_game()
        assert after.equals(self.position.compact())
        rows["boot"][-1] = float(state_value(after)[0])  # the rollout ends: bootstrap
        return rows


def test_every_row_gets_its_own_value_reward_and_lambda_return() -> None:
    worker = hash_worker()
    weights = export_weights(worker.model)
    replays = [SlotReplay(None), SlotReplay(None), SlotReplay(Color.BLACK),
               SlotReplay(Color.WHITE)]
    seen = {"decided": 0, "cap": 0, "two games in a rollout": 0, "across collects": 0}
    for version in range(8):
        summary, payload = worker.collect(weights if version == 0 else None, 0)
        batch = decode(payload)
        assert len(batch) == 4 * STEPS
        # The worker's per-state values reach their rows.
        np.testing.assert_array_equal(batch.value, state_value(batch.state))
        after = worker.obs.state
        for slot, replay in enumerate(replays):
            part = list(range(slot * STEPS, (slot + 1) * STEPS))  # slot-major rows
            rows = replay.rollout(_take(batch, part), after.take([slot]))
            expected = lambda_returns(rows["values"], rows["rewards"], rows["terminal"],
                                      rows["stop"], rows["boot"], rows["sign"], rows["plies"],
                                      GAMMA, LAM)
            np.testing.assert_allclose(batch.returns[part], expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(batch.advantage[part],
                                       np.array(expected) - rows["values"], rtol=1e-5,
                                       atol=1e-6)
            seen["two games in a rollout"] += sum(rows["stop"][:-1]) >= 1 and rows["stop"][-1]
            seen["across collects"] += not rows["stop"][-1]
        seen["decided"] += (summary.black_wins + summary.white_wins + summary.opponent_games
                            - summary.opponent_draws)
        seen["cap"] += summary.cap_draws
    # The rollouts held every case the conventions distinguish.
    assert all(count > 0 for count in seen.values()), seen


def _take(batch: ExperienceBatch, rows: list[int]) -> ExperienceBatch:
    offsets = batch.legal_offsets
    counts = np.diff(offsets)[rows]
    legal = np.concatenate([batch.legal_actions[offsets[r]:offsets[r + 1]] for r in rows])
    return ExperienceBatch(
        state=batch.state.take(rows), action=batch.action[rows],
        log_prob=batch.log_prob[rows], value=batch.value[rows],
        advantage=batch.advantage[rows], returns=batch.returns[rows],
        legal_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
        legal_actions=legal, policy_version=batch.policy_version)


def test_every_row_is_played_by_the_batch_version() -> None:
    # Versions change with every collect while games run across collects: a row played by an
    # earlier version (one held back for its outcome) would carry that version's log-prob.
    worker = hash_worker()
    weights = export_weights(worker.model)
    for version in range(6):
        _, payload = worker.collect(weights, version)
        batch = decode(payload)
        assert batch.policy_version == version
        np.testing.assert_array_equal(batch.log_prob, np.float32(version_log_prob(version)))


def lag_config(lag: int) -> Config:
    return load_config(None, ["model.size=tiny", "train.rollout_steps=4",
                              "train.games_per_worker=4", "env.max_moves=30",
                              f"ppo.max_policy_lag={lag}", "ppo.learning_rate=0.05",
                              "ppo.minibatch_size=16", "ppo.epochs=1"])


@pytest.mark.parametrize("lag", [0, 1])
def test_the_behaviour_version_of_every_row(lag: int) -> None:
    # A real worker and learner: with lag 0 each collect uses the learner's current weights,
    # with lag 1 the previous ones (as pipelining does). Every row's behaviour log-prob must be
    # the one the weights of its batch's version give its action, and that version must be
    # within the lag bound of the learner that trains on it.
    config = lag_config(lag)
    learner = Learner(config, capacity=64, device="cpu", total_timesteps=10_000, seed=1)
    worker = SelfPlayWorker(config, worker_id=0)
    published = {0: learner.weights()[1]}
    for _ in range(6):
        version = max(learner.version - lag, 0)
        _, payload = worker.collect(published[version], version)
        batch = decode(payload)
        behaviour = _log_probs(config, published[batch.policy_version], batch)
        np.testing.assert_allclose(batch.log_prob, behaviour, atol=1e-5)
        assert 0 <= learner.version - batch.policy_version <= lag
        assert learner.update([batch])["accepted"] == len(batch)
        published[learner.version] = learner.weights()[1]
    assert learner.version == 6


def _log_probs(config: Config, weights: dict[str, np.ndarray],
               batch: ExperienceBatch) -> np.ndarray:
    model = build_model(config.model)
    load_weights(model, weights)
    planes = encode_planes(to_tensors(batch.state), config.env.max_moves)
    mask = legal_mask(batch.legal_offsets, batch.legal_actions, len(batch))
    with torch.inference_mode():
        logits, _ = model.eval()(planes)
        policy = LegalPolicy.from_mask(logits, mask)
        return policy.log_prob(torch.from_numpy(batch.action.astype(np.int64))).numpy()
