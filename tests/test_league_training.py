"""League self-play on a real local Ray: a smoke run, and an exact stop-and-resume."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from keisei_ray.store.checkpoint import list_checkpoints
from keisei_ray.store.resume import find_resume_point
from keisei_ray.store.saver import CheckpointCallback
from keisei_ray.training.driver import Trainer
from tests.test_resume import StopAt, assert_same_run, resume_config

pytestmark = pytest.mark.usefixtures("ray_local")

LEAGUE = ("league.enabled=true", "league.share=0.5", "league.snapshot_interval=2",
          "league.pool_size=2", "league.evict=weakest")


@pytest.mark.slow
def test_training_with_league_games(tmp_path: Path) -> None:
    config = resume_config(tmp_path, *LEAGUE, "env.max_moves=16")
    trainer = Trainer(config, tmp_path)
    result = trainer.run()
    assert result.reason == "completed" and result.state.timestep >= 480
    league = trainer.league
    assert league is not None
    # Members joined at updates 0, 2, 4, ...: the pool is full and some were evicted.
    assert len(league.members) == 2 and league.next_id == 1 + result.state.updates // 2
    games = sum(m.total_games for m in (*league.members.values(), *league.retired.values()))
    assert games > 0  # the workers' league results reached the win-rate table


@pytest.mark.slow
def test_stop_and_resume_with_league_is_bit_identical(tmp_path: Path) -> None:
    config = resume_config(tmp_path, *LEAGUE)
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    straight_trainer = Trainer(config, straight_dir)
    straight = straight_trainer.run()

    run_dir = tmp_path / "split"
    run_dir.mkdir()
    stop = threading.Event()
    first = Trainer(config, run_dir, stop=stop,
                    callbacks=[CheckpointCallback(config), StopAt(stop, 240)]).run()
    assert first.reason == "interrupted"
    point = find_resume_point(run_dir)
    assert point.snapshot is not None and point.snapshot.league
    assert set(point.snapshot.league_weights) == {
        m["member_id"] for m in (*point.snapshot.league["members"],
                                 *point.snapshot.league["retired"])}
    resumed_trainer = Trainer(config, run_dir, resume=point.snapshot,
                              callbacks=[CheckpointCallback(config)])
    resumed = resumed_trainer.run()
    assert resumed.reason == "completed"
    assert_same_run(straight, resumed)
    assert straight_trainer.league is not None and resumed_trainer.league is not None
    assert resumed_trainer.league.state_dict() == straight_trainer.league.state_dict()
    assert (list_checkpoints(run_dir)[0] / "league.json").is_file()
