"""Inference-only model files: weights plus the model config that shapes them, and the one
rule for naming a model.

`keisei-ray export` writes one. Wherever a model is named (`evaluate`, `play`, `usi`, `export`,
`gauntlet`, evaluation opponents, the library's `evaluate`), `resolve_model` takes a model file,
a checkpoint directory, or a run folder meaning its best checkpoint (else its newest good one,
logged), and `load_model` loads what it names. Loading never unpickles arbitrary objects
(`torch.load(weights_only=True)`), and any problem is one `ModelFileError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from keisei_ray.config import ModelConfig
from keisei_ray.config_loading import saved_model_config
from keisei_ray.files import make_dir, write_atomic
from keisei_ray.store.checkpoint import (
    _NAME,
    MANIFEST,
    RUN_FILE,
    CheckpointError,
    best_checkpoint,
    read_model_state,
)
from learner.model import PolicyValueNet, build_model, load_weights

FORMAT = "keisei-ray-model/1"

log = logging.getLogger(__name__)


class ModelFileError(ValueError):
    """A model file is missing, corrupt, of another format or does not fit its config."""


@dataclass
class LoadedModel:
    model: PolicyValueNet  # in eval mode, on the CPU
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. timestep, version, run id


def save_model(path: str | Path, weights: Mapping[str, np.ndarray], config: ModelConfig,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write weights + model config to `path` atomically (temporary file, then rename)."""
    path = Path(path)
    make_dir(path.parent)
    tensors = {name: torch.from_numpy(np.array(array)) for name, array in weights.items()}
    payload = {
        "format": FORMAT,
        "model_config": config.model_dump(mode="json"),
        "weights": tensors,
        "meta": dict(meta or {}),
        "sha256": _digest(tensors),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, buffer.getvalue())


def resolve_model(path: str | Path) -> Path:
    """What a named model is: a model file or a checkpoint directory is itself; a run folder
    (with run.json) is its best checkpoint, else its newest good one, and which one was taken is
    logged. ModelFileError when the path is none of these or the run has no good checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise ModelFileError(f"model {path}: not found (expected a model file, a checkpoint "
                             "directory or a run folder)")
    if (path / MANIFEST).exists() or _NAME.match(path.name):
        return path  # a checkpoint: verified as it loads (a partial one says so)
    if (path / RUN_FILE).is_file():
        try:
            chosen, why = best_checkpoint(path)
        except CheckpointError as exc:
            raise ModelFileError(str(exc)) from None
        log.info("run folder %s: %s", path, why)
        return chosen
    raise ModelFileError(f"model {path}: a folder, but neither a checkpoint (no {MANIFEST}) nor "
                         f"a run folder (no {RUN_FILE})")


def load_model(path: str | Path) -> LoadedModel:
    """Load what `resolve_model(path)` names (a file written by `save_model`, or a checkpoint
    directory verified against its manifest) into a fresh network in eval mode."""
    path = resolve_model(path)
    if path.is_dir():
        return _load_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelFileError(f"model file {path}: unreadable ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(f"model file {path}: not a {FORMAT} file (format {found!r})")
    try:
        config = ModelConfig.model_validate(saved_model_config(payload["model_config"]))
    except (KeyError, TypeError, ValidationError) as exc:
        raise ModelFileError(f"model file {path}: bad model config ({exc})") from None
    weights = payload.get("weights")
    if not isinstance(weights, dict):
        raise ModelFileError(f"model file {path}: no weights")
    if not all(isinstance(name, str) and isinstance(t, torch.Tensor)
               for name, t in weights.items()):
        raise ModelFileError(f"model file {path}: weights must map names to tensors")
    digest = payload.get("sha256")
    # Files written before the digest existed have none; any other value must match.
    if "sha256" in payload and digest != _digest(weights):
        raise ModelFileError(f"model file {path}: the weights do not match their SHA-256 "
                             "(corrupt or altered)")
    meta = payload.get("meta") or {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"model file {path}: meta must be a mapping, got "
                             f"{type(meta).__name__}")
    model = build_model(config)
    try:
        load_weights(model, {name: t.numpy() for name, t in weights.items()})
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"model file {path}: {exc}") from None
    model.value_material = _value_material(meta, f"model file {path}")
    model.eval()
    return LoadedModel(model=model, config=config, meta=dict(meta))


def _value_material(meta: Mapping[str, Any], where: str) -> float:
    """meta's `value_material` (0 in files written before it was recorded), checked."""
    value = meta.get("value_material", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ModelFileError(f"{where}: meta value_material must be a number in [0, 1], got "
                             f"{value!r}")
    return float(value)


def _digest(weights: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) in name order: torch's zip
    container has no checksum that a bit flip in the weights would fail. (The model config
    needs none: a damaged one fails validation or does not fit the weights.)"""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_checkpoint(path: Path) -> LoadedModel:
    try:
        config, state, meta = read_model_state(path)
    except CheckpointError as exc:
        raise ModelFileError(str(exc)) from None
    model = build_model(config.model)
    try:
        load_weights(model, {name: t.numpy() for name, t in state.items()})
    except ValueError as exc:
        raise ModelFileError(f"checkpoint {path}: {exc}") from None
    model.value_material = _value_material(meta, f"checkpoint {path}")
    model.eval()
    return LoadedModel(model=model, config=config.model, meta=meta)
