"""The `keisei-ray` command line.

Commands stay thin: they parse arguments, build the effective config and call into the
package. Expected failures (bad config, bad input) become one line on stderr and a non-zero
exit code (2 for config and usage errors), never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from keisei_ray import __version__
from keisei_ray.api import RunResult, train
from keisei_ray.config import Config, ConfigError, dump, load_config
from keisei_ray.events import CallbackImportError, load_callback
from keisei_ray.logs import setup_logging

log = logging.getLogger("keisei_ray")

app = typer.Typer(
    name="keisei-ray",
    help="Distributed PPO self-play for Shogi on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print their figures.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

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


def _print_figures(title: str, figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(figures, indent=2, default=str) + "\n")
        return
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        text = f"{value:,.3f}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    out.print(table)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")]
PolicyHeadOpt = Annotated[str, typer.Option(help="model.policy_head: relative or absolute.")]


@bench_app.command("env")
def bench_env_cmd(
    games: Annotated[int, typer.Option(help="Games stepped at once.")] = 64,
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """VecEnv random-policy plies/s vs the raw cshogi random-playout rate (one process)."""
    from keisei_ray.bench.env import bench_env

    _print_figures("VecEnv throughput (one process)",
                   bench_env(num_games=games, seconds=seconds, seed=seed), as_json)


@bench_app.command("codec")
def bench_codec_cmd(games: int = 64, steps: int = 64, as_json: JsonOpt = False) -> None:
    """Experience wire format: bytes per transition, encode+decode ms per 1,000."""
    from keisei_ray.bench.learner import bench_codec

    _print_figures("Experience codec", bench_codec(num_games=games, steps=steps), as_json)


@bench_app.command("features")
def bench_features_cmd(batch: int = 1024, device: str = "cpu", attack_planes: bool = False,
                       as_json: JsonOpt = False) -> None:
    """Compact state -> planes + legal mask, positions per second."""
    from keisei_ray.bench.learner import bench_features

    _print_figures("Features", bench_features(batch, device=device,
                                              attack_planes=attack_planes), as_json)


@bench_app.command("ppo")
def bench_ppo_cmd(
    sizes: Annotated[str, typer.Option(help="Comma-separated model sizes.")] = "tiny,small,large",
    transitions: int = 2048,
    device: str = "cpu",
    amp: str = "off",
    compile_model: Annotated[bool, typer.Option("--compile")] = False,
    minibatch: int = 256,
    attack_planes: bool = False,
    policy_head: PolicyHeadOpt = "relative",
    as_json: JsonOpt = False,
) -> None:
    """PPO update throughput (samples/s) per model size."""
    from keisei_ray.bench.learner import bench_ppo

    _print_figures("PPO learner", bench_ppo(tuple(sizes.split(",")), transitions=transitions,
                                            device=device, amp=amp, compile=compile_model,
                                            minibatch_size=minibatch,
                                            attack_planes=attack_planes,
                                            policy_head=policy_head), as_json)


@bench_app.command("policy-head")
def bench_policy_head_cmd(positions: int = 20_000, steps: int = 600, size: str = "small",
                          as_json: JsonOpt = False) -> None:
    """Supervised proxy: how fast each policy head learns mate-in-one and best captures."""
    from keisei_ray.bench.learner import bench_policy_head

    _print_figures("Policy head (supervised tactics)",
                   bench_policy_head(positions, steps, size=size), as_json)


@bench_app.command("weights")
def bench_weights_cmd(size: str = "large", half: bool = False, device: str = "cpu",
                      as_json: JsonOpt = False) -> None:
    """Time of Learner.weights() (export for the broadcast)."""
    from keisei_ray.bench.learner import bench_weights

    _print_figures("Weights export", bench_weights(size, half=half, device=device), as_json)


@bench_app.command("worker")
def bench_worker_cmd(size: str = "small", games: int = 64, steps: int = 32,
                     seconds: float = 5.0, attack_planes: bool = False,
                     policy_head: PolicyHeadOpt = "relative", as_json: JsonOpt = False) -> None:
    """Self-play worker decisions/s vs pure batched inference of the same model (roofline)."""
    from keisei_ray.bench.train import bench_worker

    _print_figures("Worker roofline", bench_worker(size, games, steps, seconds,
                                                   attack_planes=attack_planes,
                                                   policy_head=policy_head), as_json)


@bench_app.command("broadcast")
def bench_broadcast_cmd(workers: int = 8, half: bool = False, as_json: JsonOpt = False) -> None:
    """ray.put -> all workers holding the new weights, small and large models."""
    from keisei_ray.bench.train import bench_broadcast

    _print_figures("Weight broadcast", bench_broadcast(workers=workers, half=half), as_json)


@bench_app.command("train")
def bench_train_cmd(
    preset: str = "local",
    workers: Annotated[str, typer.Option(help="Comma-separated worker counts.")] = "1,2",
    timesteps: int = 20_000,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """End-to-end training steps/s with N workers; learner and worker idle shares."""
    from keisei_ray.bench.train import bench_training

    counts = tuple(int(w) for w in workers.split(","))
    _print_figures("End-to-end training", bench_training(preset, counts, timesteps,
                                                         tuple(overrides or [])), as_json)


@bench_app.command("eval")
def bench_eval_cmd(
    size: str = "small",
    games: Annotated[int, typer.Option(help="Games per match (evaluation speed).")] = 64,
    training: Annotated[bool, typer.Option(help="Also measure training with background "
                                           "evaluation on vs off.")] = True,
    preset: Annotated[str, typer.Option(help="Preset of the training measurement.")] = "local",
    timesteps: Annotated[int, typer.Option(help="Timesteps of each training run.")] = 20_000,
    interval: Annotated[int, typer.Option(help="evaluation.interval_timesteps while "
                                          "training.")] = 5_000,
    eval_games: Annotated[int, typer.Option(help="evaluation.games while training.")] = 32,
    repeats: Annotated[int, typer.Option(help="Off/on training pairs (alternated).")] = 1,
    go_repeats: Annotated[int, typer.Option(help="USI go calls timed.")] = 200,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluation games/s per worker, training with background evaluation on vs off, USI go
    latency."""
    from keisei_ray.bench.eval import (
        bench_games,
        bench_training_with_evaluation,
        bench_usi_latency,
    )

    figures = {f"games: {k}": v for k, v in bench_games(size, games).items()}
    figures |= {f"usi: {k}": v for k, v in bench_usi_latency(size, go_repeats).items()}
    if training:
        figures |= {f"training: {k}": v for k, v in bench_training_with_evaluation(
            preset, timesteps, interval, eval_games, repeats, tuple(overrides or [])).items()}
    _print_figures("Evaluation", figures, as_json)


@bench_app.command("engine")
def bench_engine_cmd(
    engine: Annotated[list[str] | None, typer.Option(
        help="Engine rungs or usi: specs (repeat the option).")] = None,
    games: Annotated[int, typer.Option(help="Games per match.")] = 20,
    size: str = "small",
    max_moves: Annotated[int, typer.Option(help="env.max_moves of the games.")] = 512,
    as_json: JsonOpt = False,
) -> None:
    """External-engine games/s of one evaluation worker (vs random, vs a fresh network)."""
    from keisei_ray.bench.engine import bench_engine_games

    try:
        figures = bench_engine_games(tuple(engine or ("sf-skill-20", "sf-d1")), games, size,
                                     max_moves)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    _print_figures("External engine games (one evaluation worker)", figures, as_json)


@bench_app.command("checkpoint")
def bench_checkpoint_cmd(
    sizes: Annotated[str, typer.Option(help="Comma-separated model sizes to save and load.")] = (
        "small,large"),
    repeats: Annotated[int, typer.Option(help="Saves and loads per size (median).")] = 3,
    stall: Annotated[bool, typer.Option(help="Also measure the training stall on Ray.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Checkpoint save/load seconds by model size, and the stall a checkpoint causes."""
    from keisei_ray.bench.checkpoint import bench_checkpoint

    names = tuple(s.strip() for s in sizes.split(",") if s.strip())
    bad = [n for n in names if n not in ("tiny", "small", "large")]
    if bad or not names:
        raise ConfigError(f"--sizes: expected tiny, small or large, got {sizes!r}")
    _print_figures("Checkpoints", bench_checkpoint(names, repeats, stall), as_json)


@bench_app.command("cluster")
def bench_cluster_cmd(
    preset: Annotated[str, typer.Option(help="Preset of the training runs.")] = "smoke",
    nodes: Annotated[str, typer.Option(help="Comma-separated self-play node counts.")] = "1,2,3",
    timesteps: Annotated[int, typer.Option(help="Timesteps of each scaling run.")] = 4096,
    abrupt: Annotated[bool, typer.Option(help="Kill the lost node (SIGKILL) instead of "
                                         "shutting it down.")] = False,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """On a simulated multi-node cluster: steps/s by node count, node loss -> full strength,
    node join -> first batch."""
    from keisei_ray.bench.cluster import bench_cluster

    try:
        counts = tuple(int(n) for n in nodes.split(","))
    except ValueError:
        raise ConfigError(f"--nodes: expected comma-separated counts, got {nodes!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 8:
        raise ConfigError(f"--nodes: counts must be 1 to 8, got {nodes!r}")
    if timesteps < 1:
        raise ConfigError(f"--timesteps must be at least 1, got {timesteps}")
    _print_figures("Simulated cluster", bench_cluster(preset, timesteps, counts, not abrupt,
                                                      tuple(overrides or [])), as_json)


@bench_app.command("fuzz")
def bench_fuzz_cmd(
    seconds: Annotated[float, typer.Option(help="Seconds of fuzzing per target.")] = 30.0,
    targets: Annotated[str | None, typer.Option(help="Comma-separated targets (default: "
                                                "all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Property-based fuzzing of every parser and decoder: cases tried and failures per target
    (exit 1 when a property failed)."""
    try:
        from keisei_ray.bench.fuzz import TARGETS, run_all
    except ImportError as exc:
        _fail(f"bench fuzz needs the dev extra (pip install 'keisei-ray[dev]'): {exc}",
              EXIT_USAGE)
    names = list(TARGETS) if targets is None else [t.strip() for t in targets.split(",")
                                                   if t.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise ConfigError(f"--targets: unknown {', '.join(unknown) or 'empty list'} (known: "
                          f"{', '.join(TARGETS)})")
    if seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {seconds}")
    reports = run_all(names, seconds, progress=lambda r: log.info(
        "fuzz %s: %d cases, %d failure(s)", r.name, r.cases, len(r.failures)))
    figures: dict[str, Any] = {}
    for r in reports:
        figures[f"{r.name}: cases"] = r.cases
        figures[f"{r.name}: cases/s"] = round(r.cases_per_s, 1)
        figures[f"{r.name}: failures"] = len(r.failures)
        for k, failure in enumerate(r.failures, start=1):
            figures[f"{r.name}: failure {k}"] = failure
    _print_figures("Fuzzing", figures, as_json)
    if any(r.failures for r in reports):
        raise typer.Exit(EXIT_FAILURE)


@bench_app.command("soak")
def bench_soak_cmd(
    minutes: Annotated[float, typer.Option(help="Minutes of training.")] = 60.0,
    preset: Annotated[str, typer.Option(help="Preset trained.")] = "local",
    kill_every: Annotated[float, typer.Option(help="Seconds between worker kills (0: "
                                              "none).")] = 180.0,
    sample_every: Annotated[float, typer.Option(help="Seconds between samples.")] = 10.0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Also write the report "
                                                  "(figures and samples) as JSON here.",
                                                  dir_okay=False)] = None,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Train with evaluation and checkpoints on, kill a worker every few minutes; RSS of the
    driver, learner and workers, steps/s, restarts, counter vs accepted, longest stall."""
    from keisei_ray.bench.soak import bench_soak

    if minutes <= 0 or sample_every <= 0 or kill_every < 0:
        raise ConfigError("--minutes and --sample-every must be positive, --kill-every >= 0")
    report = bench_soak(minutes, preset=preset, kill_every_s=kill_every,
                        sample_every_s=sample_every, overrides=tuple(overrides or []))
    if out_path is not None:
        out_path.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    if not as_json:
        table = Table(title="Soak samples", show_header=True, header_style="bold")
        for column in ("t (s)", "timestep", "steps/s", "driver MB", "learner MB", "workers MB",
                       "eval MB", "workers"):
            table.add_column(column, justify="right")
        for s in report.samples:
            table.add_row(f"{s.t:.0f}", str(s.timestep), f"{s.steps_per_s:.0f}",
                          *(f"{s.rss_mb.get(r, 0):.0f}" for r in ("driver", "learner",
                                                                  "workers", "evaluation")),
                          str(s.processes.get("workers", 0)))
        out.print(table)
    _print_figures("Soak", report.figures(), as_json)


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
    from keisei_ray.training.driver import TrainingError

    try:
        result = run()
    except CheckpointError as exc:
        _fail(str(exc), EXIT_USAGE)
    except TrainingError as exc:
        _fail(f"training failed: {exc}", EXIT_FAILURE)
    if result.reason == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(
        help="A checkpoint directory (or a run folder: its best, else newest good, checkpoint).",
        show_default=False)],
    output: Annotated[Path, typer.Argument(help="The model file to write.", dir_okay=False,
                                           show_default=False)],
) -> None:
    """Write a small inference-only model file (weights + model config) from a checkpoint."""
    from keisei_ray.store.checkpoint import CheckpointError, model_checkpoint
    from keisei_ray.store.model_file import ModelFileError, load_model, save_model
    from learner.model import export_weights

    try:
        loaded = load_model(model_checkpoint(checkpoint))
    except (CheckpointError, ModelFileError) as exc:
        _fail(str(exc), EXIT_USAGE)
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
    help="A model file or checkpoint directory, 'random' / 'heuristic' / 'mate', or a USI "
    "engine (usi:COMMAND,depth=N,... or an alias such as sf-d1).", show_default=False)]
ThreadsOpt = Annotated[int, typer.Option(help="Torch threads (1 is fastest for small batches).")]


def _contestant(spec: str) -> Any:
    """Load a player by name or path; a bad one is a one-line usage error."""
    from keisei_ray.arena.evaluation import load_contestant

    try:
        return load_contestant(spec)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)


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
    if games is not None and games < 1:
        raise ConfigError(f"--games must be at least 1, got {games}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    torch.set_num_threads(threads)
    a, b = _contestant(player), _contestant(opponent)
    if a.name == b.name:
        _fail(f"a match needs two different players, got {a.name!r} twice", EXIT_USAGE)
    if workers > 1:
        from keisei_ray.training.driver import connect_ray

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
        sys.stdout.write(json.dumps({
            "player": result.player, "opponent": result.opponent, "games": result.games,
            "wins": result.wins, "draws": result.draws, "losses": result.losses,
            "score": result.score, "score_ci95": list(summary.score_ci),
            "win_rate": result.win_rate, "win_rate_ci95": list(summary.win_rate_ci),
            "elo": summary.elo.elo, "elo_ci95": summary.elo.ci95, "reasons": result.reasons,
            "as_black": result.as_black, "as_white": result.as_white,
            "checks": {text: ok for ok, text in checks}}, indent=2) + "\n")
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
    from keisei_ray.arena.evaluation import ladder, plot_ladder, run_models

    if config is None and (run_dir / "config.yaml").is_file():
        config = run_dir / "config.yaml"
    cfg = load_config(config, overrides or [], preset=preset)
    torch.set_num_threads(threads)
    try:
        models = run_models(run_dir)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_USAGE)
    if not models:
        _fail(f"run folder {run_dir}: no checkpoints or model files to rate", EXIT_USAGE)
    if workers > 1:
        from keisei_ray.training.driver import connect_ray

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
        table.add_row(row.name, f"{row.timestep:,}", f"{row.rating.elo:+.0f}",
                      f"± {row.rating.ci95:.0f}",
                      *("-" if s is None else f"{100 * s:.0f}%" for s in scores))
    out.print(table)
    ratings = store.ratings()
    if "heuristic" in ratings:
        h = ratings["heuristic"]
        out.print(f"heuristic: Elo {h.elo:+.0f} ± {h.ci95:.0f}", markup=False)
    path = plot_ladder(rows, store, plot or run_dir / "ladder.png")
    out.print(f"plot written to {path}", markup=False)


@app.command("gauntlet")
def gauntlet_cmd(
    target: Annotated[str | None, typer.Argument(
        help="A model file, a run folder (its newest model plays), or any player spec.",
        show_default=False)] = None,
    games: Annotated[int, typer.Option("--games", "-n", help="Games per rung (per pair with "
                                       "--rate-ladder).")] = 20,
    workers: Annotated[int, typer.Option(help="Evaluation workers (Ray actors above 1).")] = 1,
    plot: Annotated[Path | None, typer.Option(help="PNG of the scores (default: "
                                              "gauntlet.png beside the model).")] = None,
    rate_ladder: Annotated[bool, typer.Option(
        "--rate-ladder", help="Play the rungs against each other and write their ratings "
        "(the file the gauntlet reads) instead.")] = False,
    reach: Annotated[int, typer.Option(help="--rate-ladder: pair each rung with the next "
                                       "N rungs.")] = 2,
    output: Annotated[Path | None, typer.Option(help="--rate-ladder: where to write the "
                                                "ratings (default: the package's file).",
                                                dir_okay=False)] = None,
    threads: ThreadsOpt = 1,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Play the fixed gauntlet (random, scripted players, Fairy-Stockfish at rising levels):
    score and Elo on the stored ladder scale per rung, plus a PNG."""
    import torch

    from keisei_ray.arena.evaluation import run_models
    from keisei_ray.arena.gauntlet import (
        GauntletError,
        gauntlet,
        plot_gauntlet,
        ratings_path,
    )
    from keisei_ray.arena.gauntlet import rate_ladder as play_ladder

    if games < 1:
        raise ConfigError(f"--games must be at least 1, got {games}")
    cfg = load_config(config, overrides or [], preset=preset)
    torch.set_num_threads(threads)
    if workers > 1:
        from keisei_ray.training.driver import connect_ray

        connect_ray(None, num_cpus=workers, include_dashboard=False)

    def progress(r: Any) -> None:
        log.info("%s vs %s: +%d =%d -%d (%.0f s)", r.player, r.opponent, r.wins, r.draws,
                 r.losses, r.seconds)

    if rate_ladder:
        if target is not None:
            _fail("--rate-ladder rates the rungs themselves: give no MODEL", EXIT_USAGE)
        try:
            document = play_ladder(cfg, games, reach=reach, workers=workers, progress=progress)
        except ValueError as exc:
            _fail(str(exc), EXIT_USAGE)
        path = output or ratings_path()
        path.write_text(json.dumps(document, indent=2) + "\n")
        for name, entry in document["ratings"].items():
            out.print(f"{name}: Elo {entry['elo']:+.0f} ± {entry['ci95']}", markup=False)
        out.print(f"ratings written to {path}", markup=False)
        return
    if target is None:
        _fail("give a MODEL file or RUN_DIR (or --rate-ladder)", EXIT_USAGE)
    spec, where = target, Path(target)
    if where.is_dir() and not (where / "model.pt").is_file() and not (where / "manifest.json")\
            .is_file():
        try:
            models = run_models(where)
        except FileNotFoundError as exc:
            _fail(str(exc), EXIT_USAGE)
        if not models:
            _fail(f"run folder {where}: no checkpoints or model files", EXIT_USAGE)
        spec = str(models[-1].path)
        log.info("gauntlet of %s (the newest model of %s)", spec, where)
    player = _contestant(spec)
    try:
        result = gauntlet(cfg, player, games, workers=workers, progress=progress)
    except GauntletError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        sys.stdout.write(json.dumps({
            "player": result.player, "elo": result.rating.elo, "elo_ci95": result.rating.ci95,
            "seconds": result.seconds,
            "rungs": [{"rung": row.rung, "rung_elo": row.rung_elo, "games": row.result.games,
                       "wins": row.result.wins, "draws": row.result.draws,
                       "losses": row.result.losses, "score": row.result.score,
                       "score_ci95": list(row.score_ci), "elo": row.elo.elo,
                       "elo_ci95": row.elo.ci95, "reasons": row.result.reasons}
                      for row in result.rows]}, indent=2) + "\n")
    else:
        table = Table(title=f"Gauntlet of {result.player} (Elo: random = 0, rungs at their "
                      "stored ratings)", header_style="bold")
        for column in ("rung", "rung Elo", "games", "+/=/-", "score", "95%", "Elo", "±"):
            table.add_column(column, justify="left" if column == "rung" else "right")
        for row in result.rows:
            r = row.result
            table.add_row(row.rung, f"{row.rung_elo:+.0f}", str(r.games),
                          f"{r.wins}/{r.draws}/{r.losses}", f"{100 * r.score:.0f}%",
                          f"{100 * row.score_ci[0]:.0f}-{100 * row.score_ci[1]:.0f}%",
                          *_rung_elo(row.result.score, row.rung_elo, row.elo.elo,
                                     row.elo.ci95))
        out.print(table)
        out.print(f"{result.player}: gauntlet Elo {result.rating.elo:+.0f} ± "
                  f"{result.rating.ci95:.0f} (95%), {sum(r.result.games for r in result.rows)} "
                  f"games in {result.seconds:.0f} s", markup=False)
    default_plot = (where.parent if where.is_file() else where if where.is_dir()
                    else Path.cwd()) / "gauntlet.png"
    path = plot_gauntlet(result, plot or default_plot)
    if not as_json:
        out.print(f"plot written to {path}", markup=False)


def _rung_elo(score: float, rung: float, elo: float, ci95: float) -> tuple[str, str]:
    """One rung's Elo cells: a score of 0% or 100% only says below / above the rung."""
    if score == 0.0:
        return f"< {rung:+.0f}", "-"
    if score == 1.0:
        return f"> {rung:+.0f}", "-"
    return f"{elo:+.0f}", f"{ci95:.0f}"


PLAYER_OVERRIDES = ("evaluation.greedy", "evaluation.avoid_repetition",
                    "evaluation.temperature", "evaluation.sample_plies", "evaluation.seed",
                    "env.max_moves", "env.impasse")
"""The overrides `usi` and `play` apply (how the player plays); any other is refused."""


def _player_overrides(command: str, overrides: list[str] | None) -> list[str]:
    """The overrides, refused by name if `command` cannot apply them."""
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if key not in PLAYER_OVERRIDES:
            raise ConfigError(f"{command}: override {key!r} does not apply here (it "
                              f"takes {', '.join(PLAYER_OVERRIDES)})")
    return list(overrides or [])


@app.command("usi")
def usi_cmd(
    model: PlayerArg,
    threads: ThreadsOpt = 1,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Run the agent as a USI engine on stdin/stdout (for Shogi GUIs and match runners)."""
    import torch

    from keisei_ray.arena.usi import serve

    # stdout is the protocol; keep stderr quiet too (a GUI may never read it).
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    cfg = load_config(config, _player_overrides("usi", overrides), preset=preset)
    torch.set_num_threads(threads)
    serve(_contestant(model), config=cfg, stdin=sys.stdin.buffer, stdout=sys.stdout,
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
        _fail(f"config error: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> NoReturn:
    # One line, no traceback: the message names what is wrong.
    sys.stderr.write(f"keisei-ray: {message}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
