"""Where a run waits: the split of wall time between the learner and the workers, and a hint.

Fractions of this session's wall time: the learner busy updating (the rest it waits for
data), the workers busy collecting (the rest they wait: for the other workers' batches and
for the next weights). Plain functions, fed by the driver and shown by the progress view,
metrics.jsonl and W&B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keisei_ray.config import Config
from learner.model import SIZES, spec_for

BUSY = 0.8  # a side this busy holds the run back when the other one waits
IDLE = 0.5  # a side idle this much is waiting on the other one


LEARNER_REMEDIES = ("a GPU", "a smaller model", "fewer epochs", "a larger micro-batch")
"""What speeds up a learner that holds the run back, when nothing is known of its config."""


@dataclass(frozen=True)
class WaitSplit:
    learner_busy: float
    worker_busy: float
    remedies: Sequence[str] = LEARNER_REMEDIES

    @property
    def learner_waiting(self) -> float:
        return max(0.0, 1.0 - self.learner_busy)

    @property
    def workers_waiting(self) -> float:
        return max(0.0, 1.0 - self.worker_busy)

    def hint(self) -> str:
        return bottleneck_hint(self.learner_busy, self.worker_busy, self.remedies)


def wait_split(wall_s: float, learner_busy_s: float, worker_busy_s: float,
               workers: int, remedies: Sequence[str] = LEARNER_REMEDIES) -> WaitSplit:
    """Busy fractions from busy seconds (worker seconds summed over `workers` workers)."""
    if wall_s <= 0:
        return WaitSplit(0.0, 0.0, remedies)
    return WaitSplit(learner_busy=min(1.0, learner_busy_s / wall_s),
                     worker_busy=min(1.0, worker_busy_s / (wall_s * max(workers, 1))),
                     remedies=remedies)


def learner_remedies(config: Config, device: str) -> list[str]:
    """The remedies for a slow learner that this run can still take: no GPU advice on a GPU,
    no smaller model below the tiny one, no fewer epochs than one, a larger micro-batch only
    when the minibatch is split."""
    spec, tiny = spec_for(config.model), SIZES["tiny"]
    ppo = config.ppo
    options = [("a GPU", device != "cuda"),
               ("a smaller model", spec.blocks > tiny.blocks or spec.channels > tiny.channels
                or spec.squeeze_excitation),
               ("fewer epochs", ppo.epochs > 1),
               ("a larger micro-batch", ppo.micro_batch_size is not None
                and ppo.micro_batch_size < ppo.minibatch_size)]
    found = [text for text, applies in options if applies]
    return found or ["a faster GPU"]  # only on a GPU: the CPU always has "a GPU"


def bottleneck_hint(learner_busy: float, worker_busy: float,
                    remedies: Sequence[str] = LEARNER_REMEDIES) -> str:
    """One line saying which side holds the run back, and what to try (`remedies`: for the
    learner)."""
    learner_idle, workers_idle = 1.0 - learner_busy, 1.0 - worker_busy
    if learner_idle >= IDLE and worker_busy >= BUSY:
        return (f"learner idle {learner_idle:.0%}: the workers hold the run back; add workers "
                "or games per worker")
    if workers_idle >= IDLE and learner_busy >= BUSY:
        listed = (remedies[0] if len(remedies) == 1
                  else f"{', '.join(remedies[:-1])} or {remedies[-1]}")
        return f"workers idle {workers_idle:.0%}: the learner holds the run back; {listed}"
    if learner_idle >= IDLE and workers_idle >= IDLE:
        return (f"learner idle {learner_idle:.0%}, workers idle {workers_idle:.0%}: time goes "
                "elsewhere (object store, driver, stragglers); profile.updates=N shows where")
    return f"balanced: learner busy {learner_busy:.0%}, workers busy {worker_busy:.0%}"
