"""Benchmark: checkpoint save/load time by model size, and the training stall a save causes.

Save and load are timed on a full checkpoint (learner with Adam moments, one worker's games,
one pending batch). The stall is what the driver itself spends per checkpoint in a real
training run on Ray (fetching the snapshot; files are written by a background thread), next
to the mean update interval and the steps/s of the same run without checkpoints.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from actors.self_play import SelfPlayWorker
from keisei_ray.config import Config
from keisei_ray.config_loading import load_config
from keisei_ray.store.checkpoint import RunSnapshot, read_checkpoint, write_checkpoint
from learner import Learner
from learner.model import export_weights


def _snapshot(size: str) -> RunSnapshot:
    config = load_config(None, [f"model.size={size}", "train.games_per_worker=32",
                                "train.rollout_steps=32"])
    learner = Learner(config, capacity=64, device="cpu")
    for p in learner.model.parameters():  # one optimizer step: Adam's moments exist, as in a run
        p.grad = torch.zeros_like(p)
    learner.optimizer.step()
    # The worker's state does not depend on the model size: a tiny one plays faster.
    worker = SelfPlayWorker(load_config(None, ["model.size=tiny", "train.games_per_worker=32",
                                               "train.rollout_steps=32"]), worker_id=0)
    weights = export_weights(worker.model)
    worker.collect(weights, 0)
    _, payload = worker.collect(weights, 0)
    return RunSnapshot(config=config, timestep=65536, version=64, driver={"timestep": 65536},
                       learner=learner.state_dict(), workers={0: worker.get_state()},
                       pending=[payload], pending_games={}, rng={}, callbacks={})


def bench_store(size: str, repeats: int = 3) -> dict[str, float]:
    """Median save and load seconds of one checkpoint of a `size` model, and its size."""
    snapshot = _snapshot(size)
    params = sum(t.numel() for t in snapshot.learner["model"].values())
    saves, loads = [], []
    with tempfile.TemporaryDirectory(prefix="keisei-bench-ckpt-") as tmp:
        for k in range(repeats):
            snapshot.timestep = k
            start = time.perf_counter()
            path = write_checkpoint(Path(tmp), snapshot, run_id="bench", reason="bench")
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            read_checkpoint(path)
            loads.append(time.perf_counter() - start)
        nbytes = sum(f.stat().st_size for f in path.iterdir())
    return {f"{size}_params_M": params / 1e6, f"{size}_checkpoint_MB": nbytes / 1e6,
            f"{size}_save_s": statistics.median(saves), f"{size}_load_s": statistics.median(loads)}


def bench_stall(size: str = "small", updates: int = 12) -> dict[str, float]:
    """Driver stall per checkpoint with a checkpoint after every update, vs no checkpoints."""
    import ray  # noqa: PLC0415 (only the stall part needs Ray)

    from keisei_ray.store.saver import CheckpointCallback  # noqa: PLC0415
    from keisei_ray.training.driver import Trainer  # noqa: PLC0415
    from keisei_ray.training.ray_cluster import connect_ray  # noqa: PLC0415

    session = connect_ray(None, num_cpus=2, include_dashboard=False)
    figures: dict[str, float] = {}
    try:
        for every in (False, True):
            with tempfile.TemporaryDirectory(prefix="keisei-bench-stall-") as tmp:
                config = _stall_config(size, updates, tmp, every)
                callback = CheckpointCallback(config)
                run_dir = Path(tmp) / "run"
                run_dir.mkdir()
                result = Trainer(config, run_dir, callbacks=[callback]).run()
            key = "with_checkpoints" if every else "without_checkpoints"
            figures[f"steps_per_s_{key}"] = result.steps_per_s
            if every:
                figures["checkpoints"] = float(len(callback.stall_s))
                figures["stall_ms_mean"] = 1e3 * statistics.mean(callback.stall_s)
                figures["stall_ms_max"] = 1e3 * max(callback.stall_s)
                figures["write_s_mean"] = statistics.mean(callback.save_s)
                figures["update_interval_s"] = result.wall_s / max(result.state.updates, 1)
    finally:
        if session.started_here:
            ray.shutdown()
    return figures


def _stall_config(size: str, updates: int, runs_dir: str, every: bool) -> Config:
    per_update = 16 * 32  # one worker, 16 games, 32 plies
    return load_config(None, [
        f"model.size={size}", "train.num_workers=1", "train.learner_cpus=0",
        "train.games_per_worker=16", "train.rollout_steps=32", "ppo.epochs=1",
        "ppo.minibatch_size=256", f"train.total_timesteps={updates * per_update}",
        f"checkpoint.interval_timesteps={1 if every else 'null'}", "checkpoint.keep_last=2",
        f"train.runs_dir={runs_dir}"])


def bench_checkpoint(sizes: tuple[str, ...] = ("small", "large"), repeats: int = 3,
                     stall: bool = True, stall_size: str = "small") -> dict[str, Any]:
    """All figures of `keisei-ray bench checkpoint`."""
    figures: dict[str, Any] = {}
    for size in sizes:
        figures.update(bench_store(size, repeats))
    if stall:
        figures.update({f"stall_{k}" if not k.startswith("stall") else k: v
                        for k, v in bench_stall(stall_size).items()})
    return figures
