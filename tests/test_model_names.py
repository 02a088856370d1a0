"""One rule wherever a model is named (issue 26, item 3): a model file, a checkpoint directory,
or a run folder meaning its best checkpoint (else its newest good one), saying which was taken.
`evaluate`, `play`, `usi`, `export` and the library's `evaluate` all go through it, in process
and without Ray."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

import keisei_ray
from keisei_ray.arena.evaluation import load_contestant
from keisei_ray.config_loading import load_config
from keisei_ray.store.checkpoint import BEST_FILE, CHECKPOINTS, RunSnapshot, create_run_id
from keisei_ray.store.checkpoint import write_checkpoint as write
from keisei_ray.store.model_file import ModelFileError, load_model, resolve_model, save_model
from learner import Learner
from learner.model import export_weights
from tests.test_cli import run_cli

BEST, NEWEST = "ckpt-000000000096", "ckpt-000000000192"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with two checkpoints, the older one rated best."""
    config = load_config(None, ["model.size=tiny", "env.max_moves=24"])
    learner = Learner(config, capacity=16, device="cpu").state_dict()
    run = tmp_path_factory.mktemp("runs") / "myrun"
    run.mkdir()
    run_id = create_run_id(run)
    for timestep, version in ((96, 1), (192, 2)):
        write(run / CHECKPOINTS, RunSnapshot(config=config, timestep=timestep, version=version,
                                             driver={}, learner=learner, workers={}),
              run_id=run_id, reason="interval")
    (run / CHECKPOINTS / BEST_FILE).write_text(json.dumps(
        {"checkpoint": BEST, "timestep": 96, "version": 1, "rated": True, "merit": 212.5}))
    return run


def test_the_rule(run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert resolve_model(run_dir) == run_dir / CHECKPOINTS / BEST
    assert f"run folder {run_dir}: its best checkpoint {BEST} (Elo +212.5" in caplog.text
    checkpoint = run_dir / CHECKPOINTS / NEWEST
    assert resolve_model(checkpoint) == checkpoint
    model = load_model(run_dir)
    assert model.meta["checkpoint"] == str(run_dir / CHECKPOINTS / BEST)
    file = save_model(tmp_path / "m.pt", export_weights(model.model), model.config)
    assert resolve_model(file) == file
    with pytest.raises(ModelFileError, match="neither a checkpoint .* nor a run folder"):
        resolve_model(tmp_path)
    with pytest.raises(ModelFileError, match="not found"):
        resolve_model(tmp_path / "none.pt")


def test_a_run_without_a_good_best_takes_its_newest_good_checkpoint(
        run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    caplog.set_level(logging.INFO)
    (copy / CHECKPOINTS / BEST / "manifest.json").unlink()  # the best is damaged
    assert resolve_model(copy) == copy / CHECKPOINTS / NEWEST
    assert f"its newest good checkpoint {NEWEST} (timestep 192; best.json names a bad one" in (
        caplog.text)
    (copy / CHECKPOINTS / BEST_FILE).unlink()
    assert resolve_model(copy) == copy / CHECKPOINTS / NEWEST
    shutil.rmtree(copy / CHECKPOINTS / NEWEST)
    with pytest.raises(ModelFileError, match="no good checkpoint"):
        resolve_model(copy)


def test_every_command_takes_a_run_folder(run_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    fast = "env.max_moves=24"
    code, out, err = run_cli(["evaluate", str(run_dir), "random", "-n", "2", fast], capsys)
    assert code == 0, err
    assert "myrun vs random: 2 games" in out
    assert f"its best checkpoint {BEST}" in caplog.text
    caplog.clear()

    code, out, err = run_cli(["export", str(run_dir), str(tmp_path / "out.pt")], capsys)
    assert code == 0, err
    assert f"from {run_dir / CHECKPOINTS / BEST}" in out

    monkeypatch.setattr(sys, "stdin", io.StringIO("resign\n"))
    code, out, err = run_cli(["play", str(run_dir), fast], capsys)
    assert code == 0, err
    assert "you resign" in out

    usi = io.TextIOWrapper(io.BytesIO(b"usi\nisready\nquit\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", usi)
    code, out, err = run_cli(["usi", str(run_dir)], capsys)
    assert code == 0, err
    assert "usiok" in out and "readyok" in out

    assert load_contestant(str(run_dir)).name == "myrun"
    match = keisei_ray.evaluate(run_dir, "random", games=2, config={"env": {"max_moves": 24}})
    assert (match.player, match.games) == ("myrun", 2)
