"""Resuming a run keeps everything it measured and saved: its Elo history and its best
checkpoint (issue 26, item 2), through real training runs of the smoke preset, and the Elo
history a checkpoint predates folded back in from elo.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from keisei_ray import load_config, train
from keisei_ray.arena.background import BackgroundEvaluation
from keisei_ray.events import EventBus, TrainStart
from keisei_ray.store.checkpoint import BEST_FILE, CHECKPOINTS, list_checkpoints, read_checkpoint
from keisei_ray.training.metrics import METRICS_FILE, read_metrics
from tests.test_files import run_files_modes

INTERVAL = 1024  # divides the smoke preset's 2048 timesteps: the last update crosses it


def history_of(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "evaluation" / "elo.json").read_text())["history"]


def true_best(run_dir: Path, history: list[dict[str, Any]]) -> str:
    """The checkpoint the evaluations rate highest, among every checkpoint the run saved."""
    saved = {r["version"]: Path(r["path"]).name for r in read_metrics(run_dir / METRICS_FILE)
             if r["event"] == "checkpoint" and r["reason"] != "best"}
    rated = [(row["elo"], saved[row["version"]]) for row in history
             if row["elo"] is not None and row["version"] in saved]
    return max(rated)[1]


@pytest.mark.slow
def test_resuming_a_finished_run_keeps_its_elo_history_and_its_best_checkpoint(
        ray_local: None, tmp_path: Path) -> None:
    overrides = [f"train.runs_dir={tmp_path}", "train.run_name=elo",
                 f"checkpoint.interval_timesteps={INTERVAL}", "checkpoint.keep_last=1",
                 f"evaluation.interval_timesteps={INTERVAL}", "evaluation.games=8",
                 "evaluation.opponents=[random]", "evaluation.records=1",
                 "evaluation.priority=normal"]
    before = os.umask(0o077)  # one mode for every run file, whatever the umask
    try:
        first = train(load_config(preset="smoke", overrides=overrides), progress=False)
    finally:
        os.umask(before)
    assert first.reason == "completed"
    run_dir = first.run_dir
    assert run_files_modes(run_dir) == {}
    history = history_of(run_dir)
    assert history[-1]["timestep"] == first.timestep, "the final policy was evaluated"

    # The run's last checkpoint holds what the run measured up to its very end.
    last = read_checkpoint(list_checkpoints(run_dir)[0])
    assert last.timestep == first.timestep
    assert [r["name"] for r in last.callbacks["evaluation"]["history"]] == [
        r["name"] for r in history]
    best = json.loads((run_dir / CHECKPOINTS / BEST_FILE).read_text())
    assert last.callbacks["checkpoint"]["best"] == best["checkpoint"]
    assert best["checkpoint"] == true_best(run_dir, history)

    # Resumed with more timesteps: the earlier history stays, the true best survives.
    more = first.timestep + 2 * INTERVAL
    second = train(resume=run_dir, overrides=[f"train.total_timesteps={more}"], progress=False)
    assert second.reason == "completed" and second.timestep >= more
    after = history_of(run_dir)
    assert [r["name"] for r in after[:len(history)]] == [r["name"] for r in history]
    assert len(after) > len(history)
    best = json.loads((run_dir / CHECKPOINTS / BEST_FILE).read_text())
    assert best["checkpoint"] == true_best(run_dir, after)
    assert (run_dir / CHECKPOINTS / best["checkpoint"] / "manifest.json").is_file()
    assert run_files_modes(run_dir) == {}


def row(name: str, timestep: int, wins: int, draws: int, losses: int) -> dict[str, Any]:
    return {"name": name, "timestep": timestep, "version": timestep // 100, "elo": 0.0,
            "elo_ci": 100.0, "matches": {"random": {"wins": wins, "draws": draws,
                                                    "losses": losses, "score": 0.5}}}


def test_a_resumed_evaluation_folds_back_what_its_checkpoint_predates(tmp_path: Path) -> None:
    # elo.json holds three evaluations; the checkpoint resumed from (timestep 250) was taken
    # after the first only, and the third is of a future the resumed run trains anew.
    config = load_config(None, ["evaluation.opponents=[random]"])
    run_dir = tmp_path / "run"
    (run_dir / "evaluation").mkdir(parents=True)
    rows = [row("ts-100", 100, 3, 1, 0), row("ts-200", 200, 1, 1, 2), row("ts-300", 300, 4, 0, 0)]
    (run_dir / "evaluation" / "elo.json").write_text(json.dumps({"history": rows}))
    saved = BackgroundEvaluation(config, run_dir)
    saved.elo.record("ts-100", "random", 3, 1, 0)
    saved.history.append(rows[0])
    state = json.loads(json.dumps(saved.state_dict()))

    resumed = BackgroundEvaluation(config, run_dir)
    resumed.load_state_dict(state)
    resumed.on_train_start(TrainStart(run_dir, config, 250, 2, True, bus=EventBus()))
    assert [r["name"] for r in resumed.history] == ["ts-100", "ts-200"]
    assert resumed.elo.rating("ts-200").games == 4
    assert resumed.elo.rating("ts-100").games == 4  # recorded once, not twice
    assert [r["name"] for r in history_of(run_dir)] == ["ts-100", "ts-200"]
    (aside,) = (run_dir / "evaluation").glob("elo.json.abandoned-*")
    assert [r["name"] for r in json.loads(aside.read_text())["history"]] == [
        "ts-100", "ts-200", "ts-300"]
