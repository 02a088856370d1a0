"""The soak report's arithmetic (the soak itself is `keisei-ray bench soak`, minutes long)."""

from __future__ import annotations

import os

from keisei_ray.bench.soak import Sample, SoakReport, ray_processes


def _sample(t: float, workers_mb: float, timestep: int) -> Sample:
    return Sample(t=t, rss_mb={"driver": 100.0, "learner": 500.0, "workers": workers_mb},
                  processes={"workers": 1}, timestep=timestep, steps_per_s=50.0)


def test_rss_growth_compares_the_last_samples_with_the_first_after_warm_up() -> None:
    report = SoakReport(minutes=1, warmup_s=20)
    report.samples = [_sample(0, 50, 0), _sample(10, 900, 0)] + [
        _sample(20 + 10 * k, 300 + 3 * k, 500 * k) for k in range(10)]
    growth = report.rss_growth()
    assert growth["driver"] == 0.0 and growth["evaluation"] is None
    first, last = (300 + 303 + 306) / 3, (321 + 324 + 327) / 3
    assert abs(growth["workers"] - (last / first - 1)) < 1e-9  # warm-up samples ignored
    report.timestep = report.accepted = 4500
    figures = report.figures()
    assert figures["counter == accepted"] is True
    assert figures["RSS workers growth after warm-up"] == f"{100 * (last / first - 1):+.1f}%"
    report.counter_mismatches = 1
    assert report.figures()["counter == accepted"] is False


def test_ray_processes_sees_only_this_process_without_ray() -> None:
    found = ray_processes()
    assert [p.pid for p in found["driver"]] == [os.getpid()]
    assert found["workers"] == [] and found["learner"] == []
