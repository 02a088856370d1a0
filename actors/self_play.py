"""The self-play worker: plays E games at once with a CPU copy of the policy.

`SelfPlayWorker` is plain Python (testable without Ray); `SelfPlayActor` is its thin Ray
wrapper. One `collect` plays T plies of every game with batched inference, computes two-player
GAE per game, and returns a small summary for the driver plus the encoded batch for the
learner. Games continue across collect calls: a rollout boundary is not a game boundary.

Every row of a batch is played by the collect's policy version, so the batch's stamp is the
behaviour version of each of its rows and the learner's lag bound holds row by row. A game
still running when the rollout ends bootstraps its last row from the value of the state after
it (a truncation by the rollout, not by the game); nothing is held back for the next collect.
(Holding that row back for its exact outcome made it a version older than its batch: two
versions behind the learner with pipelining, one with `ppo.max_policy_lag=0`.)

Over 400 lines because `collect`, the worker's hot loop, and its game bookkeeping (folding
replies, shaping, GAE, state for checkpoints) belong together.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from torch.profiler import record_function

from actors.inference import RemotePolicy, draw_seed, fetch_weights
from actors.league_games import (
    LeagueAssignment,
    LeagueEnv,
    LeagueResult,
    ReplyFn,
    resolve,
    slot_counts,
)
from actors.metrics import WorkerMetrics
from actors.teacher import SearchTeacher, TeacherStep
from keisei_ray.codec import ExperienceBatch, encode, summarize_games
from keisei_ray.config import Config
from learner.features import encode_planes, legal_mask, to_tensors
from learner.gae import compute_gae
from learner.model import act_csr, build_model, choose_actions, load_weights
from learner.profiling import ProfileOutput, ProfileSession
from shogi import (
    Color,
    CompactState,
    FinishedGame,
    Observation,
    Termination,
    VecEnv,
    material_balance,
)
from shogi.duel import DuelStep, OpponentEnv, duel_opponent

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BatchSummary:
    """What the driver reads of a batch (the bytes go to the learner untouched)."""

    worker_id: int
    version: int  # policy version that played the batch
    transitions: int
    nbytes: int
    collect_s: float  # seconds the collect took, weight loading included
    node_id: str | None
    incarnation: int = 0  # 0 for the first life of the actor; changes when Ray restarts it
    opponent_games: int = 0  # games against the fixed opponent (not in the counts above)
    opponent_wins: int = 0
    opponent_draws: int = 0
    games: int = 0
    black_wins: int = 0
    white_wins: int = 0
    draws: int = 0
    cap_draws: int = 0
    total_plies: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    # League games (league.*): finished ones per member, and the members still being played.
    league_results: tuple[LeagueResult, ...] = ()
    league_in_use: tuple[int, ...] = ()
    # Batched inference (inference.*): requests the inference actor answered, and whether the
    # worker gave up on it in this collect (it played the rest with its own copy).
    inference_served: int = 0
    inference_lost: bool = False


# A collect's weights: the arrays, or (with the inference actor) a call that fetches them only
# when the worker needs its own copy.
Weights = Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]]


def worker_seeds(seed: int, worker_id: int, incarnation: int = 0) -> tuple[int, int]:
    """Distinct, reproducible (env seed, sampling seed) for a worker."""
    env_seed, torch_seed = np.random.SeedSequence([seed, worker_id, incarnation]).generate_state(2)
    return int(env_seed), int(torch_seed)


def csr_take(offsets: np.ndarray, actions: np.ndarray,
             rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR (offsets, actions) of the selected rows, in the order given."""
    starts = offsets[rows].astype(np.int64)
    counts = offsets[rows + 1].astype(np.int64) - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(counts, out=new_offsets[1:])
    positions = np.repeat(starts - new_offsets[:-1], counts) + np.arange(new_offsets[-1])
    return new_offsets, actions[positions]


class SelfPlayWorker:
    """Plays `train.games_per_worker` games at once and turns them into experience batches."""

    def __init__(self, config: Config, worker_id: int, *, incarnation: int = 0) -> None:
        self.config = config
        self.worker_id = worker_id
        train = config.train
        self.num_games = train.games_per_worker
        self.steps = train.rollout_steps
        self.max_moves = config.env.max_moves
        self.incarnation = incarnation
        env_seed, torch_seed = worker_seeds(train.seed, worker_id, incarnation)
        # Slots [0, num_self) play themselves, then the fixed opponent's, then league games.
        self.num_self, duels, league = slot_counts(config)
        self.num_league = league
        impasse = config.env.impasse == "27"
        self.env = VecEnv(self.num_self, self.max_moves, seed=env_seed, impasse=impasse)
        self.duels: OpponentEnv | None = None
        if duels:
            self.duels = OpponentEnv(duels, duel_opponent(train.opponent, env_seed),
                                     self.max_moves, impasse=impasse)
        # League games start with the first collect's assignment (their opponents).
        self.league = LeagueEnv(league, self.max_moves, impasse=impasse) if league else None
        self.opponent_models: dict[int, torch.nn.Module] = {}  # league member id -> CPU copy
        if config.league.enabled and not league:
            log.warning("worker-%d: league.share=%g of %d games is no league game", worker_id,
                        config.league.share, self.num_games)
        torch.manual_seed(torch_seed)
        self.model = build_model(config.model).eval()
        self.generator = torch.Generator().manual_seed(torch_seed)
        self.version = -1  # the policy version of the current (or last) collect
        self.model_version = -1  # the version the worker's own copy holds
        # Batched inference: the actor this collect asks (None: the worker's own forward),
        # and the fetch of the collect's weights should the worker need its own copy.
        self.remote: RemotePolicy | None = None
        self._fetch: Callable[[], Mapping[str, np.ndarray]] | None = None
        # Search as a teacher (train.search.simulations > 0): it plays the self-play moves.
        self.teacher = (SearchTeacher(config, self.model, self.env, torch_seed)
                        if train.search.simulations and self.num_self else None)
        self._obs = self._observe()

    def _observe(self) -> Observation | None:
        """Self-play games first, then the games against the fixed opponent, then the league
        games (agent to move); None until the league games have started."""
        parts = [self.env.observe()]
        if self.duels is not None:
            parts.append(self.duels.observe())
        if self.league is not None:
            if not self.league.started:
                return None
            parts.append(self.league.observe())
        if len(parts) == 1:
            return parts[0]
        offsets, legal = _concat_csr([(o.legal_offsets, o.legal_actions) for o in parts])
        return Observation(state=CompactState.concat([o.state for o in parts]),
                           legal_offsets=offsets, legal_actions=legal)

    @property
    def obs(self) -> Observation:
        """The observation of every game (the league games must have started)."""
        if self._obs is None:
            raise RuntimeError(f"worker-{self.worker_id}: league games need an assignment "
                               "(collect with league=...)")
        return self._obs

    @obs.setter
    def obs(self, value: Observation | None) -> None:
        self._obs = value

    # ---------------------------------------------------------------- inference
    def _policy(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.remote is not None:
            with record_function("remote_inference"):
                reply = self.remote.evaluate(obs, draw_seed(self.generator))
            if reply is not None:
                return reply.actions, reply.log_probs, reply.values
        self._own_copy()
        with record_function("features"):
            planes = encode_planes(to_tensors(obs.state), self.max_moves,
                                   self.config.model.attack_planes)
        with record_function("forward"):
            # Sampled from the CSR legal actions: no dense [N, 13527] mask or logits.
            actions, log_probs, values = act_csr(self.model, planes, obs.legal_offsets,
                                                 obs.legal_actions, generator=self.generator)
        return actions.numpy(), log_probs.numpy(), values.numpy()

    @torch.inference_mode()
    def _values(self, state: CompactState) -> np.ndarray:
        if self.remote is not None:
            no_moves = Observation(state, np.zeros(len(state) + 1, np.int32), np.zeros(0, np.int16))
            reply = self.remote.evaluate(no_moves, 0, values_only=True)
            if reply is not None:
                return reply.values
        self._own_copy()
        _, values = self.model(encode_planes(to_tensors(state), self.max_moves,
                                             self.config.model.attack_planes))
        return values.float().numpy()

    def load(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        load_weights(self.model, weights)
        self.model.eval()
        self.version = self.model_version = version

    def _own_copy(self) -> None:
        """Load the collect's version into the worker's own copy if it holds another (with
        the inference actor the weights are fetched only now: it was lost)."""
        if self.model_version == self.version:
            return
        if self._fetch is None:
            raise RuntimeError(f"worker-{self.worker_id} has no weights for version "
                               f"{self.version}")
        self.load(self._fetch(), self.version)

    # ---------------------------------------------------------------- one rollout
    # Long by choice: the hot loop of the worker, one function so the per-ply data flow (observe,
    # act, step self-play / opponent / league games, fold rewards, shape, GAE, encode) reads in
    # one place over preallocated arrays.
    def collect(self, weights: Weights | None, version: int,
                league: LeagueAssignment | None = None, *,
                progress: float = 0.0) -> tuple[BatchSummary, bytes]:
        """Play `rollout_steps` plies of every game with policy `version`; encode the batch.

        `weights` may be None when the worker already holds `version`, or a call that fetches
        them (with the inference actor: only should the worker need its own copy, once the
        actor is gone). `league`: the opponents
        of the league games that start in this collect (needed when the worker plays any).
        `progress`: how far training is, in [0, 1] (it anneals the material shaping).
        """
        start = time.perf_counter()
        if callable(weights):
            self._fetch, self.version = weights, version
        elif version != self.model_version:
            if weights is None:
                raise ValueError(f"worker-{self.worker_id} holds version {self.model_version} "
                                 f"and was given no weights for version {version}")
            self.load(weights, version)
        else:
            self.version = version
        if self.teacher is not None:
            self._own_copy()  # the teacher searches with the own copy of this version
            self.teacher.shaping(self.config.reward.weight_at(progress))
        reply = self._begin_league(league)
        e, rows = self.num_games, self.steps
        values = np.zeros((rows, e), np.float32)
        log_probs = np.zeros((rows, e), np.float32)
        actions = np.zeros((rows, e), np.int16)
        rewards = np.zeros((rows, e), np.float32)
        terminated = np.zeros((rows, e), bool)
        game_over = np.zeros((rows, e), bool)
        next_values = np.zeros((rows, e), np.float32)
        # -1: the next state has the other player to move (self-play); +1: the learner again
        # (against the fixed opponent or a league member, whose reply is folded into the row).
        next_sign = np.full((rows, e), -1.0, np.float32)
        next_sign[:, self.num_self:] = 1.0
        states: list[CompactState] = []
        csr: list[tuple[np.ndarray, np.ndarray]] = []
        # The teacher's per-row fields (actors/teacher.py); no target and the network's value
        # wherever it does not play.
        search_values = np.zeros((rows, e), np.float32)
        teach_steps: list[TeacherStep] = []
        final_rows: list[tuple[int, int, CompactState]] = []
        finished: list[FinishedGame] = []
        duel_results: list[float] = []  # the learner's result in each game vs the opponent
        ns = self.num_self
        league_results: list[tuple[int, float]] = []  # (member, the learner's result)
        nl = self.num_games - self.num_league  # the first league slot

        def fold(r: int, first: int, duel: DuelStep) -> None:
            """Opponent games' step results into row r (the reply is part of the move)."""
            last = first + len(duel.rewards)
            rewards[r, first:last] = duel.rewards
            # Every end of a game is terminal for learning, the move cap (a draw) included.
            terminated[r, first:last] = duel.terminated | duel.truncated
            for game in duel.finished:
                s = first + game.slot
                game_over[r, s] = True
                final_rows.append((r, s, game.final_state))
                # The game may have ended on the opponent's reply: who moves in it?
                next_sign[r, s] = 1.0 if duel.final_agent_to_move[game.slot] else -1.0

        for r in range(rows):
            obs = self.obs
            a, lp, v = self._policy(obs)
            search_values[r] = v
            # ---- search as a teacher (issue 24): it chooses the self-play moves ----------
            if self.teacher is not None:
                teach = self.teacher.choose(obs)
                a[:ns], lp[:ns] = teach.actions, teach.log_probs
                search_values[r, :ns] = teach.values
                teach_steps.append(teach)
            # ------------------------------------------------------------------------------
            states.append(obs.state)
            csr.append((obs.legal_offsets, obs.legal_actions))
            actions[r], log_probs[r], values[r] = a, lp, v
            if self.duels is not None:
                duel = self.duels.step(a[ns:nl])
                fold(r, ns, duel)
                duel_results.extend(float(duel.rewards[g.slot]) for g in duel.finished)
            if self.league is not None:
                games = self.league.step(a[nl:], reply)
                fold(r, nl, games)
                league_results.extend(
                    (member, float(games.rewards[g.slot]))
                    for member, g in zip(games.members, games.finished, strict=True))
            with record_function("env_step"):
                step = self.env.step(a[:ns])
            if self.teacher is not None:
                self.teacher.advance(a[:ns], {game.slot for game in step.finished})
            rewards[r, :ns] = step.rewards
            terminated[r, :ns] = step.terminated | step.truncated  # the cap: a terminal draw
            for game in step.finished:
                s = game.slot
                game_over[r, s] = True
                finished.append(game)
                # The previous ply of this game (the opponent's last move) ends too: row r-1,
                # unless that row belongs to an earlier game, or to the previous collect (which
                # shipped it bootstrapped: the rollout ended while its game went on).
                if r > 0 and not game_over[r - 1, s]:
                    terminated[r - 1, s] = True
                    rewards[r - 1, s] = -step.rewards[s]
                final_rows.append((r, s, game.final_state))
            self.obs = self._observe()

        # A row against an opponent spans the learner's move and the reply (two plies: the same
        # side moves next, sign +1), or one ply when the game ended on the learner's move.
        plies = np.where(next_sign > 0, 2, 1).astype(np.int8)
        # Bootstraps: the next row's value, and the current states after the last row. Terminal
        # rows (every finished game's last two plies) ignore theirs.
        next_values[:-1] = values[1:]
        next_values[-1] = self._values(self.obs.state)
        all_state = CompactState.concat(states)  # row index r*E + slot
        weight = self.config.reward.weight_at(progress)
        if weight > 0:
            rewards += self._material_shaping(all_state, final_rows, next_sign, plies, weight)
        advantages, returns = compute_gae(values, rewards, next_values, terminated, game_over,
                                          gamma=self.config.ppo.gamma,
                                          lam=self.config.ppo.gae_lambda, next_sign=next_sign,
                                          plies=plies)

        # Every row ships, slot-major: one game's plies together.
        offsets, legal = _concat_csr(csr)
        s_idx, r_idx = np.divmod(np.arange(rows * e), rows)
        flat = r_idx * e + s_idx
        batch_offsets, batch_legal = csr_take(offsets, legal, flat)
        results, lengths, reasons = summarize_games(finished)
        targets = {}
        if self.teacher is not None:
            self.teacher.end_collect()
            targets = _teacher_fields(teach_steps, r_idx, s_idx)
        batch = ExperienceBatch(
            state=all_state.take(flat),
            action=actions[r_idx, s_idx],
            log_prob=log_probs[r_idx, s_idx],
            value=values[r_idx, s_idx],
            advantage=advantages[r_idx, s_idx],
            returns=returns[r_idx, s_idx],
            legal_offsets=batch_offsets,
            legal_actions=batch_legal,
            policy_version=version,
            worker_id=self.worker_id,
            game_results=results,
            game_lengths=lengths,
            game_reasons=reasons,
            search_value=search_values[r_idx, s_idx],
            **targets,
        )
        with record_function("encode"):
            payload = encode(batch)
        summary = _summarise(self.worker_id, version, len(flat), len(payload),
                             time.perf_counter() - start, finished)
        return dataclasses.replace(
            summary, incarnation=self.incarnation, opponent_games=len(duel_results),
            opponent_wins=sum(x > 0 for x in duel_results),
            opponent_draws=sum(x == 0 for x in duel_results),
            league_results=_league_results(league_results),
            league_in_use=tuple(self.league.in_use()) if self.league else (),
            inference_served=self.remote.served if self.remote else 0,
            inference_lost=bool(self.remote and self.remote.lost_reason)), payload

    # ---------------------------------------------------------------- league games
    def _begin_league(self, league: LeagueAssignment | None) -> ReplyFn:
        """Take the collect's league assignment: load the member networks the league games
        need (running games and new ones), drop the others; start games not yet begun."""
        if self.league is None:
            return _no_reply
        if league is None:
            raise ValueError(f"worker-{self.worker_id} plays {self.num_league} league games "
                             "and was given no league assignment")
        needed = set(self.league.in_use()) | set(league.members)
        missing = sorted(needed - set(league.weights) - set(self.opponent_models))
        if missing:
            raise ValueError(f"worker-{self.worker_id}: no weights for league member(s) "
                             f"{missing}")
        for member_id in sorted(needed - set(self.opponent_models)):
            model = build_model(self.config.model)
            load_weights(model, resolve(league.weights[member_id]))
            self.opponent_models[member_id] = model.eval()
        for member_id in set(self.opponent_models) - needed:
            del self.opponent_models[member_id]
        if self.league.assign(league.members, self._league_replies):
            self.obs = self._observe()
        return self._league_replies

    @torch.inference_mode()
    def _league_replies(self, members: np.ndarray, obs: Observation) -> np.ndarray:
        """The pool members' moves, one batched forward per member (sampled, like the
        learner's own moves, with the worker's generator)."""
        out = np.zeros(len(members), np.int64)
        planes = encode_planes(to_tensors(obs.state), self.max_moves,
                               self.config.model.attack_planes)
        mask = legal_mask(obs.legal_offsets, obs.legal_actions, len(obs.state))
        for member_id in sorted(set(members.tolist())):
            rows = np.flatnonzero(members == member_id)
            index = torch.from_numpy(rows)
            # The member networks stay in eval mode: call them directly (act() toggles modes,
            # a walk over every module that costs more than a small batch's forward).
            logits, _ = self.opponent_models[member_id](planes[index])
            a, _ = choose_actions(logits, mask[index], generator=self.generator)
            out[rows] = a.numpy()
        return out

    # ---------------------------------------------------------------- state (checkpoints)
    def get_state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this worker exactly: the running games and the
        sampling generator (numpy arrays and plain values). The weights are not part of it:
        the driver hands the current ones to the next collect."""
        return {
            "worker_id": self.worker_id,
            "env": self.env.get_state(),
            "duels": None if self.duels is None else self.duels.get_state(),
            "league": None if self.league is None else self.league.get_state(),
            "generator": self.generator.get_state().numpy(),
            "teacher": None if self.teacher is None else self.teacher.get_state(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore `get_state`'s result (same shape of worker); ValueError if it does not fit.

        A state saved by an older worker may hold rows it held back for its next collect
        ("carry"): they are not shipped (at most one transition per game is lost)."""
        generator = torch.Generator()
        generator.set_state(torch.from_numpy(np.array(state["generator"], dtype=np.uint8)))
        if (state.get("duels") is None) != (self.duels is None):
            raise ValueError("worker state: games against the fixed opponent do not match "
                             "train.opponent_share")
        if (state.get("league") is None) != (self.league is None):
            raise ValueError("worker state: league games do not match league.enabled / "
                             "league.share")
        self.env.set_state(state["env"])  # checks the games; unchanged if it raises
        if self.duels is not None:
            self.duels.set_state(state["duels"])
        if self.league is not None:
            self.league.set_state(state["league"])
            self.opponent_models = {}  # the next collect loads the members its games play
        if "carry" in state:
            log.info("worker-%d: the saved state holds rows held back by an older version; "
                     "they are not shipped", self.worker_id)
        if self.teacher is not None:
            if state.get("teacher") is None:
                log.info("worker-%d: the saved state has no search teacher (train.search was "
                         "off): its search starts from its seed", self.worker_id)
                self.teacher.sync(self.env)
            else:
                self.teacher.set_state(state["teacher"], self.env)
        self.obs = self._observe()
        self.generator = generator

    def _material_shaping(self, all_state: CompactState,
                          final_rows: list[tuple[int, int, CompactState]],
                          next_sign: np.ndarray, plies: np.ndarray,
                          coefficient: float) -> np.ndarray:
        """Potential-based shaping c * (gamma^k * sign * M(next) - M(before)) per row, [T, E].

        M is the material balance from the side to move's view, so the state after a move is
        worth -M(next) to its mover in self-play (sign -1), +M(next) when the same side moves
        again (sign +1, k = 2 plies: the reply is folded in). A finished game's next state is
        its final position, which keeps its potential: over a game the shaping adds about
        c * (the final balance) to the result, a small prize of its own that keeps returns
        near the result, inside the tanh value head's range. `coefficient` anneals to 0 with
        training progress (`RewardConfig.weight_at`), the final potential's weight with it, so the
        objective at the end is the game result alone.
        """
        e = self.num_games
        before = material_balance(all_state).reshape(-1, e)
        after = np.empty_like(before)
        after[:-1] = before[1:]
        after[-1] = material_balance(self.obs.state)
        for r, s, final in final_rows:
            after[r, s] = material_balance(final)[0]
        discount = self.config.ppo.gamma ** plies.astype(np.float64)
        shaping = coefficient * (discount * next_sign * after - before)
        return shaping.astype(np.float32)


def _teacher_fields(steps: list[TeacherStep], r_idx: np.ndarray,
                    s_idx: np.ndarray) -> dict[str, np.ndarray]:
    """The batch's target fields (keisei_ray/codec.py) from the teacher's steps, in the
    batch's row order (ply r_idx, slot s_idx); slots the teacher does not play have none."""
    ns = len(steps[0].actions)
    counts = np.zeros(len(r_idx), np.uint16)
    rest = np.zeros(len(r_idx), np.float16)
    index: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for j, (r, s) in enumerate(zip(r_idx.tolist(), s_idx.tolist(), strict=True)):
        if s < ns and steps[r].has_target[s]:
            counts[j] = len(steps[r].index[s])
            rest[j] = steps[r].rest[s]
            index.append(steps[r].index[s])
            probs.append(steps[r].probs[s])
    return {"target_counts": counts, "target_rest": rest,
            "target_index": np.concatenate([np.zeros(0, np.uint16), *index]).astype(np.uint16),
            "target_probs": np.concatenate([np.zeros(0), *probs]).astype(np.float16)}


def _concat_csr(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    sizes = [int(o[-1]) for o, _ in parts]
    shifts = np.cumsum([0, *sizes[:-1]])
    offsets = np.concatenate([parts[0][0][:1]] + [o[1:] + shift
                                                  for (o, _), shift in zip(parts, shifts,
                                                                           strict=True)])
    return offsets.astype(np.int32), np.concatenate([a for _, a in parts])


def _summarise(worker_id: int, version: int, transitions: int, nbytes: int, seconds: float,
               finished: list[FinishedGame]) -> BatchSummary:
    reasons = Counter(g.outcome.reason.value for g in finished)
    return BatchSummary(
        worker_id=worker_id, version=version, transitions=transitions, nbytes=nbytes,
        collect_s=seconds, node_id=_node_id(), games=len(finished),
        black_wins=sum(g.outcome.winner == Color.BLACK for g in finished),
        white_wins=sum(g.outcome.winner == Color.WHITE for g in finished),
        draws=sum(g.outcome.winner is None and g.outcome.reason != Termination.MAX_MOVES
                  for g in finished),
        cap_draws=reasons.get(Termination.MAX_MOVES.value, 0),
        total_plies=sum(g.plies for g in finished),
        reasons=dict(reasons),
    )


def _no_reply(members: np.ndarray, obs: Observation) -> np.ndarray:
    raise RuntimeError("no league games")


def _league_results(results: list[tuple[int, float]]) -> tuple[LeagueResult, ...]:
    """Finished league games per member, in member order."""
    out = []
    for member_id in sorted({m for m, _ in results}):
        mine = [x for m, x in results if m == member_id]
        out.append(LeagueResult(member_id, len(mine), sum(x > 0 for x in mine),
                                sum(x == 0 for x in mine)))
    return tuple(out)


def _node_id() -> str | None:
    # The plain worker also runs without Ray (tests, benchmarks).
    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None


class SelfPlayActorImpl:
    """Ray actor around `SelfPlayWorker`: fetches weights only when the version (or the
    learner's lineage) changed."""

    def __init__(self, config: Config, worker_id: int) -> None:
        threads = max(1, math.ceil(config.train.worker_cpus))
        torch.set_num_threads(threads)
        with warnings.catch_warnings():  # Ray's own deprecated call inside this property
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # A restarted actor must not replay its predecessor's games: new seed stream.
        incarnation = 1 + int.from_bytes(os.urandom(4), "little") if restarted else 0
        self.worker = SelfPlayWorker(config, worker_id, incarnation=incarnation)
        self.lineage = 0  # of the learner whose weights the worker holds
        self.metrics = WorkerMetrics(worker_id)
        self.profiler = ProfileSession()
        if incarnation:
            log.warning("worker-%d restarted; reseeded its games", worker_id)

    def ready(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def collect(self, weights_box: list[Any], version: int,
                league: LeagueAssignment | None = None, progress: float = 0.0,
                lineage: int = 0, server: Any = None) -> tuple[BatchSummary, bytes]:
        # The weights ref travels boxed in a list so Ray does not fetch it unless needed.
        # `server`: the inference actor's handle (inference.enabled), or None.
        if lineage != self.lineage:
            # A restarted learner's versions: the same numbers, other weights. Load them.
            self.worker.version = self.worker.model_version = -1
            self.lineage = lineage
        with record_function("collect"):
            weights: Weights | None
            if server is not None:
                self.worker.remote = RemotePolicy(server, self.worker.worker_id, version,
                                                  lineage, weights_box,
                                                  self.worker.config.inference.timeout_s)
                weights = functools.partial(fetch_weights, weights_box)
            else:
                self.worker.remote = None
                with record_function("load_weights"):
                    weights = (ray.get(weights_box[0])
                               if version != self.worker.model_version else None)
            try:
                summary, payload = self.worker.collect(weights, version, league,
                                                       progress=progress)
            finally:
                self.worker.remote = None
        self.metrics.record(summary.collect_s, summary.transitions, summary.games)
        return summary, payload

    def profile_start(self, memory: bool, with_stack: bool) -> None:
        self.profiler.start(memory=memory, with_stack=with_stack)

    def profile_stop(self, top_ops: int) -> ProfileOutput:
        return self.profiler.stop(top_ops)

    def get_state(self) -> dict[str, Any]:
        return self.worker.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.worker.set_state(state)


SelfPlayActor: Any = ray.remote(SelfPlayActorImpl)
