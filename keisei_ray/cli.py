"""The `keisei-ray` command line.

Commands stay thin: they parse arguments, build the effective config and call into the
package. Expected failures (bad config, bad input) become one line on stderr and a non-zero
exit code (2 for config and usage errors), never a traceback.

The user commands live here and `keisei-ray bench ...` in `bench/commands.py`; most of each
command's length is its declared options (Typer reads them off the signature).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from keisei_ray import __version__
from keisei_ray.api import RunResult, train
from keisei_ray.bench.commands import bench_app
from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import dump, load_config
from keisei_ray.console import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConfigOpt,
    JsonOpt,
    OverridesArg,
    PresetOpt,
    fail,
    out,
)
from keisei_ray.events import CallbackImportError, load_callback
from keisei_ray.files import set_file_mode, write_text_atomic
from keisei_ray.logs import setup_logging
from keisei_ray.text import did_you_mean, signed

if TYPE_CHECKING:
    from keisei_ray.arena.ladder_rating import LadderPlan

log = logging.getLogger("keisei_ray")

app = typer.Typer(
    name="keisei-ray",
    help="Distributed PPO self-play for Shogi on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

def _version_callback(value: bool) -> None:
    if value:
        out.print(f"keisei-ray {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="yaml or json.")] = "yaml",
) -> None:
    """Print the effective configuration (defaults <- preset <- file <- overrides)."""
    if fmt not in ("yaml", "json"):
        raise ConfigError(f"--format: expected yaml or json, got {fmt!r}")
    cfg = load_config(config, overrides or [], preset=preset)
    sys.stdout.write(dump(cfg, "json" if fmt == "json" else "yaml"))


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
    address: Annotated[
        str | None, typer.Option("--address", "-a", help="Ray address: 'auto', 'ray://host:port'; "
                                 "absent: an embedded local Ray.")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue a run exactly: its folder (newest good checkpoint) or one of "
        "its checkpoints. Its config is used; overrides apply on top.",
        show_default=False)] = None,
    allow_fresh: Annotated[bool, typer.Option(
        "--allow-fresh", help="With --resume: start the run over when it has no good "
        "checkpoint (otherwise that is refused).")] = False,
) -> None:
    """Train by PPO self-play: the actor-learner loop on Ray (local or a cluster)."""
    extra = [f"train.address={address}"] if address is not None else []
    _run_training(lambda: train(config, preset=preset, overrides=[*(overrides or []), *extra],
                                resume=resume, allow_fresh=allow_fresh))


def _run_training(run: Callable[[], RunResult]) -> None:
    """Run `train(...)`; its failures become the one-line exits of `keisei-ray train`."""
    from keisei_ray.store.checkpoint import CheckpointError
    from keisei_ray.training.ray_cluster import TrainingError

    try:
        result = run()
    except CheckpointError as exc:
        fail(str(exc), EXIT_USAGE)
    except TrainingError as exc:
        fail(f"training failed: {exc}", EXIT_FAILURE)
    if result.reason == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(
        help="A run folder (its best checkpoint, else its newest good one), a checkpoint "
        "directory or a model file.", show_default=False)],
    output: Annotated[Path, typer.Argument(help="The model file to write.", dir_okay=False,
                                           show_default=False)],
) -> None:
    """Write a small inference-only model file (weights + model config) from a checkpoint."""
    from keisei_ray.store.model_file import ModelFileError, load_model, save_model
    from learner.model import export_weights

    try:
        loaded = load_model(checkpoint)
    except ModelFileError as exc:
        fail(str(exc), EXIT_USAGE)
    path = save_model(output, export_weights(loaded.model), loaded.config, meta=loaded.meta)
    out.print(f"model written to {path} ({path.stat().st_size / 1e6:.2f} MB, timestep "
              f"{loaded.meta.get('timestep', '?')}, from {loaded.meta.get('checkpoint')})",
              markup=False)


@app.command("sweep-agent")
def sweep_agent_cmd(
    sweep_id: Annotated[str | None, typer.Argument(
        help="The sweep (entity/project/id, as `wandb sweep` prints it).",
        show_default=False)] = None,
    count: Annotated[int | None, typer.Option(help="Trials to run (default: until the sweep "
                                              "ends).")] = None,
    trial: Annotated[bool, typer.Option("--trial", help="Run one trial in this process (what "
                                        "`wandb agent` starts through the sweep's command).")] = (
        False),
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """W&B sweep trials: each applies wandb.config (after wandb.init, validated) and trains."""
    from keisei_ray.training.tracking import sweep_trial

    cfg = load_config(config, overrides or [], preset=preset)
    for spec in cfg.train.callbacks:  # a bad callback is a config error before any trial
        load_callback(spec)

    def trial_train(trial_cfg: Config, run_id: str) -> None:
        _run_training(lambda: train(trial_cfg, run_id=run_id))

    if trial:
        sweep_trial(cfg, trial_train)
        return
    if sweep_id is None:
        raise ConfigError("sweep-agent: give the SWEEP_ID that `wandb sweep` printed (or "
                          "--trial when started by `wandb agent`)")
    import wandb

    wandb.agent(sweep_id, function=lambda: sweep_trial(cfg, trial_train), count=count,
                project=cfg.wandb.project, entity=cfg.wandb.entity)


# ----------------------------------------------------------------------------- playing the agent

PlayerArg = Annotated[str, typer.Argument(
    help="A model file, a checkpoint directory or a run folder (its best checkpoint), "
    "'random' / 'heuristic' / 'mate', or a USI engine (usi:COMMAND,depth=N,... or an alias "
    "such as sf-d1).", show_default=False)]
ThreadsOpt = Annotated[int, typer.Option(help="Torch threads (1 is fastest for small batches).")]


def _at_least_one(**counts: int | None) -> None:
    """A count option below 1 is a one-line usage error (exit 2), before any work starts."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _contestant(spec: str) -> Any:
    """Load a player by name or path; a bad one is a one-line usage error."""
    from keisei_ray.arena.evaluation import load_contestant

    try:
        return load_contestant(spec)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


@app.command("evaluate")
def evaluate_cmd(
    player: PlayerArg,
    opponent: PlayerArg,
    games: Annotated[int | None, typer.Option("--games", "-n", help="Games to play "
                                              "(default: evaluation.games).")] = None,
    workers: Annotated[int, typer.Option(help="Evaluation workers; above 1 they are Ray actors "
                                         "on this machine.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed (default: evaluation.seed).")] = None,
    records: Annotated[Path | None, typer.Option(
        help="Folder for KIF + SVG of the first evaluation.records games.",
        file_okay=False)] = None,
    min_win_rate: Annotated[float | None, typer.Option(
        help="Exit 1 unless the win rate (draws count as non-wins) is at least this.")] = None,
    score_above: Annotated[float | None, typer.Option(
        help="Exit 1 unless the score (wins + draws/2) is above this.")] = None,
    threads: ThreadsOpt = 1,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Play a match (colours alternated) and print the score with a 95% interval."""
    import torch

    from keisei_ray.arena.evaluation import MatchSummary, run_match
    from keisei_ray.arena.records import write_record

    cfg = load_config(config, overrides or [], preset=preset)
    _at_least_one(games=games, workers=workers, threads=threads)
    torch.set_num_threads(threads)
    a, b = _contestant(player), _contestant(opponent)
    if a.name == b.name:
        fail(f"a match needs two different players, got {a.name!r} twice", EXIT_USAGE)
    if workers > 1:
        from keisei_ray.training.ray_cluster import connect_ray

        connect_ray(None, num_cpus=workers, include_dashboard=False)
    result = run_match(cfg, a, b, games or cfg.evaluation.games, workers=workers, seed=seed)
    summary = MatchSummary.of(result)
    if records is not None:
        for k, record in enumerate(result.records):
            write_record(record, records, f"{k + 1:03d}-{record.black}-vs-{record.white}",
                         max_moves=cfg.env.max_moves, impasse=cfg.env.impasse == "27")
    checks = []
    if min_win_rate is not None:
        checks.append((result.win_rate >= min_win_rate,
                       f"win rate {100 * result.win_rate:.1f}% (required: at least "
                       f"{100 * min_win_rate:.1f}%)"))
    if score_above is not None:
        checks.append((result.score > score_above,
                       f"score {100 * result.score:.1f}% (required: above "
                       f"{100 * score_above:.1f}%)"))
    if as_json:
        document = {**summary.document(), "checks": {text: ok for ok, text in checks}}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        for line in summary.lines():
            out.print(line, markup=False)
        for ok, text in checks:
            out.print(f"{'PASS' if ok else 'FAIL'}: {text}", markup=False)
    if not all(ok for ok, _ in checks):
        raise typer.Exit(EXIT_FAILURE)


@app.command("ladder")
def ladder_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its checkpoints and model "
                                            "files are rated).", show_default=False)],
    games: Annotated[int | None, typer.Option("--games", "-n", help="Games per match "
                                              "(default: evaluation.games).")] = None,
    workers: Annotated[int, typer.Option(help="Evaluation workers (Ray actors above 1).")] = 1,
    plot: Annotated[Path | None, typer.Option(help="PNG of Elo over timesteps "
                                              "(default: RUN_DIR/ladder.png).")] = None,
    previous: Annotated[bool, typer.Option(help="Also play each model against the one "
                                           "before it.")] = True,
    threads: ThreadsOpt = 1,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (default: the run's config.yaml).",
        dir_okay=False)] = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Rate every checkpoint of a run: Elo table and a PNG plot of Elo over timesteps."""
    import torch

    from keisei_ray.arena.elo import ANCHOR
    from keisei_ray.arena.ladder import ladder, plot_ladder, run_models

    if config is None and (run_dir / "config.yaml").is_file():
        config = run_dir / "config.yaml"
    cfg = load_config(config, overrides or [], preset=preset)
    _at_least_one(games=games, workers=workers, threads=threads)
    torch.set_num_threads(threads)
    try:
        models = run_models(run_dir)
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    if not models:
        fail(f"run folder {run_dir}: no checkpoints or model files to rate", EXIT_USAGE)
    if workers > 1:
        from keisei_ray.training.ray_cluster import connect_ray

        connect_ray(None, num_cpus=workers, include_dashboard=False)
    log.info("rating %d model(s) of %s", len(models), run_dir)
    rows, store = ladder(cfg, models, games or cfg.evaluation.games, workers=workers,
                         previous=previous, progress=lambda r: log.info(
                             "%s vs %s: +%d =%d -%d", r.player, r.opponent, r.wins, r.draws,
                             r.losses))
    table = Table(title=f"Elo ladder of {run_dir} ({ANCHOR} = 0)", header_style="bold")
    for column in ("model", "timestep", "Elo", "95%", "vs random", "vs heuristic",
                   "vs previous"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for i, row in enumerate(rows):
        before = rows[i - 1].name if i > 0 else ""
        scores = [row.scores.get(k) for k in ("random", "heuristic", before)]
        table.add_row(row.name, f"{row.timestep:,}", signed(row.rating.elo),
                      f"± {row.rating.ci95:.0f}",
                      *("-" if s is None else f"{100 * s:.0f}%" for s in scores))
    out.print(table)
    ratings = store.ratings()
    if "heuristic" in ratings:
        h = ratings["heuristic"]
        out.print(f"heuristic: Elo {signed(h.elo)} ± {h.ci95:.0f}", markup=False)
    path = set_file_mode(plot_ladder(rows, store, plot or run_dir / "ladder.png"))
    out.print(f"plot written to {path}", markup=False)


@app.command("gauntlet")
def gauntlet_cmd(
    target: Annotated[str | None, typer.Argument(
        help="A model file, a checkpoint directory, a run folder (its best checkpoint "
        "plays), or any player spec.",
        show_default=False)] = None,
    games: Annotated[int, typer.Option("--games", "-n", help="Games per rung (per pair with "
                                       "--rate-ladder).")] = 20,
    workers: Annotated[int, typer.Option(help="Evaluation workers (Ray actors above 1).")] = 1,
    plot: Annotated[Path | None, typer.Option(help="PNG of the scores (default: "
                                              "gauntlet.png beside the model; the JSON report "
                                              "gauntlet.json goes beside it).")] = None,
    rungs: Annotated[str | None, typer.Option(help="Comma-separated rungs to play (default: "
                                              "the whole ladder, weakest first).")] = None,
    climb: Annotated[int, typer.Option(help="Stop climbing after this many rungs in a row "
                                       "scored 0 (0: play every rung).")] = 2,
    search: Annotated[int | None, typer.Option(
        help="Also play the model searching N simulations a move, beside its raw policy "
        "(search.simulations=0): both on the stored scale, one table and one plot.")] = None,
    rate_ladder: Annotated[bool, typer.Option(
        "--rate-ladder", help="Play the rungs against each other and write their ratings "
        "(the file the gauntlet reads) instead.")] = False,
    reach: Annotated[int, typer.Option(help="--rate-ladder: pair each rung with the next "
                                       "N rungs.")] = 2,
    target_ci: Annotated[float | None, typer.Option(
        help="--rate-ladder: after --games per pair, schedule more games until every rung's "
        "95% interval is within ± this many Elo.")] = None,
    max_games: Annotated[int | None, typer.Option(
        help="--rate-ladder: stop scheduling at this many games in all.")] = None,
    continue_from: Annotated[Path | None, typer.Option(
        help="--rate-ladder: count the matches of this earlier ratings file (or its "
        ".partial progress file) and go on from there.", dir_okay=False)] = None,
    plan: Annotated[bool, typer.Option(
        "--plan", help="--rate-ladder: play nothing; print the games per pair and the CPU "
        "time the scheduler would still need to reach --target-ci, if every game came out "
        "at the fitted expected score.")] = False,
    output: Annotated[Path | None, typer.Option(help="--rate-ladder: where to write the "
                                                "ratings (default: the package's file; "
                                                "progress goes to OUTPUT.partial).",
                                                dir_okay=False)] = None,
    threads: ThreadsOpt = 1,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Play the fixed gauntlet (random, scripted players, Fairy-Stockfish and GPSShogi at
    rising levels): score and Elo on the stored ladder scale per rung, plus a PNG."""
    import torch

    from keisei_ray.arena.gauntlet import (
        RUNGS,
        GauntletError,
        comparison_table,
        gauntlet,
        gauntlet_document,
        gauntlet_table,
        plot_gauntlet,
        rating_line,
    )
    _at_least_one(games=games, workers=workers, reach=reach, threads=threads)
    from shogi.usi_engine import EngineSetupError

    if climb < 0:
        raise ConfigError(f"--climb must be 0 (play every rung) or more, got {climb}")
    ladder = RUNGS if rungs is None else tuple(r.strip() for r in rungs.split(",") if r.strip())
    unknown = [r for r in ladder if r not in RUNGS]
    if unknown or not ladder:
        raise ConfigError(f"--rungs: {', '.join(unknown) or 'none given'} (the rungs are "
                          f"{', '.join(RUNGS)})")
    if rate_ladder and target is not None and "=" in target and not Path(target).exists():
        # No MODEL with --rate-ladder: the first override lands in MODEL's place.
        overrides = [target, *(overrides or [])]
        target = None
    cfg = load_config(config, overrides or [], preset=preset)
    torch.set_num_threads(threads)
    if workers > 1:
        from keisei_ray.training.ray_cluster import connect_ray

        connect_ray(None, num_cpus=workers, include_dashboard=False)

    def progress(r: Any) -> None:
        log.info("%s vs %s: +%d =%d -%d (%.0f s)", r.player, r.opponent, r.wins, r.draws,
                 r.losses, r.seconds)

    if rate_ladder:
        if target is not None:
            fail("--rate-ladder rates the rungs themselves: give no MODEL", EXIT_USAGE)
        _rate_ladder(cfg, games, ladder, reach, workers, target_ci, max_games, continue_from,
                     output, progress, plan)
        return
    if plan:
        fail("--plan goes with --rate-ladder", EXIT_USAGE)
    if target is None:
        fail("give a MODEL file or RUN_DIR (or --rate-ladder)", EXIT_USAGE)
    spec, where = target, Path(target)
    specs = [spec]
    if search is not None:
        from keisei_ray.arena.evaluation import split_model_spec

        if search < 1:
            raise ConfigError(f"--search must be at least 1 simulation, got {search}")
        try:
            path, settings = split_model_spec(spec)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        if settings or not Path(path).exists():
            fail(f"--search {search}: give a model file, checkpoint or run folder without "
                 f"search settings, got {spec!r}", EXIT_USAGE)
        # The raw policy (no search, whatever the config says) and the search at the budget.
        specs = [f"{spec},sims=0", f"{spec},sims={search}"]
    results = []
    for one in specs:
        player = _contestant(one)
        try:
            results.append(gauntlet(cfg, player, games, rungs=ladder, workers=workers,
                                    climb=climb or None, progress=progress))
        except GauntletError as exc:
            fail(str(exc), EXIT_USAGE)
        except EngineSetupError as exc:
            fail(str(exc), EXIT_FAILURE)
    # The table and the report first: a long gauntlet's figures must survive a failed plot.
    document: dict[str, Any] = gauntlet_document(results[0])
    if search is not None:
        document = {"search_simulations": search,
                    "players": [gauntlet_document(r) for r in results]}
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        out.print(gauntlet_table(results[0]) if len(results) == 1 else
                  comparison_table(results))
        for result in results:
            out.print(rating_line(result), markup=False)
    png = plot or (where.parent if where.is_file() else where if where.is_dir()
                   else Path.cwd()) / "gauntlet.png"
    report = png.with_suffix(".json")
    report.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report, json.dumps(document, indent=2) + "\n")
    try:
        plot_gauntlet(results, png)
    except (ValueError, RuntimeError, OSError) as exc:
        log.exception("gauntlet plot %s failed (%s)", png, "; ".join(
            f"{r.player}: {len(r.rows)} rungs, scores "
            f"{[round(row.result.score, 3) for row in r.rows]}" for r in results))
        fail(f"the plot {png} failed ({type(exc).__name__}: {exc}); the table above and the "
             f"report {report} are complete", EXIT_FAILURE)
    if not as_json:
        out.print(f"report written to {report}, plot to {png}", markup=False)


def _rate_ladder(cfg: Config, games: int, rungs: tuple[str, ...], reach: int, workers: int,
                 target_ci: float | None, max_games: int | None, continue_from: Path | None,
                 output: Path | None, progress: Callable[[Any], None], plan: bool) -> None:
    """`gauntlet --rate-ladder`: play the rungs against each other, write their ratings
    (progress after every task to OUTPUT.partial, removed at the end); with `plan`, print
    what that would still take instead."""
    from keisei_ray.arena.gauntlet import ratings_path
    from keisei_ray.arena.ladder_rating import plan_ladder, rate_ladder
    from shogi.usi_engine import EngineSetupError

    start = None
    if continue_from is not None:
        try:
            start = json.loads(continue_from.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--continue-from {continue_from}: cannot read it ({exc})", EXIT_USAGE)
        if not isinstance(start, dict) or not isinstance(start.get("matches"), list):
            fail(f"--continue-from {continue_from}: not a ratings file (no matches list)",
                 EXIT_USAGE)
    if plan:
        if target_ci is None:
            fail("--plan needs --target-ci (the interval to plan for)", EXIT_USAGE)
        try:
            forecast = plan_ladder(cfg, games, rungs=rungs, reach=reach, target_ci=target_ci,
                                   max_games=max_games, start=start)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        _print_plan(forecast, target_ci)
        return
    path = output or ratings_path()
    partial = path.with_name(path.name + ".partial")

    def checkpoint(document: dict[str, Any]) -> None:
        write_text_atomic(partial, json.dumps(document, indent=2) + "\n")

    try:
        document = rate_ladder(cfg, games, rungs=rungs, reach=reach, workers=workers,
                               target_ci=target_ci, max_games=max_games, start=start,
                               checkpoint=checkpoint, progress=progress)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except EngineSetupError as exc:
        fail(f"{exc} (the games so far are in {partial}: --continue-from it)", EXIT_FAILURE)
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    for name, entry in document["ratings"].items():
        out.print(f"{name}: Elo {signed(entry['elo'])} ± {entry['ci95']} ({entry['games']} games)",
                  markup=False)
    out.print(f"ratings written to {path}", markup=False)


def _print_plan(forecast: LadderPlan, target_ci: float) -> None:
    """The table of `gauntlet --rate-ladder --plan`."""
    table = Table(title=f"rate-ladder plan: games still needed for ±{target_ci:g} Elo "
                  "(if every game came out at the fitted score)")
    for column in ("pair", "more games", "CPU-hours"):
        table.add_column(column, justify="left" if column == "pair" else "right")
    for (a, b), count in forecast.games.items():
        seconds = forecast.seconds.get((a, b))
        table.add_row(f"{a} vs {b}", f"{count:,}",
                      "?" if seconds is None else f"{seconds / 3600:.2f}")
    out.print(table)
    unpriced = (f", plus {forecast.unpriced:,} games of pairs with no time per game yet"
                if forecast.unpriced else "")
    widest = max(forecast.ci95.items(), key=lambda item: item[1], default=("none", 0.0))
    hours = forecast.total_seconds / 3600
    out.print(f"{forecast.total:,} more games, {hours:.1f} CPU-hours at the pairs' measured "
              f"time per game{unpriced}; widest interval then ±{widest[1]:.0f} "
              f"({widest[0]}){'' if forecast.reached else ': the target is not reached'}",
              markup=False)


PLAYER_OVERRIDES = ("evaluation.greedy", "evaluation.avoid_repetition",
                    "evaluation.temperature", "evaluation.sample_plies", "evaluation.seed",
                    "env.max_moves", "env.impasse")
"""The overrides `usi` and `play` apply (how the player plays), with every `search.*` (and
`usi.*` for `usi`); any other is refused."""


def _player_overrides(command: str, overrides: list[str] | None) -> list[str]:
    """The overrides, refused by name if `command` cannot apply them."""
    sections = ("search.", "usi.") if command == "usi" else ("search.",)
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if command == "usi" and key == "search.simulations":
            raise ConfigError("usi: override 'search.simulations' does not apply here: the "
                              "engine's simulations per move are usi.simulations (USI option "
                              "Simulations; 0: the raw policy)")
        if key not in PLAYER_OVERRIDES and not key.startswith(sections):
            raise ConfigError(f"{command}: override {key!r} does not apply here (it "
                              f"takes {', '.join(PLAYER_OVERRIDES)} and "
                              f"{' and '.join(s + '*' for s in sections)})"
                              f"{did_you_mean(key, PLAYER_OVERRIDES)}")
    return list(overrides or [])


@app.command("usi")
def usi_cmd(
    model: PlayerArg,
    threads: ThreadsOpt = 1,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Run the agent as a USI engine on stdin/stdout (for Shogi GUIs and match runners): it
    searches within the time the GUI gives (usi.simulations=0, or the USI option Simulations
    0, plays the raw policy)."""
    import torch

    from keisei_ray.arena.usi import protocol_stdout, serve

    # stdout is the protocol; keep stderr quiet too (a GUI may never read it).
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    cfg = load_config(config, _player_overrides("usi", overrides), preset=preset)
    _at_least_one(threads=threads)
    torch.set_num_threads(threads)
    contestant = _contestant(model)
    # From here stdout is the protocol's alone; anything else written to it goes to stderr.
    serve(contestant, config=cfg, stdin=sys.stdin.buffer, stdout=protocol_stdout(),
          threads=threads)


@app.command("play")
def play_cmd(
    model: PlayerArg,
    color: Annotated[str, typer.Option(help="Your colour: black, white or random.")] = "black",
    greedy: Annotated[bool | None, typer.Option(
        help="The agent plays its most likely move; --no-greedy samples (default: "
        "evaluation.greedy).", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the agent's sampling (default: "
                                             "evaluation.seed).", show_default=False)] = None,
    save: Annotated[Path | None, typer.Option(help="Write the game as KIF here at the end.",
                                              dir_okay=False)] = None,
    threads: ThreadsOpt = 1,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Play against the agent in the terminal (moves typed in USI)."""
    import random

    import torch

    from actors.evaluation import close_player, make_player
    from keisei_ray.arena.play import TerminalGame
    from shogi import Color, Position

    if color not in ("black", "white", "random"):
        raise ConfigError(f"--color: expected black, white or random, got {color!r}")
    options = _player_overrides("play", overrides)
    options += [f"evaluation.{k}={str(v).lower()}" for k, v in
                (("greedy", greedy), ("seed", seed)) if v is not None]
    cfg = load_config(config, options, preset=preset)
    _at_least_one(threads=threads)
    torch.set_num_threads(threads)
    agent = make_player(_contestant(model), cfg)
    if color == "random":
        color = random.Random(cfg.evaluation.seed).choice(["black", "white"])
    human = Color.BLACK if color == "black" else Color.WHITE
    game = TerminalGame(agent, human, out, position=Position(
        max_moves=cfg.env.max_moves, impasse=cfg.env.impasse == "27"))
    try:
        result = game.run(out.input)
    finally:
        close_player(agent)
    if save is not None:
        out.print(f"game saved to {game.save_kif(save)}", markup=False)
    log.debug("play finished: %s", result)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn expected errors into one-line exits."""
    command = typer.main.get_command(app)
    try:
        # standalone mode: click reports its own usage errors (exit 2) and exits.
        command.main(args=argv, prog_name="keisei-ray", standalone_mode=True)
    except (ConfigError, CallbackImportError) as exc:
        fail(f"config error: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        fail("interrupted", 130)


if __name__ == "__main__":
    main()
