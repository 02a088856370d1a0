"""Inference-only model files: round trip, and one clear error for every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from keisei_ray.config import ModelConfig
from keisei_ray.model_file import ModelFileError, load_model, save_model
from learner.model import build_model, export_weights


def test_round_trip(tmp_path: Path) -> None:
    config = ModelConfig(size="tiny")
    torch.manual_seed(1)
    model = build_model(config)
    path = save_model(tmp_path / "m.pt", export_weights(model), config, {"timestep": 42})
    loaded = load_model(path)
    assert loaded.config == config and loaded.meta == {"timestep": 42}
    assert not loaded.model.training
    for name, value in export_weights(model).items():
        np.testing.assert_array_equal(value, export_weights(loaded.model)[name])
    assert not list(tmp_path.glob(".m.pt.*"))  # no temporary file left behind


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="unreadable"):
        load_model(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ModelFileError, match="not a keisei-ray-model/1 file"):
        load_model(other)
    config = ModelConfig(size="tiny")
    good = save_model(tmp_path / "good.pt", export_weights(build_model(config)), config)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="unreadable"):
        load_model(truncated)
    mismatched = tmp_path / "mismatched.pt"
    save_model(mismatched, export_weights(build_model(config)), ModelConfig(size="small"))
    with pytest.raises(ModelFileError, match="do not match|does not match"):
        load_model(mismatched)
