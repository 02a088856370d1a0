"""`keisei-ray train --resume` as users run it: SIGKILL at a random moment, learner loss,
refusals (no good checkpoint, incompatible config), and `keisei-ray export`."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

import keisei_ray
from keisei_ray.cli import main
from keisei_ray.config import ConfigError
from keisei_ray.config_loading import dump, load_config
from keisei_ray.events import Callback, CheckpointSaved, UpdateDone
from keisei_ray.store.checkpoint import (
    CHECKPOINTS,
    RunSnapshot,
    create_run_id,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from keisei_ray.store.model_file import load_model
from keisei_ray.training.metrics import METRICS_FILE, read_metrics
from learner import Learner

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 300
UPDATE = 2 * 4 * 12  # two workers, 4 games, 12 plies
TOTAL = 3000


def train_args(runs_dir: Path, *extra: str) -> list[str]:
    return ["model.size=tiny", "env.max_moves=40", "train.games_per_worker=4",
            "train.rollout_steps=12", "train.num_workers=2", "train.learner_cpus=0",
            "ppo.epochs=1", "ppo.minibatch_size=64", "evaluation.enabled=false",
            f"checkpoint.interval_timesteps={INTERVAL}", "checkpoint.keep_last=2",
            f"train.total_timesteps={TOTAL}", f"train.runs_dir={runs_dir}", *extra]


def keisei(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keisei_ray.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def updates_of(run_dir: Path) -> list[dict[str, object]]:
    return [r for r in read_metrics(run_dir / METRICS_FILE) if r["event"] == "update"]


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_completes_consistently(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "keisei_ray.cli", "train", *train_args(tmp_path),
         "train.run_name=killed"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "killed"
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(run_dir) and time.monotonic() < deadline:
            assert proc.poll() is None, "training ended before its first checkpoint"
            time.sleep(0.05)
        assert list_checkpoints(run_dir), "no checkpoint within 240 s"
        # Anywhere: mid-collect, mid-update, mid-save. The delay is drawn from a seed that a
        # failure prints (captured stdout); KEISEI_KILL_SEED=<seed> replays it.
        seed = int(os.environ.get("KEISEI_KILL_SEED") or secrets.randbelow(2**32))
        delay = random.Random(seed).uniform(0.0, 3.0)
        print(f"killing {delay:.3f} s after the first checkpoint (KEISEI_KILL_SEED={seed})")
        time.sleep(delay)
        assert proc.poll() is None, "training finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
        proc.wait(30)
    reached = max(int(u["timestep"]) for u in updates_of(run_dir))  # type: ignore[call-overload]

    total = TOTAL
    if read_checkpoint(list_checkpoints(run_dir)[0]).timestep >= TOTAL:
        # The kill came after the run's end checkpoint (a fast machine runs the whole of it
        # within the delay): a resume is refused as complete, and goes on with more timesteps.
        refused = keisei("train", "--resume", str(run_dir))
        assert refused.returncode == 2 and "raise it to go on" in refused.stderr
        total = TOTAL + 8 * UPDATE
    done = keisei("train", "--resume", str(run_dir), f"train.total_timesteps={total}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    resumed_at = int(log.split("resumed at timestep ")[1].split(")")[0])
    # At most one interval of work lost (plus the update that crossed it, and one more if the
    # kill hit while the newest checkpoint was being written).
    assert 0 <= reached - resumed_at <= INTERVAL + 2 * 2 * 4 * 13

    # Counters consistent: every update advanced the timestep by what it accepted, from 0
    # through the kill and the resume, and the final checkpoint holds the same totals.
    updates = updates_of(run_dir)
    timesteps = [int(u["timestep"]) for u in updates]  # type: ignore[call-overload]
    accepted = [int(u["accepted"]) for u in updates]  # type: ignore[call-overload]
    assert all(b == a + n for a, b, n in zip([0, *timesteps], timesteps, accepted, strict=False))
    assert [int(u["version"]) for u in updates] == list(  # type: ignore[call-overload]
        range(1, len(updates) + 1))
    assert timesteps[-1] >= total
    games = sum(int(u["games"]["games"]) for u in updates)  # type: ignore[index]
    final = read_checkpoint(list_checkpoints(run_dir)[0])
    assert final.timestep == timesteps[-1]
    assert final.driver["updates"] == len(updates) and final.driver["timestep"] == timesteps[-1]
    assert final.driver["games"]["games"] == games
    assert final.learner["counters"]["timesteps"] == timesteps[-1]


class KillLearner(Callback):
    """Kills the learner actor at every update after the first checkpoint was saved (a
    restarted one too)."""

    def __init__(self) -> None:
        self.saved = False

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self.saved = True

    def on_update_done(self, event: UpdateDone) -> None:
        if self.saved:
            ray.kill(ray.get_actor("keisei/learner"), no_restart=True)


@pytest.mark.slow
def test_learner_lost_past_its_restarts_names_the_checkpoint_and_the_resume_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *train_args(tmp_path, "train.run_name=lost", "train.learner_max_restarts=1",
                                 "train.callbacks=[tests.test_resume_cli:KillLearner]")]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    run_dir = tmp_path / "lost"
    newest = list_checkpoints(run_dir)[0]
    # One restart from a checkpoint, then the second loss ends the run as before restarts.
    log = (run_dir / "train.log").read_text()
    assert log.count("learner restarted from") == 1
    assert err.startswith("keisei-ray: training failed: the learner failed")
    assert "train.learner_max_restarts=1" in err
    assert f"the last good checkpoint is {newest}" in err
    assert err.endswith(f"continue with: keisei-ray train --resume {run_dir}")
    # ... and that command does continue it.
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(run_dir), "train.total_timesteps=600",
              "train.callbacks=[]"])
    assert info.value.code in (0, None)
    assert read_checkpoint(list_checkpoints(run_dir)[0]).timestep >= 600


# ----------------------------------------------------------------------------- refusals, export


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return finished_run(tmp_path, 200_000)


def finished_run(tmp_path: Path, total: int) -> Path:
    """A run folder whose one checkpoint is at timestep 640 of `total`."""
    config = load_config(None, ["model.size=tiny", f"train.runs_dir={tmp_path}",
                                f"train.total_timesteps={total}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump(config))
    run_id = create_run_id(run_dir)
    snapshot = RunSnapshot(config=config, timestep=640, version=5, driver={},
                           learner=Learner(config, capacity=8, device="cpu").state_dict(),
                           workers={})
    write_checkpoint(run_dir / CHECKPOINTS, snapshot, run_id=run_id, reason="interval")
    return run_dir


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("keisei")]
    assert len(lines) == 1, lines
    return int(info.value.code or 0), lines[0]


def test_incompatible_override_is_refused_naming_the_field(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = one_line_error(["train", "--resume", str(run_dir), "model.channels=64"], capsys)
    assert code == 2 and "model.channels is None in the checkpoint, 64 now" in line


def test_no_good_checkpoint_is_refused_without_allow_fresh(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (list_checkpoints(run_dir)[0] / "learner.pt").write_bytes(b"truncated")
    code, line = one_line_error(["train", "--resume", str(run_dir)], capsys)
    assert code == 2 and "no good checkpoint" in line and "--allow-fresh" in line
    code, line = one_line_error(["train", "--allow-fresh"], capsys)
    assert code == 2 and "--allow-fresh only goes with --resume" in line
    code, line = one_line_error(["train", "--resume", str(run_dir), "--preset", "smoke"], capsys)
    assert code == 2 and "dotted overrides" in line


def test_resuming_a_finished_run_asks_for_more_timesteps_without_starting_ray(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = finished_run(tmp_path, 640)
    code, line = one_line_error(["train", "--resume", str(run_dir)], capsys)
    assert code == 2
    assert line == (f"keisei-ray: config error: train.total_timesteps: run {run_dir} has reached "
                    f"timestep 640 of its 640 already; raise it to go on, e.g. keisei-ray train "
                    f"--resume {run_dir} train.total_timesteps=1280")
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match="has reached timestep 640 of its 600 already"):
        keisei_ray.train(resume=run_dir, overrides=["train.total_timesteps=600"])
    assert not ray.is_initialized()


def test_export_writes_an_inference_model(run_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as info:
        main(["export", str(run_dir), str(out)])  # a run folder: its newest good checkpoint
    assert info.value.code in (0, None)
    model = load_model(out)
    saved = read_checkpoint(list_checkpoints(run_dir)[0]).learner["model"]
    assert model.meta["timestep"] == 640
    for name, value in model.model.state_dict().items():
        assert torch.equal(value, saved[name])
    assert out.stat().st_size < (list_checkpoints(run_dir)[0] / "learner.pt").stat().st_size
    code, line = one_line_error(["export", str(tmp_path / "nope"), str(out)], capsys)
    assert code == 2 and "not found" in line
    assert json.loads((list_checkpoints(run_dir)[0] / "manifest.json").read_text())["version"] == 5
