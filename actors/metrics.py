"""Ray dashboard metrics recorded inside a self-play actor (`ray_keisei_worker_*` series).

They live beside the worker, not with the driver's metrics (keisei_ray/training/metrics.py), so
that actors/ imports nothing from the driver's side.
"""

from __future__ import annotations

from ray.util import metrics as ray_metrics


class WorkerMetrics:
    """Recorded by a self-play actor after each collect, tagged with its worker id."""

    def __init__(self, worker_id: int) -> None:
        m = ray_metrics
        tags = {"worker": str(worker_id)}
        self.collect_s = m.Gauge("keisei_worker_collect_seconds", tag_keys=("worker",),
                                 description="seconds of the last collect")
        self.transitions = m.Counter("keisei_worker_transitions", tag_keys=("worker",),
                                     description="transitions a worker shipped")
        self.games = m.Counter("keisei_worker_games", tag_keys=("worker",),
                               description="games a worker finished")
        for metric in (self.collect_s, self.transitions, self.games):
            metric.set_default_tags(tags)

    def record(self, collect_s: float, transitions: int, games: int) -> None:
        self.collect_s.set(collect_s)
        if transitions:
            self.transitions.inc(float(transitions))
        if games:
            self.games.inc(float(games))
