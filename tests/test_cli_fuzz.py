"""`keisei-ray bench fuzz`: figures per target, exit 2 for bad arguments."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run_cli


def test_bench_fuzz_prints_cases_and_failures_per_target(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["bench", "fuzz", "--seconds", "1", "--targets", "usi-move,sfen",
                            "--json"], capsys)
    assert code == 0
    figures = json.loads(out)
    for name in ("usi-move", "sfen"):
        assert figures[f"{name}: cases"] > 0 and figures[f"{name}: failures"] == 0


@pytest.mark.parametrize("args", [["--targets", "nope"], ["--seconds", "0"]])
def test_bench_fuzz_bad_arguments_exit_2_with_one_line(
        capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, err = run_cli(["bench", "fuzz", *args], capsys)
    assert code == 2 and err.count("\n") == 1 and "keisei-ray: config error" in err
