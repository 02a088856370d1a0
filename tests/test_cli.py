"""The CLI skeleton: version, help, config show, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from keisei_ray import __version__
from keisei_ray.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    code = info.value.code if isinstance(info.value.code, int) else 1
    return code, captured.out, captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0
    assert __version__ in out


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert "config" in out and "bench" in out


def test_config_show_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["config", "show", "env.max_moves=256"], capsys)
    assert code == 0
    assert yaml.safe_load(out)["env"]["max_moves"] == 256


def test_config_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["config", "show", "env.max_moves=-5"], capsys)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "env.max_moves" in lines[0]
    assert "Traceback" not in err


def test_console_script_entry_point() -> None:
    # The real entry point, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "keisei_ray.cli", "config", "show", "env.foo=1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "env.foo: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["evaluate", "heuristic", "random", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["evaluate", "heuristic", "random", "--workers", "-1"], "--workers must be at least 1"),
    (["ladder", ".", "--games", "0"], "--games must be at least 1, got 0"),
    (["ladder", ".", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["gauntlet", "random", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["gauntlet", "--rate-ladder", "--reach", "0"], "--reach must be at least 1, got 0"),
    (["play", "random", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["usi", "random", "--threads", "-2"], "--threads must be at least 1, got -2"),
    (["usi", "random", "evaluation.gredy=false"], "did you mean 'evaluation.greedy'?"),
])
def test_counts_below_one_are_one_line_exit_2(args: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("keisei-ray: config error: ") and message in line
