"""Batch-size search: plain Python, no Ray, no torch (`training.tuning` applies it to a run).

`search` walks a sorted list of candidate sizes upwards from the smallest, measuring each one
with the caller's `measure(candidate)`, and stops growing once throughput stops rising (by more
than `min_gain`) or the next candidate would not fit `memory_bound`. The next candidate's
memory is predicted from the ones measured (a line through the last two, or proportional to
the size from the first), so a candidate predicted to exceed the bound is never tried: on a
GPU, trying it could be an out-of-memory error. The result is the candidate with the highest
measured throughput.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """What one trial of a candidate gave: work per second and, if known, peak memory."""

    throughput: float
    memory_bytes: float | None = None


@dataclass(frozen=True)
class TuneResult:
    best: int
    throughput: float
    trials: dict[int, Measurement] = field(default_factory=dict)  # in the order measured
    skipped: tuple[int, ...] = ()  # candidates left out: predicted over the memory bound

    def table(self) -> str:
        """One line per trial, e.g. `16: 812.0/s (1.2 GB)`."""
        parts = []
        for candidate, m in self.trials.items():
            mem = "" if m.memory_bytes is None else f" ({m.memory_bytes / 1e9:.2f} GB)"
            parts.append(f"{candidate}: {m.throughput:,.1f}/s{mem}")
        return ", ".join(parts)


def predict_memory(trials: dict[int, Measurement], candidate: int) -> float | None:
    """Memory of `candidate` extrapolated from the trials with a known memory (None: none)."""
    known = sorted((c, m.memory_bytes) for c, m in trials.items() if m.memory_bytes is not None)
    if not known:
        return None
    if len(known) == 1 or known[-1][0] == known[-2][0]:
        size, memory = known[-1]
        return memory * candidate / size
    (c0, m0), (c1, m1) = known[-2], known[-1]
    slope = max((m1 - m0) / (c1 - c0), 0.0)
    return m1 + slope * (candidate - c1)


def search(candidates: Sequence[int], measure: Callable[[int], Measurement], *,
           memory_bound: float | None = None, min_gain: float = 0.03,
           patience: int = 2) -> TuneResult:
    """The candidate with the most throughput; see the module docstring.

    `candidates`: sizes to consider (any order, duplicates ignored; at least one). The smallest
    is always measured. `memory_bound`: bytes no trial may exceed (None: no bound).
    `min_gain`: relative throughput gain a larger candidate must show to count as better;
    `patience`: how many candidates in a row may fail to gain before the walk stops.
    """
    ordered = sorted(set(int(c) for c in candidates))
    if not ordered:
        raise ValueError("autotune: no candidate sizes to choose from")
    if any(c < 1 for c in ordered):
        raise ValueError(f"autotune: candidate sizes must be >= 1, got {ordered}")
    trials: dict[int, Measurement] = {}
    skipped: list[int] = []
    best_throughput = float("-inf")
    misses = 0
    for index, candidate in enumerate(ordered):
        if index > 0 and memory_bound is not None:
            predicted = predict_memory(trials, candidate)
            if predicted is not None and predicted > memory_bound:
                skipped.extend(ordered[index:])
                break
        result = measure(candidate)
        trials[candidate] = result
        log.debug("autotune: %d -> %.1f/s", candidate, result.throughput)
        if memory_bound is not None and result.memory_bytes is not None and (
                result.memory_bytes > memory_bound):
            # Measured over the bound (the prediction was off): unusable, and no larger one.
            skipped.extend(ordered[index + 1:])
            break
        if result.throughput > best_throughput * (1.0 + min_gain) or index == 0:
            best_throughput = max(best_throughput, result.throughput)
            misses = 0
        else:
            best_throughput = max(best_throughput, result.throughput)
            misses += 1
            if misses >= patience:
                break
    usable = {c: m for c, m in trials.items()
              if memory_bound is None or m.memory_bytes is None or m.memory_bytes <= memory_bound}
    if not usable:  # even the smallest was over: it is still the least bad choice
        usable = {ordered[0]: trials[ordered[0]]}
    best = max(usable, key=lambda c: (usable[c].throughput, -c))
    return TuneResult(best=best, throughput=usable[best].throughput, trials=trials,
                      skipped=tuple(skipped))


def games_candidates(games_per_worker: int, rollout_steps: int, *, min_steps: int = 4,
                     spread: int = 8, max_games: int = 4096) -> list[tuple[int, int]]:
    """(games, steps) pairs with the same product as the configured pair (each collect ships
    as many transitions), games the configured count times a power of two, from a quarter of
    it to `spread` times it, steps at least `min_steps` (or the configured steps if fewer)."""
    product = games_per_worker * rollout_steps
    floor = min(min_steps, rollout_steps)
    pairs = []
    games = max(1, games_per_worker // 4)
    while games <= min(product, max_games, games_per_worker * spread):
        if product % games == 0 and product // games >= floor:
            pairs.append((games, product // games))
        games *= 2
    return pairs


def micro_batch_candidates(minibatch_size: int, *, smallest: int = 32) -> list[int]:
    """Micro-batch sizes for gradient accumulation: the minibatch, and its halvings (ceil)
    down to `smallest` (fewer chunks are always tried too: the walk starts small)."""
    sizes = {minibatch_size}
    size = minibatch_size
    while size > smallest:
        size = -(-size // 2)
        sizes.add(size)
    return sorted(sizes)
