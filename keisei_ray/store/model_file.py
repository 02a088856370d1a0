"""Inference-only model files: weights plus the model config that shapes them.

`keisei-ray export` writes one; evaluation, `usi` and `play` load one (or, through the
checkpoint store, a checkpoint directory). Loading never unpickles arbitrary objects
(`torch.load(weights_only=True)`), and any problem is one `ModelFileError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from keisei_ray.config import ModelConfig
from keisei_ray.config_loading import saved_model_config
from keisei_ray.files import write_atomic
from keisei_ray.store.checkpoint import CheckpointError, read_model_state
from learner.model import PolicyValueNet, build_model, load_weights

FORMAT = "keisei-ray-model/1"


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
    path.parent.mkdir(parents=True, exist_ok=True)
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


def load_model(path: str | Path) -> LoadedModel:
    """Load a file written by `save_model`, or a checkpoint directory (verified against its
    manifest), into a fresh network in eval mode."""
    path = Path(path)
    if path.is_dir():
        return _load_checkpoint(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path}: not found")
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
    model.eval()
    return LoadedModel(model=model, config=config, meta=dict(meta))


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
    model.eval()
    return LoadedModel(model=model, config=config.model, meta=meta)
