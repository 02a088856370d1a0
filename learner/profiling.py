"""A torch.profiler session that a Ray actor starts and stops between calls.

The trace goes back to the caller as bytes (Chrome/Perfetto JSON, gzip-free), so it lands in
the run folder even when the actor runs on another node. `summary()` gives the top ops and the
time of each `record_function` label the learner and workers put on their code paths.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

# The labels the code paths carry (torch.profiler.record_function): learner, then worker.
GROUPS = ("decode", "features", "forward", "backward", "optimizer", "broadcast",
          "collect", "load_weights", "env_step", "encode")


@dataclass
class ProfileOutput:
    trace: bytes  # Chrome trace JSON
    groups_ms: dict[str, float]  # label -> total CPU time in ms (inclusive)
    top_ops: list[dict[str, Any]] = field(default_factory=list)  # name, self CPU/CUDA ms, calls
    window_s: float = 0.0
    device: str = "cpu"


class ProfileSession:
    """start() ... stop() -> ProfileOutput. CUDA activity is recorded when CUDA is in use."""

    def __init__(self) -> None:
        self._profile: profile | None = None
        self._started = 0.0

    @property
    def active(self) -> bool:
        return self._profile is not None

    def start(self, *, memory: bool = True, with_stack: bool = True) -> None:
        if self._profile is not None:
            raise RuntimeError("a profile is already being recorded")
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            activities.append(ProfilerActivity.CUDA)
        self._profile = profile(activities=activities, profile_memory=memory,
                                with_stack=with_stack, record_shapes=False)
        self._profile.start()
        self._started = time.monotonic()

    def stop(self, top_ops: int = 15) -> ProfileOutput:
        if self._profile is None:
            raise RuntimeError("no profile is being recorded")
        window = time.monotonic() - self._started
        prof, self._profile = self._profile, None
        prof.stop()
        cuda = ProfilerActivity.CUDA in prof.activities
        averages = prof.key_averages()
        groups = {e.key: e.cpu_time_total / 1e3 for e in averages if e.key in GROUPS}
        ops = [e for e in averages if e.key not in GROUPS and not e.key.startswith("ProfilerStep")]
        ops.sort(key=lambda e: (e.self_device_time_total if cuda else e.self_cpu_time_total),
                 reverse=True)
        top = [{"name": e.key, "calls": int(e.count), "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_cuda_ms": (e.self_device_time_total / 1e3) if cuda else 0.0,
                "cpu_memory_mb": e.self_cpu_memory_usage / 1e6}
               for e in ops[:top_ops]]
        fd, path = tempfile.mkstemp(suffix=".json", prefix="keisei-trace-")
        os.close(fd)
        try:
            prof.export_chrome_trace(path)
            with open(path, "rb") as handle:
                trace = handle.read()
        finally:
            os.unlink(path)
        return ProfileOutput(trace=trace, groups_ms=groups, top_ops=top, window_s=window,
                             device="cuda" if cuda else "cpu")
