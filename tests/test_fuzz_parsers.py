"""Property tests of the text parsers (SFEN, USI moves, the USI engine, configs, KIF/CSA),
with the targets `keisei-ray bench fuzz` runs longer; then the regressions they found."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given

from keisei_ray.bench.fuzz_run import TARGETS, ci_settings
from keisei_ray.bench.fuzz_text import _bomb
from keisei_ray.config import ConfigError
from keisei_ray.config_loading import MAX_DEPTH, load_config


@ci_settings(60)
@given(TARGETS["sfen"].strategy)
def test_sfen_is_validated_or_round_trips(case: str) -> None:
    TARGETS["sfen"].check(case)


@ci_settings(150)
@given(TARGETS["usi-move"].strategy)
def test_usi_moves_parse_or_are_refused(case: object) -> None:
    TARGETS["usi-move"].check(case)


@ci_settings(60)
@given(TARGETS["usi-engine"].strategy)
def test_usi_engine_answers_every_line(case: list[str]) -> None:
    TARGETS["usi-engine"].check(case)


@ci_settings(60)
@given(TARGETS["usi-stream"].strategy)
def test_usi_serve_survives_raw_bytes(case: bytes) -> None:
    TARGETS["usi-stream"].check(case)


@ci_settings(80)
@given(TARGETS["config"].strategy)
def test_config_loads_or_fails_with_config_error(case: tuple[str, list[str], str | None]) -> None:
    TARGETS["config"].check(case)


@ci_settings(40)
@given(TARGETS["records"].strategy)
def test_kif_and_csa_reparse_in_cshogi(case: object) -> None:
    TARGETS["records"].check(case)


# ----------------------------------------------------------------------------- regressions


def _load(tmp_path: Path, text: str | bytes, overrides: tuple[str, ...] = ()) -> str:
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    assert time.monotonic() - started < 60  # was: minutes printing the expanded bomb
    return str(info.value)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    # 10^11 leaves once expanded; the error message once held their repr.
    message = _load(tmp_path, _bomb(12, 10))
    assert "more than 100000 values" in message and len(message) < 300


def test_a_bad_value_is_quoted_clipped(tmp_path: Path) -> None:
    message = _load(tmp_path, "env:\n  max_moves: [" + ", ".join(["x" * 50] * 5000) + "]\n")
    assert "env.max_moves" in message and len(message) < 500


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    assert f"nested deeper than {MAX_DEPTH} levels" in _load(
        tmp_path, "env: " + "[" * 100_000 + "]" * 100_000)
    assert "nested deeper" in _load(tmp_path, "env: {}", ("env.seed=" + "[" * 5000,))


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    assert "not UTF-8" in _load(tmp_path, b"env:\n  seed: \xff\xfe\n")
