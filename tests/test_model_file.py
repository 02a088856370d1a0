"""Inference-only model files: round trip, and one clear error for every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from keisei_ray.config import ModelConfig
from keisei_ray.store.model_file import ModelFileError, load_model, save_model
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


def test_a_bad_value_material_is_one_clear_error(tmp_path: Path) -> None:
    config = ModelConfig(size="tiny")
    weights = export_weights(build_model(config))
    assert load_model(save_model(tmp_path / "old.pt", weights, config)).model.value_material == 0
    for bad in ("0.05", -0.1, float("nan"), True):
        path = save_model(tmp_path / "bad.pt", weights, config, {"value_material": bad})
        with pytest.raises(ModelFileError, match="value_material must be a number in"):
            load_model(path)


def test_files_from_before_the_policy_head_option_load_with_the_absolute_head(
        tmp_path: Path) -> None:
    # A saved config holds every field; one without `policy_head` predates the option, when
    # the head was the absolute one.
    old = ModelConfig(size="tiny", policy_head="absolute")
    torch.manual_seed(2)
    weights = export_weights(build_model(old))
    path = save_model(tmp_path / "old.pt", weights, old)
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["policy_head"]
    torch.save(payload, path)
    loaded = load_model(path)
    assert loaded.config.policy_head == "absolute"
    np.testing.assert_array_equal(export_weights(loaded.model)["policy_head.1.weight"],
                                  weights["policy_head.1.weight"])
    # A new file keeps its head; one whose head does not fit its weights says which it has.
    assert load_model(save_model(tmp_path / "new.pt", export_weights(build_model(
        ModelConfig(size="tiny"))), ModelConfig(size="tiny"))).config.policy_head == "relative"
    save_model(tmp_path / "wrong.pt", weights, ModelConfig(size="tiny"))
    with pytest.raises(ModelFileError, match="absolute policy head"):
        load_model(tmp_path / "wrong.pt")
