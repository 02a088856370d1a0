"""Config core: layering, dotted overrides, one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from keisei_ray.config import TIME_BUDGET_ALONE_TIMESTEPS, Config, ConfigError
from keisei_ray.config_loading import dump, load_config, parse_override


def test_defaults() -> None:
    cfg = load_config()
    assert cfg.env.max_moves == 512
    assert cfg.env.impasse == "off"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  max_moves: 300\ntrain:\n  seed: 7\n")
    cfg = load_config(path, ["env.max_moves=256", "env.impasse=27"])
    assert cfg.env.max_moves == 256  # override wins over the file
    assert cfg.train.seed == 7  # file value kept where no override
    assert cfg.env.impasse == "27"  # YAML int 27 accepted as the rule name


def test_override_values_are_yaml_scalars() -> None:
    assert parse_override("a.b=256") == (["a", "b"], 256)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=0.5") == (["a"], 0.5)
    assert parse_override("a=hello") == (["a"], "hello")
    assert parse_override("a=") == (["a"], None)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["env.max_moves=-1"], "env.max_moves"),
        (["env.max_moves=abc"], "env.max_moves"),
        (["env.nope=1"], "env.nope: unknown field"),
        (["nope.x=1"], "nope: unknown field"),
        (["env.impasse=24"], "env.impasse"),
        (["env.max_moves"], "expected key=value"),
        (["env..x=1"], "empty component"),
        # A count that must be at least 1 (issue 26: 0 and -1 used to pass, then the run
        # failed later with the wrong cause).
        (["train.num_workers=0"], "train.num_workers: expected a number of workers from 1"),
        (["train.num_workers=-1"], "train.num_workers: expected a number of workers from 1"),
        (["train.num_workers=true"], "train.num_workers: expected a number of workers"),
        (["train.num_workers=zero"], "(got 'zero')"),
        # "Did you mean" for an unknown key or opponent name.
        (["ppo.learning_rat=1e-3"],
         "ppo.learning_rat: unknown field; did you mean 'ppo.learning_rate'"),
        (["pop.epochs=2"], "pop: unknown field; did you mean 'ppo'?"),
        (["train.opponent=heurstic"], "did you mean 'heuristic'?"),
    ],
)
def test_bad_overrides_name_the_field(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_worker_counts_that_are_allowed() -> None:
    for value, expected in (("1", 1), ("12", 12), ("auto", "auto"), ("3.0", 3)):
        assert load_config(None, [f"train.num_workers={value}"]).train.num_workers == expected


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("env:\n  max_move: 3\n")
    with pytest.raises(ConfigError, match=r"env\.max_move: unknown field"):
        load_config(unknown)


def test_override_into_a_value_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  max_moves: 300\n")
    with pytest.raises(ConfigError, match=r"env\.max_moves is a value, not a section"):
        load_config(path, ["env.max_moves.x=1"])


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="preset 'nope'"):
        load_config(preset="nope")


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_dump_round_trips(tmp_path: Path, fmt: str) -> None:
    cfg = load_config(None, ["env.max_moves=99", "train.seed=3"])
    text = dump(cfg, fmt)  # type: ignore[arg-type]
    path = tmp_path / f"c.{fmt}"
    path.write_text(text)  # JSON is YAML
    assert load_config(path) == cfg
    assert yaml.safe_load(text)["env"]["max_moves"] == 99


def test_assignment_is_validated() -> None:
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.env.max_moves = 0


def test_removed_fields_still_load_with_a_warning(tmp_path: Path) -> None:
    # Older config files and the configs saved in older checkpoints name env.seed.
    path = tmp_path / "old.yaml"
    path.write_text("env:\n  max_moves: 300\n  seed: 7\n")
    with pytest.warns(FutureWarning, match=r"env.seed is no longer a setting"):
        cfg = load_config(path)
    assert cfg.env.max_moves == 300
    assert "seed" not in yaml.safe_load(dump(cfg))["env"]
    with pytest.warns(FutureWarning, match=r"env.seed"):
        assert load_config(None, ["env.seed=3"]) == load_config()
    with pytest.raises(ConfigError, match="env.sead: unknown field"):
        load_config(None, ["env.sead=3"])


def test_a_time_budget_alone_is_not_cut_by_the_default_timestep_budget() -> None:
    # `keisei-ray train --preset local train.max_minutes=30` is the README's proof: 30 minutes,
    # not the 200 k default steps (about 2.5 minutes on 2 cores).
    timed = load_config(overrides=["train.max_minutes=30"], preset="local")
    assert timed.train.total_timesteps == TIME_BUDGET_ALONE_TIMESTEPS
    both = load_config(overrides=["train.max_minutes=30", "train.total_timesteps=5000"])
    assert both.train.total_timesteps == 5000
    assert load_config(preset="local").train.total_timesteps == 200_000


def test_the_progress_line_of_a_time_budget_shows_minutes() -> None:
    from keisei_ray.training.progress import ProgressView

    timed = ProgressView(TIME_BUDGET_ALONE_TIMESTEPS, max_minutes=30, interactive=False)
    assert timed._timesteps_text(123_456) == "123,456 (of 30 min)"
    counted = ProgressView(200_000, max_minutes=30, interactive=False)
    assert counted._timesteps_text(123_456) == "123,456/200,000"
