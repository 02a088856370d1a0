"""Handing the learner's freed C heap back to the OS, and when the learner actor does it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from keisei_ray.bench.learner import bench_heap_trim
from keisei_ray.config import Config
from keisei_ray.training import learner_actor
from keisei_ray.training.heap import can_release_heap
from keisei_ray.training.learner_actor import LearnerActor

# A fresh process frees 256 MB of heap blocks under one live block allocated after them (so
# free() cannot shrink the heap from its top), then trims: RssAnon before and after, in kB.
_FRAGMENTED_HEAP = textwrap.dedent("""
    from keisei_ray.training.heap import release_free_heap

    def rss_anon_kb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

    blocks = [b"x" * 32768 for _ in range(8192)]  # 32 KiB each: heap blocks, not mmaps
    pin = b"p" * 32768
    del blocks
    before = rss_anon_kb()
    released = release_free_heap()
    print(before, rss_anon_kb(), released)
""")


@pytest.mark.skipif(not can_release_heap(), reason="needs glibc's malloc_trim (Linux)")
def test_release_free_heap_returns_freed_blocks_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    before, after, released = int(out[0]), int(out[1]), out[2]
    assert released == "True"
    assert before - after > 200 * 1024, f"RssAnon {before} kB -> {after} kB"


def _actor(trim_s: float) -> LearnerActor:
    config = Config.model_validate({"model": {"size": "tiny"},
                                    "train": {"learner_heap_trim_s": trim_s}})
    return LearnerActor(config, capacity=16, device="cpu")


@pytest.mark.slow  # starts Ray
@pytest.mark.parametrize(("trim_s", "trims"), [(0.0, 0), (1e-9, 3), (3600.0, 0)])
def test_the_learner_actor_trims_once_its_interval_has_passed(
        ray_local: None, monkeypatch: pytest.MonkeyPatch, trim_s: float, trims: int) -> None:
    # ray_local: LearnerActor.publish puts the weights in the object store.
    calls: list[float] = []

    def trim() -> bool:
        calls.append(trim_s)
        return True

    monkeypatch.setattr(learner_actor, "release_free_heap", trim)
    actor = _actor(trim_s)
    for _ in range(3):
        actor.update()  # no batches: nothing to learn, the weights are still published
    assert len(calls) == trims


def test_bench_trim_times_updates_without_and_with_a_trim() -> None:
    figures = bench_heap_trim(2, rounds=1, games=4, steps=4)
    assert figures["updates per side"] == 2 and figures["transitions per update"] == 16
    assert figures["update s without trim"] > 0 and figures["update s with trim (incl.)"] > 0
    assert figures["trim ms mean"] >= 0 and figures["glibc malloc_trim"] == can_release_heap()
    with pytest.raises(ValueError, match="at most 1000 updates"):
        bench_heap_trim(500, rounds=1)
