"""`keisei-ray train` end to end, as a user runs it: a real process with its own local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from keisei_ray.store.checkpoint import list_checkpoints
from keisei_ray.training.metrics import METRICS_FILE, read_metrics

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def keisei(*args: str) -> list[str]:
    return [sys.executable, "-m", "keisei_ray.cli", *args]


@pytest.mark.slow
def test_smoke_training_through_the_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        keisei("train", "--preset", "smoke", f"train.runs_dir={tmp_path}", "train.run_name=smoke"),
        capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "smoke"
    effective = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert effective["model"]["size"] == "tiny"
    log = (run_dir / "train.log").read_text()
    assert "completed" in log
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["zero", "0", "-1"])
def test_train_config_error_exits_2_before_any_run_folder(tmp_path: Path, workers: str) -> None:
    proc = subprocess.run(keisei("train", "--preset", "smoke", f"train.runs_dir={tmp_path}",
                                 f"train.num_workers={workers}"),
                          capture_output=True, text=True, timeout=120, env=ENV, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"keisei-ray: config error: train.num_workers: expected a number of workers from 1 "
        f"to 100000, or auto (got {workers if workers != 'zero' else repr(workers)})"]
    assert not any(tmp_path.iterdir())


def interrupt_once_training(command: list[str], *, after_s: float) -> tuple[int, str]:
    """Run `command`, send it Ctrl-C `after_s` seconds after its workers are ready; its exit
    code and output."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    seen = []
    for line in proc.stdout:  # wait until the loop runs
        seen.append(line)
        if "self-play worker(s) ready" in line or time.monotonic() > deadline:
            break
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out


@pytest.mark.slow
def test_sigterm_finishes_the_update_writes_a_checkpoint_and_exits_like_ctrl_c(
        tmp_path: Path) -> None:
    """What a cloud scheduler or `ray job stop` sends first (ray.init installs a SIGTERM
    handler of its own that exits at once: the run's replaces it)."""
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(
        keisei("train", "--preset", "smoke", f"train.runs_dir={tmp_path}",
               "train.run_name=term", "train.total_timesteps=100000000",
               "checkpoint.interval_timesteps=100000000"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not any(r["event"] == "update" for r in _records(run_dir)):
            assert proc.poll() is None and time.monotonic() < deadline, "no update in 240 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert "SIGTERM: finishing the current update" in out
    assert "Traceback" not in out
    # The checkpoint of the stop holds the last update's counter.
    last = [r for r in _records(run_dir) if r["event"] == "update"][-1]
    checkpoints = list_checkpoints(run_dir)
    assert len(checkpoints) == 1
    manifest = json.loads((checkpoints[0] / "manifest.json").read_text())
    assert manifest["reason"] == "interrupt" and manifest["timestep"] == last["timestep"] > 0


def _records(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / METRICS_FILE
    return read_metrics(path) if path.exists() else []


@pytest.mark.slow
def test_ctrl_c_finishes_cleanly(tmp_path: Path) -> None:
    code, text = interrupt_once_training(
        keisei("train", "--preset", "smoke", f"train.runs_dir={tmp_path}", "train.run_name=int",
               "train.total_timesteps=100000000"), after_s=3)
    assert code == 130, text[-3000:]
    assert "interrupted" in text
    assert "Traceback" not in text
    # It says how to go on (Rich may wrap the log line: compare without line breaks).
    flat = " ".join(text.split())
    assert f"continue with: keisei-ray train --resume {tmp_path / 'int'}" in flat, text[-3000:]
