"""The soak report's arithmetic (the soak itself is `keisei-ray bench soak`, minutes long)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keisei_ray.bench.soak import Sample, SoakMonitor, SoakReport, ray_processes
from keisei_ray.events import GameStats, LearnerRestarted, UpdateDone
from tests.test_cli_train import interrupt_once_training, keisei


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


def test_missed_targets_name_each_target_the_run_missed() -> None:
    report = SoakReport(minutes=1, warmup_s=0)
    report.samples = [_sample(10 * k, 300.0, 500 * k) for k in range(8)]
    report.timestep = report.accepted = 3500
    report.max_update_gap_s = 12.0
    assert report.missed_targets() == [] and report.figures()["targets"] == "all met"
    report.samples += [_sample(80 + 10 * k, 330.0, 4000 + 500 * k) for k in range(3)]
    report.max_update_gap_s = 31.5
    report.accepted = 3400
    missed = report.missed_targets()
    assert len(missed) == 3, missed
    assert missed[0].startswith("RSS workers grew +10.0%")
    assert "3500 != accepted 3400" in missed[1] and "31.5 s" in missed[2]


@pytest.mark.slow
def test_ctrl_c_ends_a_soak_early_and_it_still_reports(tmp_path: Path) -> None:
    out_file = tmp_path / "soak.json"
    code, text = interrupt_once_training(
        keisei("bench", "soak", "--preset", "smoke", "--minutes", "10", "--kill-every", "0",
               "--sample-every", "2", "--out", str(out_file)), after_s=8)
    assert code == 0, text[-3000:]
    figures = json.loads(out_file.read_text())["figures"]
    assert figures["end"] == "interrupted" and figures["updates"] > 0
    assert figures["counter == accepted"] is True and "targets" in figures
    assert "Traceback" not in text


def test_rss_growth_of_a_long_run_averages_over_5_percent_windows() -> None:
    report = SoakReport(minutes=60, warmup_s=0)
    # 200 samples swinging between 500 and 600 MB with no trend: windows of 10 samples.
    report.samples = [_sample(10 * k, 500.0 + 100 * (k % 2), 100 * k) for k in range(200)]
    assert report.rss_growth()["workers"] == 0.0
    report.samples[-10:] = [_sample(1990 + k, 660.0, 20_000) for k in range(10)]
    assert abs(report.rss_growth()["workers"] - 0.2) < 1e-9  # 660 over a mean of 550


def _update(timestep: int, accepted: int) -> UpdateDone:
    return UpdateDone(timestep=timestep, version=timestep // 50, accepted=accepted, metrics={},
                      games=GameStats(), totals=GameStats(), policy_lag=1, workers_alive=1,
                      steps_per_s=1.0, worker_restarts=0, wall_time=1.0)


def _restart(timestep: int, lost: int, lost_timestep: int) -> LearnerRestarted:
    return LearnerRestarted(timestep=timestep, version=timestep // 50, checkpoint=None,
                            transitions_lost=lost, lost_timestep=lost_timestep, restarts=1,
                            down_s=0.5, error="the learner failed")


def test_a_learner_restart_rolls_the_accepted_count_back_and_is_checked() -> None:
    report = SoakReport(minutes=1)
    monitor = SoakMonitor(report, kill_every_s=0)  # its sampling thread is not started
    for timestep in (50, 100, 150):
        monitor.on_update_done(_update(timestep, 50))
    monitor.on_learner_restarted(_restart(100, 50, 150))  # back to a counter it had
    monitor.on_update_done(_update(150, 50))
    assert (report.accepted, report.timestep, report.counter_mismatches) == (150, 150, 0)
    assert report.transitions_lost == [50] and len(report.loss_to_update_s) == 1
    assert report.figures()["counter == accepted"] is True
    # A rollback to a value the counter never had, or a wrong loss, is a mismatch.
    monitor.on_learner_restarted(_restart(120, 30, 150))
    monitor.on_learner_restarted(_restart(50, 10, 120))
    assert report.counter_mismatches == 2
    assert report.figures()["counter == accepted"] is False
