"""`keisei-ray bench ...`: each benchmark command parses its options and calls its module here."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from keisei_ray.config import ConfigError
from keisei_ray.console import (
    EXIT_FAILURE,
    EXIT_USAGE,
    JsonOpt,
    OverridesArg,
    fail,
    out,
)

log = logging.getLogger("keisei_ray")

bench_app = typer.Typer(help="Benchmarks that print their figures.", no_args_is_help=True)


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
    compare_decoupled: Annotated[bool, typer.Option(
        help="Time updates with ppo.decoupled on and off, alternated (the proximal pass's "
        "cost), instead.")] = False,
    epochs: Annotated[int, typer.Option(help="PPO epochs per update.")] = 1,
    rounds: Annotated[int, typer.Option(help="Alternations (--compare-decoupled, "
                                        "--compare).")] = 5,
    compare: Annotated[str | None, typer.Option(
        help="Comma-separated learner variants timed alternately on the same data instead, "
        "the first the baseline: legal (the default learner), dense (the old dense "
        "[N, 13527] logits path), ...")] = None,
    as_json: JsonOpt = False,
) -> None:
    """PPO update throughput (samples/s) per model size."""
    from keisei_ray.bench.learner import PPO_ARMS, bench_decoupled, bench_ppo, bench_ppo_compare

    if compare is not None:
        arms = tuple(compare.split(","))
        unknown = [arm for arm in arms if arm not in PPO_ARMS]
        if unknown:
            fail(f"--compare: unknown variant(s) {unknown} (expected some of "
                 f"{sorted(PPO_ARMS)})", EXIT_USAGE)
        _print_figures("PPO learner variants (alternated)",
                       bench_ppo_compare(arms, tuple(sizes.split(",")), transitions=transitions,
                                         device=device, epochs=epochs, minibatch_size=minibatch,
                                         rounds=rounds), as_json)
        return
    if compare_decoupled:
        _print_figures("Decoupled PPO: the proximal pass's cost",
                       bench_decoupled(tuple(sizes.split(",")), transitions=transitions,
                                       device=device, amp=amp, epochs=epochs,
                                       minibatch_size=minibatch, rounds=rounds), as_json)
        return
    _print_figures("PPO learner", bench_ppo(tuple(sizes.split(",")), transitions=transitions,
                                            device=device, amp=amp, compile=compile_model,
                                            epochs=epochs, minibatch_size=minibatch,
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


@bench_app.command("trim")
def bench_trim_cmd(updates: int = 24, rounds: int = 2, as_json: JsonOpt = False) -> None:
    """Learner update time without and with the heap trim the learner actor does per update."""
    from keisei_ray.bench.learner import bench_heap_trim

    _print_figures("Learner heap trim", bench_heap_trim(updates, rounds=rounds), as_json)


@bench_app.command("worker")
def bench_worker_cmd(size: str = "small", games: int = 64, steps: int = 32,
                     seconds: float = 5.0, attack_planes: bool = False,
                     policy_head: PolicyHeadOpt = "relative", as_json: JsonOpt = False) -> None:
    """Self-play worker decisions/s vs pure batched inference of the same model (roofline)."""
    from keisei_ray.bench.train import bench_worker

    _print_figures("Worker roofline", bench_worker(size, games, steps, seconds,
                                                   attack_planes=attack_planes,
                                                   policy_head=policy_head), as_json)


@bench_app.command("teacher")
def bench_teacher_cmd(
    simulations: Annotated[str, typer.Option(
        help="Comma-separated train.search.simulations to compare (0: no search).")] = "0,4,8,16",
    size: str = "small", games: int = 32, steps: int = 16,
    collects: Annotated[int, typer.Option(help="Timed collects per budget.")] = 2,
    warmup: Annotated[int, typer.Option(help="Collects before timing (into the game).")] = 1,
    full_search_share: float = 1.0, cheap_simulations: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Self-play worker decisions/s and bytes per transition with search as a teacher."""
    from keisei_ray.bench.train import bench_teacher

    try:
        budgets = [int(x) for x in simulations.split(",")]
    except ValueError:
        raise ConfigError(f"--simulations: expected comma-separated integers, got "
                          f"{simulations!r}") from None
    if collects < 1 or warmup < 0:
        raise ConfigError(f"--collects must be >= 1 and --warmup >= 0, got {collects} and "
                          f"{warmup}")
    _print_figures("Search as a teacher: self-play worker",
                   bench_teacher(budgets, size=size, games=games, steps=steps,
                                 collects=collects, warmup=warmup,
                                 full_search_share=full_search_share,
                                 cheap_simulations=cheap_simulations), as_json)


@bench_app.command("search")
def bench_search_cmd(
    sizes: Annotated[str, typer.Option(help="Comma-separated model sizes.")] = "tiny,small",
    trees: Annotated[str, typer.Option(help="Comma-separated numbers of trees searched at "
                                       "once (1: the USI engine; 64: a match).")] = "1,64",
    simulations: Annotated[int, typer.Option(help="Simulations per position.")] = 64,
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 3.0,
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Tree search simulations/s and leaf evaluations/s vs pure batched inference of the same
    model at the same batch size, and the tree's own share of the time (extra `search.*`
    overrides allowed)."""
    from keisei_ray.bench.search import bench_search

    for item in overrides or []:
        if not item.partition("=")[0].strip().startswith("search."):
            raise ConfigError(f"bench search: override {item!r} is not a search.* setting")
    try:
        counts = [int(t) for t in trees.split(",")]
    except ValueError:
        raise ConfigError(f"--trees: expected comma-separated integers, got {trees!r}") from None
    if simulations < 1 or seconds <= 0 or threads < 1 or any(c < 1 for c in counts):
        raise ConfigError("bench search: --simulations, --trees and --threads must be at least "
                          "1 and --seconds above 0")
    _print_figures("Tree search vs batched inference (one process)",
                   bench_search([s.strip() for s in sizes.split(",")], counts, simulations,
                                seconds, threads, overrides=overrides or []), as_json)


@bench_app.command("broadcast")
def bench_broadcast_cmd(workers: int = 8, half: bool = False, as_json: JsonOpt = False) -> None:
    """ray.put -> all workers holding the new weights, small and large models."""
    from keisei_ray.bench.train import bench_broadcast

    _print_figures("Weight broadcast", bench_broadcast(workers=workers, half=half), as_json)


def _int_list(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"{option}: expected comma-separated whole numbers, got {text!r}", EXIT_USAGE)
    if not values or min(values) < 1:
        fail(f"{option}: every count must be at least 1, got {text!r}", EXIT_USAGE)
    return values


@bench_app.command("inference")
def bench_inference_cmd(
    sizes: Annotated[str, typer.Option(help="Comma-separated model sizes.")] = "small,large",
    workers: Annotated[str, typer.Option(help="Comma-separated counts of simulated workers "
                                         "(threads of this process).")] = "1,4,16",
    games: Annotated[int, typer.Option(min=1, help="Games per worker.")] = 16,
    steps: Annotated[int, typer.Option(min=1, help="Plies per collect.")] = 4,
    seconds: Annotated[float, typer.Option(min=0.0, help="Seconds per measurement (each "
                                           "worker also does at least 2 collects).")] = 3.0,
    max_wait_ms: Annotated[float, typer.Option(min=0.0, help="inference.max_wait_ms.")] = 2.0,
    actor_threads: Annotated[int, typer.Option(min=1, help="The actor's torch threads.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Self-play decisions/s per worker core: each worker's own forward vs the inference actor
    (CPU, one machine)."""
    from keisei_ray.bench.inference import bench_inference

    names = tuple(s.strip() for s in sizes.split(","))
    unknown = [n for n in names if n not in ("tiny", "small", "large")]
    if unknown:
        fail(f"--sizes: unknown model size(s) {unknown} (tiny, small, large)", EXIT_USAGE)
    rows = bench_inference(names, _int_list("--workers", workers), games=games, steps=steps,
                           seconds=seconds, max_wait_ms=max_wait_ms, actor_threads=actor_threads)
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
        return
    table = Table(title=f"Batched inference on CPU ({games} games per worker)",
                  show_header=True, header_style="bold")
    for column in ("model", "workers", "inference", "decisions/s", "per worker core-s",
                   "actor CPU ms / 1k", "positions / forward"):
        table.add_column(column, justify="left" if column in ("model", "inference") else "right")
    for r in rows:
        table.add_row(r.size, str(r.workers), r.mode, f"{r.decisions_per_s:,.0f}",
                      f"{r.per_worker_core:,.0f}",
                      f"{r.actor_cpu_ms:,.0f}" if r.mode == "actor" else "-",
                      f"{r.mean_batch:,.1f}")
    out.print(table)


@bench_app.command("train")
def bench_train_cmd(
    preset: str = "local",
    workers: Annotated[str, typer.Option(help="Comma-separated worker counts.")] = "1,2",
    timesteps: int = 20_000,
    learner_threads: Annotated[str | None, typer.Option(
        help="Comma-separated train.learner_threads values, alternated run by run (e.g. "
        "1,2).")] = None,
    compare: Annotated[str | None, typer.Option(
        help="Arms of overrides, alternated run by run, the first the baseline: arms separated "
        "by ';', an arm's overrides by spaces (e.g. 'ppo.compile=false;ppo.compile=true'); "
        "not with --learner-threads.")] = None,
    seconds: Annotated[float | None, typer.Option(
        help="Each run trains this long (train.max_minutes) instead of --timesteps.")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Runs per arm (medians reported).")] = 1,
    num_cpus: Annotated[int | None, typer.Option(
        help="Start Ray with this many CPUs (simulate a larger machine).")] = None,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """End-to-end training steps/s with N workers; learner and worker idle shares."""
    from keisei_ray.bench.train import bench_training

    try:
        counts = tuple(int(w) for w in workers.split(","))
        threads = tuple(int(t) for t in learner_threads.split(",")) if learner_threads else ()
    except ValueError as exc:
        fail(f"--workers and --learner-threads take comma-separated integers ({exc})",
             EXIT_USAGE)
    if threads and compare:
        fail("give --learner-threads or --compare, not both", EXIT_USAGE)
    # --learner-threads T1,T2 is shorthand for --compare "train.learner_threads=T1;...".
    arms = (tuple((f"train.learner_threads={t}",) for t in threads) if threads
            else tuple(tuple(arm.split()) for arm in compare.split(";")) if compare else ())
    if len(set(arms)) < len(arms):
        fail(f"bench arms must differ, got {list(arms)}", EXIT_USAGE)
    _print_figures("End-to-end training", bench_training(
        preset, counts, timesteps, tuple(overrides or []), compare=arms, seconds=seconds,
        rounds=rounds, num_cpus=num_cpus), as_json)


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
        fail(str(exc), EXIT_USAGE)
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
        from keisei_ray.bench.fuzz_run import TARGETS, run_all
    except ImportError as exc:
        fail(f"bench fuzz needs the dev extra (pip install 'keisei-ray[dev]'): {exc}",
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
    kill_learner_every: Annotated[float, typer.Option(help="Seconds between learner kills "
                                                      "(0: none); the driver restarts it from "
                                                      "its last checkpoint.")] = 0.0,
    sample_every: Annotated[float, typer.Option(help="Seconds between samples.")] = 10.0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Also write the report "
                                                  "(figures and samples) as JSON here.",
                                                  dir_okay=False)] = None,
    check: Annotated[bool, typer.Option(help="Exit with code 1 when a target is missed "
                                        "(RSS growth, counter == accepted, stalls).")] = False,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Train with evaluation and checkpoints on, kill a worker every few minutes (and the
    learner, with --kill-learner-every); RSS of the driver, learner and workers, steps/s,
    restarts, transitions lost, counter vs accepted, longest stall. Ctrl-C ends the run early
    and still reports."""
    from keisei_ray.bench.soak import bench_soak

    if minutes <= 0 or sample_every <= 0 or kill_every < 0 or kill_learner_every < 0:
        raise ConfigError("--minutes and --sample-every must be positive, --kill-every and "
                          "--kill-learner-every >= 0")
    report = bench_soak(minutes, preset=preset, kill_every_s=kill_every,
                        kill_learner_every_s=kill_learner_every, sample_every_s=sample_every,
                        overrides=tuple(overrides or []))
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
    if check and report.missed_targets():
        raise typer.Exit(1)


