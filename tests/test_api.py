"""The library API: `keisei_ray.train(config)` in-process, and `keisei_ray.evaluate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import keisei_ray
from keisei_ray import ConfigError, RunResult, evaluate, load_config, train
from keisei_ray.events import Callback, TrainEnd, UpdateDone
from keisei_ray.store.checkpoint import list_checkpoints, read_checkpoint


class Recorder(Callback):
    def __init__(self) -> None:
        self.timesteps: list[int] = []
        self.end: TrainEnd | None = None

    def on_update_done(self, event: UpdateDone) -> None:
        self.timesteps.append(event.timestep)

    def on_train_end(self, event: TrainEnd) -> None:
        self.end = event


def test_the_errors_the_readme_names_are_importable() -> None:
    from keisei_ray import CheckpointError, ConfigError, TrainingError
    from keisei_ray.store.checkpoint import CheckpointError as StoreCheckpointError
    from keisei_ray.training.ray_cluster import TrainingError as DriverTrainingError

    assert CheckpointError is StoreCheckpointError and TrainingError is DriverTrainingError
    assert issubclass(ConfigError, ValueError)
    assert {"CheckpointError", "TrainingError"} <= set(keisei_ray.__all__)


def test_import_stays_light() -> None:
    code = ("import sys, keisei_ray; keisei_ray.train; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_train_smoke_in_process_then_resume(ray_local: None, tmp_path: Path) -> None:
    config = load_config(preset="smoke", overrides=[f"train.runs_dir={tmp_path}",
                                                    "train.run_name=lib",
                                                    "evaluation.enabled=false"])
    recorder = Recorder()
    result = train(config, callbacks=[recorder], progress=False)
    assert isinstance(result, RunResult)
    assert result.reason == "completed"
    assert result.run_dir == tmp_path / "lib"
    assert result.timestep >= config.train.total_timesteps
    assert result.updates == len(recorder.timesteps) and recorder.timesteps[-1] == result.timestep
    assert recorder.end is not None and recorder.end.timestep == result.timestep
    assert result.final_weights
    assert "completed" in (result.run_dir / "train.log").read_text()
    newest = read_checkpoint(list_checkpoints(result.run_dir)[0])
    assert newest.timestep == result.timestep
    match = evaluate(result.run_dir, "random", games=2, config={"env": {"max_moves": 16}})
    assert (match.player, match.games) == ("lib", 2)

    # The same run, resumed with more timesteps: it goes on from its checkpoint.
    more = result.timestep + 512
    resumed = train(resume=result.run_dir, overrides=[f"train.total_timesteps={more}"],
                    progress=False)
    assert resumed.run_dir == result.run_dir and resumed.reason == "completed"
    assert resumed.timestep >= more
    assert read_checkpoint(list_checkpoints(result.run_dir)[0]).timestep == resumed.timestep


def test_train_refuses_bad_arguments_before_any_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.num_workers"):
        train({"train": {"num_workers": "zero", "runs_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="only goes with --resume"):
        train(preset="smoke", allow_fresh=True)
    with pytest.raises(ConfigError, match="dotted overrides"):
        train(preset="smoke", resume=tmp_path)
    assert not any(tmp_path.iterdir())


def test_evaluate_baselines_in_process() -> None:
    result = evaluate("heuristic", "random", games=4, config={"env": {"max_moves": 64}})
    assert result.games == 4
    assert result.wins + result.draws + result.losses == 4
    with pytest.raises(ConfigError, match="two different players"):
        evaluate("random", "random", games=2)
    assert keisei_ray.evaluate is evaluate
