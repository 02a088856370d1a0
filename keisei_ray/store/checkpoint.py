"""Checkpoints: written atomically off the hot path, verified on load, resumed exactly.

A checkpoint is one directory, `RUN_DIR/checkpoints/ckpt-<timestep>`:

    learner.pt      Learner.state_dict(): model, optimizer, AMP scaler, generator, counters
                    (the LR schedule has no state of its own: it is a function of the timestep)
    workers.pt      each self-play worker's running games and generator
    pending.pt      experience batches gathered at the cut but not trained on yet
    driver.pt       the driver process's RNG states
    state.json      the driver's counters and statistics (TrainState), the pending games
    callbacks.json  the state of stateful callbacks (e.g. the Elo table), by state_key
    config.yaml     the effective config
    manifest.json   format, run id, timestep, version, SHA-256 and size of every file

It is written under a `tempfile.mkdtemp` name in the same folder, every file fsync'ed, the
manifest last, then renamed into place: a directory named `ckpt-*` is complete or was tampered
with. Loading verifies the manifest and reads tensors with `torch.load(weights_only=True)`
(never unpickles arbitrary objects). What goes wrong is one `CheckpointError` line, and resume
falls back to the previous good checkpoint of the same run.

The driver provides the consistent cut (`UpdateDone.snapshot` / `TrainEnd.snapshot`: learner
idle, every worker between collects); `CheckpointCallback` decides when to save, hands the
snapshot to a writer thread, keeps the last K and the best, and emits `CheckpointSaved`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import dump, saved_model_config, validate
from keisei_ray.files import DIR_MODE, FILE_MODE, make_dir, write_atomic
from keisei_ray.text import signed
from shogi import NUM_ACTIONS

log = logging.getLogger(__name__)

FORMAT = "keisei-ray-checkpoint/1"
CHECKPOINTS = "checkpoints"  # the folder of a run that holds its checkpoints
MANIFEST = "manifest.json"
RUN_FILE = "run.json"  # a run folder's identity: its run id (also the W&B run id)
BEST_FILE = "best.json"  # names the best checkpoint of the run
_NAME = re.compile(r"^ckpt-(\d+)$")

# Config fields whose change makes the saved learner state unusable.
INCOMPATIBLE_FIELDS = ("model.size", "model.blocks", "model.channels",
                       "model.squeeze_excitation", "model.norm", "model.attack_planes",
                       "model.policy_head", "ppo.optimizer")
# Config fields whose change makes the saved games unusable (workers then start new games).
WORKER_FIELDS = ("env.max_moves", "env.impasse", "train.games_per_worker", "league.enabled",
                 "league.share")


class CheckpointError(ValueError):
    """A checkpoint is missing, partial, corrupt, tampered with, foreign or incompatible."""


@dataclass
class RunSnapshot:
    """A consistent cut of a training run: what a checkpoint holds and resume restores."""

    config: Config
    timestep: int
    version: int
    driver: dict[str, Any]  # the driver's TrainState as JSON-able values
    learner: dict[str, Any]  # Learner.state_dict()
    workers: dict[int, dict[str, Any]]  # worker id -> SelfPlayWorker.get_state()
    pending: list[bytes] = field(default_factory=list)  # encoded batches not trained on yet
    pending_games: dict[str, Any] = field(default_factory=dict)  # their GameStats, as a dict
    rng: dict[str, Any] = field(default_factory=dict)  # the driver process's RNG states
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # state_key -> state
    league: dict[str, Any] = field(default_factory=dict)  # League.state_dict() ({}: no league)
    league_weights: dict[int, dict[str, Any]] = field(default_factory=dict)  # member -> weights
    # The material shaping's coefficient in force at the cut (RewardConfig.weight_at):
    # the value head learnt returns that count it, so a search adds it back (actors/search.py).
    value_material: float = 0.0


@dataclass(frozen=True)
class CheckpointInfo:
    """What a verified manifest says about its checkpoint."""

    path: Path
    run_id: str
    timestep: int
    version: int
    reason: str
    created: str
    config: dict[str, Any]


# ----------------------------------------------------------------------------- run identity


def create_run_id(run_dir: Path, run_id: str | None = None) -> str:
    """Give a new run folder its identity (RUN_DIR/run.json): `run_id` or a fresh random one."""
    path = Path(run_dir) / RUN_FILE
    if path.exists():
        raise CheckpointError(f"{run_dir} already has a run id ({RUN_FILE} exists)")
    run_id = run_id or secrets.token_hex(6)
    write_atomic(path, json.dumps({"run_id": run_id, "created": _now()}).encode())
    return run_id


def run_id_of(run_dir: Path, *, create: bool = False) -> str:
    """The run id recorded in RUN_DIR/run.json (a new one is created when asked)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        if not create:
            raise CheckpointError(f"{run_dir} is not a run folder (no {RUN_FILE})")
        return create_run_id(run_dir)
    try:
        run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable run identity ({exc})") from None
    if not isinstance(run_id, str) or not run_id:
        raise CheckpointError(f"{path}: run_id must be a non-empty string, got {run_id!r}")
    return run_id


def checkpoint_name(timestep: int) -> str:
    return f"ckpt-{timestep:012d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories, newest (highest timestep) first; nothing verified."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


# ----------------------------------------------------------------------------- writing


def write_checkpoint(folder: Path, snapshot: RunSnapshot, *, run_id: str, reason: str) -> Path:
    """Write `snapshot` as `folder/ckpt-<timestep>` atomically; returns its path."""
    make_dir(folder)
    files = {
        "learner.pt": _torch_bytes(snapshot.learner),
        "workers.pt": _torch_bytes(_to_torch(snapshot.workers)),
        "pending.pt": _torch_bytes(list(snapshot.pending)),
        "driver.pt": _torch_bytes(_to_torch(snapshot.rng)),
        "state.json": _json_bytes({"driver": snapshot.driver,
                                   "pending_games": snapshot.pending_games,
                                   "value_material": snapshot.value_material}),
        "callbacks.json": _json_bytes(snapshot.callbacks),
        "config.yaml": dump(snapshot.config).encode("utf-8"),
    }
    if snapshot.league:  # league self-play: the pool's table and RNG, and its members' weights
        files["league.json"] = _json_bytes(snapshot.league)
        files["league.pt"] = _torch_bytes(_to_torch(snapshot.league_weights))
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "timestep": snapshot.timestep,
        "version": snapshot.version,
        "reason": reason,
        "created": _now(),
        "num_actions": NUM_ACTIONS,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()},
    }
    final = folder / checkpoint_name(snapshot.timestep)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=folder))
    try:
        os.chmod(tmp, DIR_MODE)  # mkdtemp makes it 0700
        for name, data in files.items():
            _write_synced(tmp / name, data)
        _write_synced(tmp / MANIFEST, _json_bytes(manifest))  # last: it marks completeness
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same timestep (e.g. a resumed run's end)
            aside = Path(tempfile.mkdtemp(prefix=".old-ckpt-", dir=folder))
            os.replace(final, aside / final.name)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        os.chmod(path, FILE_MODE)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _to_torch(tree: Any) -> Any:
    """numpy arrays -> tensors (torch.load(weights_only=True) reads tensors, not arrays)."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.array(tree))  # a writable copy (Ray hands read-only arrays)
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {key: _to_torch(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_torch(value) for value in tree)
    return tree


def _to_numpy(tree: Any) -> Any:
    """The inverse of `_to_torch`."""
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    if isinstance(tree, dict):
        return {key: _to_numpy(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_numpy(value) for value in tree)
    return tree


# ----------------------------------------------------------------------------- reading


def verify_checkpoint(path: Path, *, run_id: str | None = None,
                      hashes: bool = True) -> CheckpointInfo:
    """Check the manifest and every file's size and SHA-256 (`hashes=False`: sizes only, a
    quick look); CheckpointError says what is wrong."""
    path = Path(path)
    where = f"checkpoint {path}"
    if not path.is_dir():
        raise CheckpointError(f"{where}: not found")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{where}: partial (no {MANIFEST}: its save never finished)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        info = CheckpointInfo(path=path, run_id=str(manifest["run_id"]),
                              timestep=int(manifest["timestep"]),
                              version=int(manifest["version"]), reason=str(manifest["reason"]),
                              created=str(manifest["created"]), config={})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: {MANIFEST} is unreadable ({type(exc).__name__}: "
                              f"{exc})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if run_id is not None and info.run_id != run_id:
        raise CheckpointError(f"{where}: belongs to run {info.run_id!r}, not to this run "
                              f"{run_id!r} (a run only resumes from its own checkpoints)")
    if manifest.get("num_actions") != NUM_ACTIONS:
        raise CheckpointError(f"{where}: action space of {manifest.get('num_actions')!r} "
                              f"actions, this version has {NUM_ACTIONS}")
    if not isinstance(files, dict) or "learner.pt" not in files:
        raise CheckpointError(f"{where}: {MANIFEST} lists no learner.pt")
    for name, entry in files.items():
        if (not isinstance(entry, dict) or type(entry.get("bytes")) is not int
                or not isinstance(entry.get("sha256"), str)):
            raise CheckpointError(f"{where}: {MANIFEST} entry {str(name)[:80]!r} is not "
                                  "{sha256, bytes}")
        if Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{where}: {MANIFEST} names a file outside the checkpoint "
                                  f"({name[:80]!r})")
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{where}: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{where}: {name} is truncated or altered ({size} bytes, "
                                  f"manifest says {entry['bytes']})")
        if hashes and _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{where}: {name} does not match its SHA-256 (corrupt or "
                                  "tampered with)")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or unsafe file
        first = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is unreadable "
                              f"({type(exc).__name__}: {first})") from exc


def _read_config(path: Path) -> Config:
    try:
        data = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            data["model"] = saved_model_config(data["model"])
        return validate(data)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad config.yaml ({exc})") from None


def read_checkpoint(path: Path, *, run_id: str | None = None) -> RunSnapshot:
    """Verify and load a whole checkpoint (what resume needs)."""
    info = verify_checkpoint(path, run_id=run_id)
    config = _read_config(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        callbacks = json.loads((path / "callbacks.json").read_text(encoding="utf-8"))
        driver, pending_games = state["driver"], state["pending_games"]
        value_material = _value_material(state, config, info.timestep)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad state.json or callbacks.json "
                              f"({exc})") from None
    learner = _torch_load(path / "learner.pt")
    workers = _to_numpy(_torch_load(path / "workers.pt"))
    pending = _torch_load(path / "pending.pt")
    rng = _to_numpy(_torch_load(path / "driver.pt"))
    league: dict[str, Any] = {}
    league_weights: dict[int, dict[str, Any]] = {}
    if (path / "league.json").is_file():  # written by runs with league self-play only
        try:
            league = json.loads((path / "league.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: bad league.json ({exc})") from None
        league_weights = _to_numpy(_torch_load(path / "league.pt"))
    if not isinstance(learner, dict) or not isinstance(workers, dict) or not isinstance(
            pending, list) or not all(isinstance(p, bytes) for p in pending):
        raise CheckpointError(f"checkpoint {path}: learner, worker or pending state of the "
                              "wrong shape")
    return RunSnapshot(config=config, timestep=info.timestep, version=info.version,
                       driver=driver, learner=learner, workers=workers, pending=pending,
                       pending_games=pending_games, rng=rng, callbacks=callbacks,
                       league=league, league_weights=league_weights,
                       value_material=value_material)


def _value_material(state: Any, config: Config, timestep: int) -> float:
    """The shaping coefficient state.json records. A checkpoint written before it was
    recorded gets the one its config gives at its timestep share, or 0 (no correction, as
    then) where the shaping annealed over a time budget, whose progress it does not hold."""
    if isinstance(state, dict) and "value_material" in state:
        return float(state["value_material"])
    reward = config.reward
    if reward.material_anneal_share is not None and config.train.max_minutes is not None:
        return 0.0
    return reward.weight_at(timestep / config.train.total_timesteps)


def read_model_state(path: Path) -> tuple[Config, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, model state_dict, meta) of a checkpoint: only what inference needs."""
    info = verify_checkpoint(path)
    config = _read_config(path)
    learner = _torch_load(path / "learner.pt")
    model = learner.get("model") if isinstance(learner, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(f"checkpoint {path}: learner.pt holds no model state")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        value_material = _value_material(state, config, info.timestep)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad state.json ({exc})") from None
    meta = {"run_id": info.run_id, "timestep": info.timestep, "version": info.version,
            "checkpoint": str(path), "value_material": value_material}
    return config, model, meta


def best_checkpoint(run_dir: Path) -> tuple[Path, str]:
    """A run folder's model: its best checkpoint (the one `best.json` names) when that one is
    good, else its newest good one; and a line saying which was taken and why."""
    run_dir = Path(run_dir)
    best_file = run_dir / CHECKPOINTS / BEST_FILE
    why = f"no {CHECKPOINTS}/{BEST_FILE} (no evaluation rated one)"
    if best_file.is_file():
        try:
            best = json.loads(best_file.read_text(encoding="utf-8"))
            name = str(best["checkpoint"])
            if not _NAME.match(name):
                raise ValueError(f"{name[:80]!r} is not a checkpoint name")
            verify_checkpoint(run_dir / CHECKPOINTS / name)
        except CheckpointError as exc:
            why = f"{BEST_FILE} names a bad one ({exc})"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"{BEST_FILE} is unreadable ({exc})"
        else:
            merit = best.get("merit")
            rated = (f"Elo {signed(merit, 1)}" if best.get("rated") else f"score {merit:.3f}"
                     ) if isinstance(merit, int | float) else "rated"
            return run_dir / CHECKPOINTS / name, (f"its best checkpoint {name} ({rated}, "
                                                  f"{CHECKPOINTS}/{BEST_FILE})")
    for candidate in list_checkpoints(run_dir):
        try:
            info = verify_checkpoint(candidate)
        except CheckpointError as exc:
            log.warning("%s; trying the previous one", exc)
            continue
        return candidate, (f"its newest good checkpoint {candidate.name} (timestep "
                           f"{info.timestep:,}; {why})")
    raise CheckpointError(f"run folder {run_dir}: no good checkpoint in {run_dir / CHECKPOINTS}")


