"""What every `keisei-ray` command shares: the stdout console, exit codes, common options and
the one-line failure (the main CLI and the bench commands both use them)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

# stdout carries data (config dumps, benchmark tables); logs and progress go to stderr.
out = Console(highlight=False, soft_wrap=True)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the run stopped cleanly on Ctrl-C, before total_timesteps

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file.", dir_okay=False)
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help="Named preset layered under the file.")
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. env.max_moves=256 (values are YAML scalars).",
                   show_default=False),
]



def fail(message: str, code: int) -> NoReturn:
    # One line, no traceback: the message names what is wrong.
    sys.stderr.write(f"keisei-ray: {message}\n")
    sys.exit(code)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")]
