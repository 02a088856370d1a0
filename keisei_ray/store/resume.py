"""Resuming a run: which checkpoint `--resume PATH` continues from, and which config changes
it allows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keisei_ray.config import Config
from keisei_ray.store.checkpoint import (
    _NAME,
    CHECKPOINTS,
    INCOMPATIBLE_FIELDS,
    RUN_FILE,
    WORKER_FIELDS,
    CheckpointError,
    RunSnapshot,
    list_checkpoints,
    read_checkpoint,
    run_id_of,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    run_id: str
    snapshot: RunSnapshot | None  # None: no good checkpoint, starting the run afresh
    path: Path | None  # the checkpoint resumed from


def find_resume_point(path: Path, *, allow_fresh: bool = False) -> ResumePoint:
    """The newest good checkpoint of a run folder, or the given checkpoint (or an older one).

    Each bad checkpoint is reported in one warning line and the previous one is tried. Only the
    run's own `checkpoints/` folder is searched and the manifest's run id must match the run's.
    With none good, CheckpointError unless `allow_fresh` (then snapshot is None).
    """
    path = Path(path)
    if (path / RUN_FILE).is_file():
        run_dir, candidates = path, list_checkpoints(path)
    elif _NAME.match(path.name) and path.parent.name == CHECKPOINTS:
        run_dir = path.parent.parent
        if not (run_dir / RUN_FILE).is_file():
            raise CheckpointError(f"--resume {path}: the checkpoint is not inside its run folder "
                                  f"(no {run_dir / RUN_FILE})")
        candidates = [p for p in list_checkpoints(run_dir) if p.name <= path.name]
        if path not in candidates:
            candidates.insert(0, path)  # missing: reported below, then the older ones
    else:
        raise CheckpointError(f"--resume {path}: neither a run folder (with {RUN_FILE}) nor a "
                              f"checkpoint (RUN/{CHECKPOINTS}/ckpt-N)")
    run_id = run_id_of(run_dir)
    for candidate in candidates:
        try:
            snapshot = read_checkpoint(candidate, run_id=run_id)
        except CheckpointError as exc:
            log.warning("%s; trying the previous one", exc)
            continue
        log.info("resuming run %s from %s (timestep %d)", run_id, candidate, snapshot.timestep)
        return ResumePoint(run_dir, run_id, snapshot, candidate)
    what = f"no good checkpoint in {run_dir / CHECKPOINTS} ({len(candidates)} tried)"
    if not allow_fresh:
        raise CheckpointError(f"{what}; pass --allow-fresh to start this run from scratch")
    log.warning("%s: starting run %s from scratch (--allow-fresh)", what, run_id)
    return ResumePoint(run_dir, run_id, None, None)


def _field(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def check_compatible(saved: Config, now: Config, where: Path | str) -> list[str]:
    """Refuse a config the saved learner cannot continue with (CheckpointError names the field).

    Returns the fields that make the saved games unusable (their workers start new games).
    """
    for name in INCOMPATIBLE_FIELDS:
        old, new = _field(saved, name), _field(now, name)
        if old != new:
            raise CheckpointError(f"checkpoint {where}: incompatible config: {name} is {old!r} "
                                  f"in the checkpoint, {new!r} now")
    if (saved.ppo.amp == "fp16") != (now.ppo.amp == "fp16"):
        raise CheckpointError(f"checkpoint {where}: incompatible config: ppo.amp is "
                              f"{saved.ppo.amp!r} in the checkpoint, {now.ppo.amp!r} now (the "
                              "fp16 scaler state)")
    return [name for name in WORKER_FIELDS if _field(saved, name) != _field(now, name)]


