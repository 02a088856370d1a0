"""Where a run waits: the split of wall time between the learner and the workers, and a hint.

Fractions of this session's wall time: the learner busy updating (the rest it waits for
data), the workers busy collecting (the rest they wait: for the other workers' batches and
for the next weights). Plain functions, fed by the driver and shown by the progress view,
metrics.jsonl and W&B.
"""

from __future__ import annotations

from dataclasses import dataclass

BUSY = 0.8  # a side this busy holds the run back when the other one waits
IDLE = 0.5  # a side idle this much is waiting on the other one


@dataclass(frozen=True)
class WaitSplit:
    learner_busy: float
    worker_busy: float

    @property
    def learner_waiting(self) -> float:
        return max(0.0, 1.0 - self.learner_busy)

    @property
    def workers_waiting(self) -> float:
        return max(0.0, 1.0 - self.worker_busy)

    def hint(self) -> str:
        return bottleneck_hint(self.learner_busy, self.worker_busy)


def wait_split(wall_s: float, learner_busy_s: float, worker_busy_s: float,
               workers: int) -> WaitSplit:
    """Busy fractions from busy seconds (worker seconds summed over `workers` workers)."""
    if wall_s <= 0:
        return WaitSplit(0.0, 0.0)
    return WaitSplit(learner_busy=min(1.0, learner_busy_s / wall_s),
                     worker_busy=min(1.0, worker_busy_s / (wall_s * max(workers, 1))))


def bottleneck_hint(learner_busy: float, worker_busy: float) -> str:
    """One line saying which side holds the run back, and what to try."""
    learner_idle, workers_idle = 1.0 - learner_busy, 1.0 - worker_busy
    if learner_idle >= IDLE and worker_busy >= BUSY:
        return (f"learner idle {learner_idle:.0%}: the workers hold the run back; add workers "
                "or games per worker")
    if workers_idle >= IDLE and learner_busy >= BUSY:
        return (f"workers idle {workers_idle:.0%}: the learner holds the run back; a GPU, a "
                "smaller model, fewer epochs or a larger micro-batch")
    if learner_idle >= IDLE and workers_idle >= IDLE:
        return (f"learner idle {learner_idle:.0%}, workers idle {workers_idle:.0%}: time goes "
                "elsewhere (object store, driver, stragglers); profile.updates=N shows where")
    return f"balanced: learner busy {learner_busy:.0%}, workers busy {worker_busy:.0%}"
