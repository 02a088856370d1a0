"""Benchmarks of the learner side: codec, features, PPO updates, weight export.

Each `bench_*` function measures and returns its figures as a dict (the CLI prints them).
`collect_experience` plays real games in a `VecEnv` to give the benchmarks (and tests)
realistic experience batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from keisei_ray.codec import ExperienceBatch, decode, encode, summarize_games
from keisei_ray.config import Config, ModelConfig
from keisei_ray.training.heap import can_release_heap, release_free_heap
from learner.features import encode_planes, legal_mask, to_tensors
from learner.gae import compute_gae
from learner.learner import Learner
from learner.model import LegalPolicy, PolicyValueNet, act, build_model
from shogi import CompactState, Position, RandomPlayer, VecEnv, move_to_action
from shogi.players import most_valuable_captures

log = logging.getLogger(__name__)


# Long by choice: a benchmark fixture that drives a real worker and records every stage.
def collect_experience(
    num_games: int = 32,
    steps: int = 32,
    *,
    seed: int = 0,
    max_moves: int = 512,
    model: PolicyValueNet | None = None,
    policy_version: int = 0,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> ExperienceBatch:
    """`steps` plies of `num_games` games as one batch (rows game by game, then by ply).

    With a model, actions, log-probs and values come from it (eval mode); without one the
    policy is uniformly random with value 0. Rewards follow the GAE conventions: a finished
    game (the move cap included) marks both last transitions terminal; games still running
    bootstrap from the state after the rollout.
    """
    env = VecEnv(num_games, max_moves=max_moves, seed=seed)
    generator = torch.Generator().manual_seed(seed)

    def evaluate(state: CompactState, offsets: np.ndarray, legal: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(state)
        if model is None:
            counts = np.diff(offsets)
            picks = offsets[:-1] + (env.rng.random(n) * counts).astype(np.int64)
            return legal[picks], -np.log(counts).astype(np.float32), np.zeros(n, np.float32)
        planes = encode_planes(to_tensors(state), max_moves, model.spec.attack_planes)
        actions, log_probs, values = act(model, planes, legal_mask(offsets, legal, n),
                                         generator=generator)
        return actions.numpy(), log_probs.numpy(), values.numpy()

    def value_of(state: CompactState) -> np.ndarray:
        if model is None:
            return np.zeros(len(state), np.float32)
        with torch.inference_mode():
            return model.eval()(encode_planes(to_tensors(state), max_moves,
                                              model.spec.attack_planes))[1].numpy()

    states: list[CompactState] = []
    legal_rows: list[list[np.ndarray]] = []
    shape = (steps, num_games)
    actions, log_probs, values, next_values, rewards = (np.zeros(shape, np.float32)
                                                        for _ in range(5))
    terminated, game_over = np.zeros(shape, bool), np.zeros(shape, bool)
    finished = []
    for t in range(steps):
        obs = env.observe()
        states.append(obs.state)
        legal_rows.append([obs.legal_row(i) for i in range(num_games)])
        actions[t], log_probs[t], values[t] = evaluate(obs.state, obs.legal_offsets,
                                                       obs.legal_actions)
        result = env.step(actions[t].astype(np.int64))
        rewards[t] = result.rewards
        game_over[t] = result.terminated | result.truncated
        terminated[t] = game_over[t]  # the move cap too: a terminal draw
        if t > 0:  # the other player's last move of a finished game: terminal, opposite reward
            previous = game_over[t] & ~game_over[t - 1]
            terminated[t - 1] |= previous
            rewards[t - 1] = np.where(previous, -result.rewards, rewards[t - 1])
        finished.extend(result.finished)
    obs = env.observe()  # games still running bootstrap from the state after the rollout
    next_values[:-1] = values[1:]  # terminal rows ignore theirs
    next_values[-1] = value_of(obs.state)
    advantages, returns = compute_gae(values, rewards, next_values, terminated, game_over,
                                      gamma=gamma, lam=lam)

    game_results, game_lengths, game_reasons = summarize_games(finished)
    order = np.arange(steps * num_games).reshape(steps, num_games).T.ravel()  # game-major
    state = CompactState.concat(states).take(order)
    rows = [legal_rows[i % steps][i // steps] for i in range(steps * num_games)]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return ExperienceBatch(
        state=state,
        action=actions.T.ravel().astype(np.int16),
        log_prob=log_probs.T.ravel(),
        value=values.T.ravel(),
        advantage=advantages.T.ravel(),
        returns=returns.T.ravel(),
        legal_offsets=offsets,
        legal_actions=np.concatenate(rows).astype(np.int16),
        policy_version=policy_version,
        game_results=game_results,
        game_lengths=game_lengths,
        game_reasons=game_reasons,
    )


def _best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """The fastest of `repeats` timed calls, in seconds (after one warm-up call)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_codec(num_games: int = 64, steps: int = 64, *, seed: int = 0,
                repeats: int = 5) -> dict[str, Any]:
    """Wire size and encode+decode time on tiny-model self-play data from a VecEnv."""
    torch.manual_seed(seed)
    batch = collect_experience(num_games, steps, seed=seed,
                               model=build_model(ModelConfig.model_validate({"size": "tiny"})))
    data = encode(batch)
    n = len(batch)
    encode_s = _best_of(repeats, lambda: encode(batch))
    decode_s = _best_of(repeats, lambda: decode(data))
    return {
        "transitions": n,
        "legal actions per transition": len(batch.legal_actions) / n,
        "bytes per transition": len(data) / n,
        "encode ms per 1000": encode_s * 1e3 * 1000 / n,
        "decode ms per 1000": decode_s * 1e3 * 1000 / n,
        "encode+decode ms per 1000": (encode_s + decode_s) * 1e3 * 1000 / n,
    }


def bench_features(batch_size: int = 1024, *, num_games: int = 64, steps: int = 32,
                   seed: int = 0, repeats: int = 5, device: str = "cpu",
                   attack_planes: bool = False) -> dict[str, Any]:
    """Compact state -> planes + legal mask, positions per second, on real positions."""
    batch = collect_experience(num_games, steps, seed=seed)
    rows = np.arange(batch_size) % len(batch)
    state = batch.state.take(rows)
    counts = np.diff(batch.legal_offsets)[rows]
    legal = np.concatenate([batch.legal_actions[batch.legal_offsets[r]:batch.legal_offsets[r + 1]]
                            for r in rows])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    target = torch.device(device)

    def run() -> None:
        encode_planes(to_tensors(state, target), 512, attack_planes)
        legal_mask(offsets, legal, batch_size, target)
        if target.type == "cuda":
            torch.cuda.synchronize()

    seconds = _best_of(repeats, run)
    return {"device": str(target), "batch": batch_size, "attack planes": attack_planes,
            "positions per s": batch_size / seconds,
            "threads": torch.get_num_threads()}


def bench_ppo(
    sizes: Sequence[str] = ("tiny", "small", "large"),
    *,
    transitions: int = 2048,
    device: str = "cpu",
    amp: str = "off",
    compile: bool = False,
    epochs: int = 1,
    minibatch_size: int = 256,
    seed: int = 0,
    attack_planes: bool = False,
    policy_head: str = "relative",
) -> dict[str, Any]:
    """PPO update throughput (transitions absorbed per second) per model size.

    Data: random-policy self-play positions (the update's cost does not depend on who played).
    The first update (warm-up, compile) is not timed.
    """
    games = 64
    batch = collect_experience(games, max(1, transitions // games), seed=seed)
    figures: dict[str, Any] = {"device": device, "amp": amp, "compile": compile,
                               "transitions": len(batch), "epochs": epochs,
                               "attack planes": attack_planes, "policy head": policy_head}
    if device.startswith("cuda") and torch.cuda.is_available():
        figures["gpu"] = torch.cuda.get_device_name()
    for size in sizes:
        config = Config.model_validate({
            "model": {"size": size, "attack_planes": attack_planes, "policy_head": policy_head},
            "ppo": {"epochs": epochs, "minibatch_size": minibatch_size, "amp": amp,
                    "compile": compile, "max_policy_lag": 1_000},
        })
        learner = Learner(config, capacity=len(batch), device=device, total_timesteps=10**9,
                          seed=seed)
        learner.update([batch])
        metrics = learner.update([batch])
        figures[f"{size} samples per s"] = metrics["samples_per_s"]
    return figures


# Arms of `bench_ppo_compare`: (config overrides, Learner keyword arguments) of each. "legal"
# is the default learner; each other arm changes one thing against it.
PPO_ARMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "legal": ({}, {}),
    "dense": ({}, {"dense_policy": True}),  # the old path: dense [N, 13527] logits
    "fused-adam": ({}, {"fused_adam": True}),
    "compile": ({"ppo": {"compile": True}}, {}),  # on CPU: needs a C++ compiler
    "cuda-graphs": ({"ppo": {"compile": True, "compile_mode": "reduce-overhead",
                             "fixed_shapes": True}}, {}),  # CUDA only
    "fixed-shapes": ({"ppo": {"fixed_shapes": True}}, {}),
    "bf16": ({"ppo": {"amp": "bf16"}}, {}),
}


def bench_ppo_compare(
    arms: Sequence[str] = ("legal", "dense"),
    sizes: Sequence[str] = ("tiny", "small", "large"),
    *,
    transitions: int = 2048,
    device: str = "cpu",
    epochs: int = 1,
    minibatch_size: int = 256,
    rounds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """PPO update samples/s of learner variants (`PPO_ARMS`) on the same data, alternated
    update by update (round-robin over the arms, `rounds` times) so that a shared machine's
    load falls on every arm alike: the median of each and its ratio to the first arm. The
    first update of each (warm-up, compile) is not timed."""
    unknown = [arm for arm in arms if arm not in PPO_ARMS]
    if unknown:
        raise ValueError(f"unknown bench arm(s) {unknown} (expected some of "
                         f"{sorted(PPO_ARMS)})")
    games = 64
    batch = collect_experience(games, max(1, transitions // games), seed=seed)
    figures: dict[str, Any] = {"device": device, "transitions": len(batch), "epochs": epochs,
                               "minibatch": minibatch_size, "rounds": rounds,
                               "threads": torch.get_num_threads()}
    for size in sizes:
        learners = {}
        for arm in arms:
            overrides, kwargs = PPO_ARMS[arm]
            config = Config.model_validate({
                "model": {"size": size, **overrides.get("model", {})},
                "ppo": {"epochs": epochs, "minibatch_size": minibatch_size,
                        "max_policy_lag": 1_000, **overrides.get("ppo", {})}})
            learners[arm] = Learner(config, capacity=len(batch), device=device,
                                    total_timesteps=10**9, seed=seed, **kwargs)
            learners[arm].update([batch])
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(rounds):
            for arm, learner in learners.items():
                rates[arm].append(learner.update([batch])["samples_per_s"])
        first = float(np.median(rates[arms[0]]))
        for arm in arms:
            median = float(np.median(rates[arm]))
            figures[f"{size} {arm} samples per s"] = median
            if arm != arms[0]:
                figures[f"{size} {arm} / {arms[0]}"] = median / first
    return figures


def bench_decoupled(
    sizes: Sequence[str] = ("small",),
    *,
    transitions: int = 2048,
    device: str = "cpu",
    amp: str = "off",
    epochs: int = 2,
    minibatch_size: int = 512,
    rounds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """The cost of decoupled PPO's proximal pass: the same update with `ppo.decoupled` on and
    off, alternated round by round so that a shared machine's load falls on both alike; the
    median update time of each, and of the proximal pass alone. The first update of each
    (warm-up) is not timed."""
    games = 64
    batch = collect_experience(games, max(1, transitions // games), seed=seed)
    n = len(batch)
    figures: dict[str, Any] = {"device": device, "amp": amp, "transitions": n, "epochs": epochs,
                               "minibatch": minibatch_size, "rounds": rounds,
                               "threads": torch.get_num_threads()}
    for size in sizes:
        learners = {}
        for decoupled in (True, False):
            config = Config.model_validate({
                "model": {"size": size},
                "ppo": {"epochs": epochs, "minibatch_size": minibatch_size, "amp": amp,
                        "max_policy_lag": 1_000, "decoupled": decoupled}})
            learners[decoupled] = Learner(config, capacity=n, device=device,
                                          total_timesteps=10**9, seed=seed)
            learners[decoupled].update([batch])
        update_s: dict[bool, list[float]] = {True: [], False: []}
        proximal_s = []
        for _ in range(rounds):
            for decoupled, learner in learners.items():
                metrics = learner.update([batch])
                update_s[decoupled].append(metrics["update_s"])
                if decoupled:
                    proximal_s.append(metrics["proximal_s"])
        on, off = float(np.median(update_s[True])), float(np.median(update_s[False]))
        figures[f"{size} decoupled update s"] = on
        figures[f"{size} classic update s"] = off
        figures[f"{size} proximal pass s"] = float(np.median(proximal_s))
        figures[f"{size} decoupled samples per s"] = epochs * n / on
        figures[f"{size} classic samples per s"] = epochs * n / off
        figures[f"{size} extra time"] = on / off - 1.0
    return figures


def tactics_positions(count: int, seed: int) -> tuple[list[CompactState], list[np.ndarray],
                                                      list[np.ndarray]]:
    """Positions of random games where the heuristic player has a reason for its move: (states,
    legal actions, target actions) with the targets its mate in one, else its most valuable
    captures (all of them: ties are equally right)."""
    player = RandomPlayer(seed)
    states: list[CompactState] = []
    legal: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    while len(states) < count:
        position = Position()
        while not position.is_game_over() and len(states) < count:
            mate = position.mate_in_one()
            best = ([mate] if mate is not None
                    else most_valuable_captures(position, position.legal_moves()))
            if best:
                states.append(position.compact())
                legal.append(position.legal_actions())
                targets.append(np.array([move_to_action(m, position.turn) for m in best]))
            position.push(player.choose(position))
    return states, legal, targets


# Long by choice: one experiment script (data, two heads, training, test) read top to bottom.
def bench_policy_head(positions: int = 20_000, steps: int = 600, *, size: str = "small",
                      minibatch_size: int = 256, test_positions: int = 2_000, seed: int = 0
                      ) -> dict[str, Any]:
    """How fast each policy head learns the heuristic player's tactics, supervised.

    Both heads (same tower, same seed, Adam at 1e-3) are trained by cross-entropy to put their
    probability on the heuristic's choices (mate in one, else the most valuable capture) in
    positions of random games, and tested on positions of other random games: the share of
    test positions whose greedy move is one of the targets, after each quarter of the steps.
    A proxy for what PPO must discover from rewards; it isolates the head's inductive bias.
    """
    train_set = tactics_positions(positions, seed + 1)
    test_set = tactics_positions(test_positions, seed + 2)

    def tensors(data: tuple[list[CompactState], list[np.ndarray], list[np.ndarray]],
                rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor]:
        states, legal, targets = data
        planes = encode_planes(to_tensors(CompactState.concat([states[i] for i in rows])), 512)
        counts = [len(legal[i]) for i in rows]
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))
        actions = torch.from_numpy(np.concatenate([legal[i] for i in rows]).astype(np.int64))
        # Target probability of each legal entry: uniform over the row's targets.
        weight = np.concatenate([np.isin(legal[i], targets[i]) / len(targets[i]) for i in rows])
        return planes, offsets, actions, torch.from_numpy(weight.astype(np.float32))

    test = tensors(test_set, range(test_positions))
    test_targets = test_set[2]

    def accuracy(model: PolicyValueNet) -> float:
        planes, offsets, actions, _ = test
        with torch.inference_mode():
            chosen = LegalPolicy.from_csr(model.eval()(planes)[0], offsets, actions).choose(
                greedy=True).tolist()
        model.train()
        return float(np.mean([a in targets for a, targets in zip(chosen, test_targets,
                                                                   strict=True)]))

    figures: dict[str, Any] = {
        "train positions": positions, "test positions": test_positions, "size": size,
        "steps": steps, "minibatch": minibatch_size,
        # The baseline: what a uniformly random legal move scores on the same test.
        "random move accuracy": float(np.mean([len(t) / len(a) for a, t in zip(
            test_set[1], test_targets, strict=True)])),
    }
    quarters = {max(1, steps * q // 4) for q in (1, 2, 3, 4)}
    for head in ("relative", "absolute"):
        torch.manual_seed(seed)
        model = build_model(ModelConfig(size=size, policy_head=head))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            planes, offsets, actions, weight = tensors(
                train_set, rng.choice(positions, minibatch_size, replace=False).tolist())
            policy = LegalPolicy.from_csr(model(planes)[0], offsets, actions)
            loss = -(weight * policy.log_probs).sum() / minibatch_size
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step in quarters:
                figures[f"{head} test accuracy @{step}"] = accuracy(model)
        figures[f"{head} train s"] = time.perf_counter() - start
    return figures


def bench_weights(size: str = "large", *, half: bool = False, device: str = "cpu",
                  repeats: int = 5) -> dict[str, Any]:
    """Time of `Learner.weights()` (parameters and buffers to numpy) for a model size."""
    config = Config.model_validate({"model": {"size": size}})
    learner = Learner(config, capacity=1, device=device, total_timesteps=1)
    seconds = _best_of(repeats, lambda: learner.weights(half=half))
    _, weights = learner.weights(half=half)
    return {
        "size": size,
        "device": str(learner.device),
        "parameters": sum(p.numel() for p in learner.model.parameters()),
        "megabytes": sum(a.nbytes for a in weights.values()) / 1e6,
        "half": half,
        "weights() ms": seconds * 1e3,
    }


def _rss_anon_mb() -> float | None:
    """This process's anonymous resident memory (Linux), where the C heap lives."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_heap_trim(updates: int = 24, *, rounds: int = 2, games: int = 32, steps: int = 32,
                    seed: int = 0) -> dict[str, Any]:
    """What trimming the learner's heap after each update costs: the default config's learner
    on encoded self-play batches (decoded as the learner actor does), `rounds` times `updates`
    updates without a trim, then `updates` with one after each. An update that follows a trim
    pays for faulting its pages back in, so both sides time the update and the trim together.
    """
    lag = 1_000  # the batches keep policy version 0: the learner takes them this long
    if 1 + 2 * rounds * updates > lag:
        raise ValueError(f"at most {lag} updates in all: {updates} x 2 x {rounds} rounds")
    config = Config.model_validate({"ppo": {"max_policy_lag": lag}})
    torch.manual_seed(seed)
    model = build_model(config.model)
    payloads = [encode(collect_experience(games, steps, seed=seed + k, model=model))
                for k in range(4)]  # different games in each, as workers send
    capacity = max(len(decode(p)) for p in payloads)
    learner = Learner(config, capacity=capacity, device="cpu", total_timesteps=10**9, seed=seed)
    learner.update([payloads[0]])  # warm-up
    seconds: dict[bool, list[float]] = {False: [], True: []}
    trim_ms: list[float] = []
    rss: dict[str, float | None] = {"RssAnon MB at start": _rss_anon_mb()}
    for round_ in range(rounds):
        for trim in (False, True):
            for k in range(updates):
                start = time.perf_counter()
                learner.update([payloads[k % len(payloads)]])
                if trim:
                    before = time.perf_counter()
                    release_free_heap()
                    trim_ms.append((time.perf_counter() - before) * 1e3)
                seconds[trim].append(time.perf_counter() - start)
            rss[f"RssAnon MB after round {round_ + 1} {'with' if trim else 'without'} trim"] = (
                _rss_anon_mb())
    plain, trimmed = (sum(seconds[t]) / len(seconds[t]) for t in (False, True))
    return {
        "glibc malloc_trim": can_release_heap(),
        "model": config.model.size, "transitions per update": capacity,
        "updates per side": len(seconds[False]),
        "update s without trim": plain, "update s with trim (incl.)": trimmed,
        "trim ms mean": sum(trim_ms) / len(trim_ms) if trim_ms else None,
        "cost of trimming": f"{100 * (trimmed / plain - 1):+.1f}%",
        **rss,
    }
