"""The fuzz registry and runner: every target by name, CI settings, time-budgeted runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from keisei_ray.bench.fuzz import (
    Target,
    TargetReport,
)
from keisei_ray.bench.fuzz_files import (
    check_checkpoint,
    check_codec,
    check_codec_roundtrip,
    check_model_file,
    check_records,
    checkpoint_inputs,
    codec_inputs,
    codec_roundtrip_inputs,
    model_file_inputs,
    records_inputs,
)
from keisei_ray.bench.fuzz_text import (
    check_config,
    check_sfen,
    check_usi_move,
    check_usi_session,
    check_usi_stream,
    config_inputs,
    sfen_inputs,
    usi_move_inputs,
    usi_session_inputs,
    usi_stream_inputs,
)

# ----------------------------------------------------------------------------- registry

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("sfen", sfen_inputs, check_sfen, "SFEN validation and round trip"),
    Target("usi-move", usi_move_inputs, check_usi_move, "USI move parsing and round trip"),
    Target("usi-engine", usi_session_inputs, check_usi_session, "USI engine command loop"),
    Target("usi-stream", usi_stream_inputs, check_usi_stream, "USI serve() on raw bytes"),
    Target("config", config_inputs, check_config, "YAML config, overrides, presets"),
    Target("codec", codec_inputs, check_codec, "experience batch decode on hostile bytes"),
    Target("codec-roundtrip", codec_roundtrip_inputs, check_codec_roundtrip,
           "encode -> decode of valid batches and compact states"),
    Target("records", records_inputs, check_records, "KIF/CSA re-parsed by cshogi"),
    Target("checkpoint", checkpoint_inputs, check_checkpoint, "checkpoint loading"),
    Target("model-file", model_file_inputs, check_model_file, "model file loading"),
)}


def ci_settings(max_examples: int) -> settings:
    """Settings of the CI property tests: bounded examples, no deadline, no database."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def run_target(target: Target, seconds: float, *, max_failures: int = 3) -> TargetReport:
    """Run `target` for about `seconds` (in rounds of fresh random examples), counting cases;
    each failure is recorded (shrunk by Hypothesis) as one line."""
    report = TargetReport(target.name)

    def body(case: Any) -> None:
        report.cases += 1
        target.check(case)

    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < seconds and len(report.failures) < max_failures:
        rounds += 1
        test = settings(max_examples=max(10, min(200, 10 * rounds)), deadline=None,
                        database=None, suppress_health_check=list(HealthCheck),
                        phases=[Phase.generate, Phase.shrink], print_blob=False)(
            given(target.strategy)(body))
        try:
            test()
        except Exception as exc:  # a property failed: record it, keep fuzzing the others
            found = list(getattr(exc, "exceptions", [exc]))  # an ExceptionGroup: each one
            report.failures += [_one_line(e) for e in found]
    report.seconds = time.monotonic() - started
    return report


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def run_all(names: list[str], seconds: float,
            progress: Callable[[TargetReport], None] | None = None) -> list[TargetReport]:
    """Run each named target for `seconds`; reports in order."""
    reports = []
    for name in names:
        report = run_target(TARGETS[name], seconds)
        reports.append(report)
        if progress is not None:
            progress(report)
    return reports
