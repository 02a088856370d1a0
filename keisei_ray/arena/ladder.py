"""The checkpoint ladder: every model of a run rated in one Elo store, and its plot."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from actors.evaluation import Contestant, MatchResult
from actors.players import BASELINES
from keisei_ray.arena.elo import ANCHOR, EloStore, Rating
from keisei_ray.arena.evaluation import (
    load_contestant,
    run_match,
)
from keisei_ray.config import Config
from keisei_ray.store.checkpoint import CHECKPOINTS, list_checkpoints
from keisei_ray.store.model_file import ModelFileError, load_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ladder


@dataclass(frozen=True)
class RunModel:
    """A model of a run for the ladder: its name, training timestep and where it lives."""

    name: str
    timestep: int
    path: Path


def run_models(run_dir: Path) -> list[RunModel]:
    """The run's models in timestep order: its checkpoints (`RUN_DIR/checkpoints/ckpt-*`) and
    every exported model file (`*.pt`) elsewhere under `run_dir`.

    The timestep comes from the checkpoint or file metadata, else from the last number in the
    file name. Damaged checkpoints are reported (one line each) and left out.
    """
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir}: not found")
    checkpoints = run_dir / CHECKPOINTS
    candidates = [*reversed(list_checkpoints(run_dir)),
                  *(p for p in sorted(run_dir.rglob("*.pt"))
                    if checkpoints not in p.parents)]
    found = []
    for path in candidates:
        try:
            meta = load_model(path).meta
        except ModelFileError as exc:
            log.warning("ladder: skipping %s", exc)
            continue
        timestep = meta.get("timestep")
        if not isinstance(timestep, int):
            numbers = re.findall(r"\d+", path.stem)
            timestep = int(numbers[-1]) if numbers else 0
        found.append(RunModel(f"ts-{timestep}", timestep, path))
    names = [m.name for m in found]
    # Two models of one timestep keep distinct names.
    return sorted((RunModel(m.name if names.count(m.name) == 1 else f"{m.name}-{m.path.stem}",
                            m.timestep, m.path) for m in found),
                  key=lambda m: (m.timestep, m.name))


@dataclass(frozen=True)
class LadderRow:
    name: str
    timestep: int
    rating: Rating
    scores: dict[str, float]  # opponent -> score


def ladder(config: Config, models: Sequence[RunModel], games: int, *, workers: int = 1,
           previous: bool = True,
           progress: Callable[[MatchResult], None] | None = None) -> tuple[list[LadderRow],
                                                                            EloStore]:
    """Rate `models` by matches against random, heuristic and (with `previous`) their
    predecessor; one Elo store over all of them."""
    if not models:
        raise ValueError("no models to rate")
    store = EloStore()
    scores: dict[str, dict[str, float]] = {m.name: {} for m in models}
    baselines = [Contestant.baseline(b) for b in BASELINES]
    earlier: Contestant | None = None
    for k, model in enumerate(models):
        contestant = load_contestant(str(model.path), name=model.name)
        opponents = [*baselines, *([earlier] if previous and earlier is not None else [])]
        for opponent in opponents:
            result = run_match(config, contestant, opponent, games, workers=workers,
                               seed=config.evaluation.seed + 1009 * k, records=0)
            store.record(result.player, result.opponent, result.wins, result.draws,
                         result.losses)
            scores[model.name][opponent.name] = result.score
            if progress is not None:
                progress(result)
        earlier = contestant
    ratings = store.ratings()
    rows = [LadderRow(m.name, m.timestep, ratings[m.name], scores[m.name]) for m in models]
    return rows, store


RUNG_COLOURS = ("C1", "C2", "C4", "C5", "C6", "C8", "C9")
"""Colours of the gauntlet rungs' lines (not the curve's blue nor the heuristic's red)."""


def plot_ladder(rows: Sequence[LadderRow], store: EloStore, path: Path) -> Path:
    """A PNG of Elo over timesteps (95% bars), with the anchors drawn as lines."""
    figure = ladder_figure(rows, store)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def ladder_figure(rows: Sequence[LadderRow], store: EloStore) -> Figure:
    """The ladder plot's figure; its legend stands outside the axes, right of them."""
    # Only the ladder draws: keep matplotlib out of every other import. No pyplot (no global
    # backend state): a bare Figure renders with Agg.
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(9, 4), dpi=120)
    axes = figure.add_subplot()
    steps = [r.timestep for r in rows]
    elos = [r.rating.elo for r in rows]
    bars = [r.rating.ci95 if math.isfinite(r.rating.ci95) else 0.0 for r in rows]
    axes.errorbar(steps, elos, yerr=bars, marker="o", capsize=3, label="checkpoints")
    ratings = store.ratings()
    axes.axhline(ratings[ANCHOR].elo, color="grey", linestyle=":", label=f"{ANCHOR} (anchor)")
    if "heuristic" in ratings:
        axes.axhline(ratings["heuristic"].elo, color="tab:red", linestyle="--",
                     label="heuristic")
    # The gauntlet's external rungs (stored ratings, the same random = 0 scale) near the curve.
    from keisei_ray.arena.gauntlet import GauntletError, load_ratings  # noqa: PLC0415

    try:
        rungs = load_ratings()
    except GauntletError as exc:
        log.warning("ladder plot without the gauntlet rungs: %s", exc)
        rungs = {}
    low, high = min(elos) - 300.0, max(elos) + 300.0
    for k, (rung, elo) in enumerate(sorted(((r, e) for r, e in rungs.items()
                                            if r.startswith(("sf-", "gps-")) and
                                            low <= e <= high), key=lambda item: item[1])):
        axes.axhline(elo, color=RUNG_COLOURS[k % len(RUNG_COLOURS)], linestyle="-.",
                     linewidth=0.8,
                     label=f"{rung} (gauntlet)")
    axes.set_xlabel("timestep")
    axes.set_ylabel(f"Elo ({ANCHOR} = {ratings[ANCHOR].elo:.0f})")
    axes.set_title("Elo over training (Bradley-Terry, 95% intervals)")
    axes.grid(alpha=0.3)
    # Outside the axes, right of them: inside, "best" still covered the curve or a rung line.
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    figure.subplots_adjust(left=0.08, right=0.76, top=0.91, bottom=0.13)
    return figure

