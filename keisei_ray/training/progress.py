"""Training progress for people: a Rich live view on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from keisei_ray.config import TIME_BUDGET_ALONE_TIMESTEPS
from keisei_ray.events import Callback, LearnerRestarted, TrainEnd, TrainStart, UpdateDone
from keisei_ray.logs import console as default_console
from keisei_ray.logs import is_interactive

log = logging.getLogger(__name__)


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressView(Callback):
    """Shows timesteps, speed, game statistics, losses, lag and workers.

    On a TTY the view refreshes a few times a second from the latest update (Rich's own
    refresh thread), never per environment step. Without a TTY it logs one line every
    `log_interval_s` seconds.
    """

    def __init__(self, total_timesteps: int, *, max_minutes: float | None = None,
                 interactive: bool | None = None, log_interval_s: float = 10.0,
                 console: Console | None = None) -> None:
        # A time budget alone (no timestep budget given) shows minutes, not "of 10^12 steps".
        self.by_time = max_minutes is not None and total_timesteps >= TIME_BUDGET_ALONE_TIMESTEPS
        self.total = total_timesteps
        self.max_minutes = max_minutes
        self.interactive = is_interactive() if interactive is None else interactive
        self.log_interval_s = log_interval_s
        self.console = console or default_console
        self._last: UpdateDone | None = None
        self._start_timestep = 0
        self._live: Live | None = None
        self._last_log = 0.0

    # ---------------------------------------------------------------- events
    def on_train_start(self, event: TrainStart) -> None:
        self._start_timestep = event.timestep
        self._last_log = time.monotonic()
        if self.interactive:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def on_update_done(self, event: UpdateDone) -> None:
        self._last = event
        if not self.interactive and time.monotonic() - self._last_log >= self.log_interval_s:
            self._last_log = time.monotonic()
            log.info("%s", self.summary_line())

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        log.warning("learner restart %d: back at timestep %d from %s (%d transitions lost, "
                    "%.1f s down)", event.restarts, event.timestep,
                    event.checkpoint or "the run's start", event.transitions_lost, event.down_s)

    def on_train_end(self, event: TrainEnd) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        log.info("training %s at timestep %d (policy version %d); %s", event.reason,
                 event.timestep, event.version, self.summary_line())

    # ---------------------------------------------------------------- rendering
    def _timesteps_text(self, timestep: int) -> str:
        if self.by_time:
            return f"{timestep:,} (of {self.max_minutes:g} min)"
        return f"{timestep:,}/{self.total:,}"

    def summary_line(self) -> str:
        e = self._last
        if e is None:
            return "no update yet"
        shares = e.totals.shares()
        m = e.metrics
        return (f"ts {self._timesteps_text(e.timestep)} | {e.steps_per_s:,.0f} steps/s | "
                f"games {e.totals.games:,} (win {shares['win_share']:.0%} "
                f"draw {shares['draw_share']:.0%} cap {shares['cap_draw_share']:.0%}, "
                f"len {e.totals.mean_length:.0f}) | pl {m.get('policy_loss', 0.0):.3f} "
                f"vl {m.get('value_loss', 0.0):.3f} ent {m.get('entropy', 0.0):.2f} | "
                f"lag {e.policy_lag} | workers {e.workers_alive}"
                + (f" | learner restarts {e.learner_restarts}" if e.learner_restarts else "")
                + (f" | {e.bottleneck}" if e.bottleneck else "")
                + (f" | vs opponent {e.totals.opponent_games:,} games, won "
                   f"{shares['opponent_win_share']:.0%}" if e.totals.opponent_games else ""))

    def __rich__(self) -> Group:
        e = self._last
        done = e.timestep if e else self._start_timestep
        if self.by_time and self.max_minutes is not None:
            minutes = e.wall_time / 60.0 if e else 0.0
            bar = ProgressBar(total=self.max_minutes, completed=min(minutes, self.max_minutes),
                              width=60)
        else:
            bar = ProgressBar(total=max(self.total, 1), completed=min(done, self.total),
                              width=60)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column(justify="right")
        table.add_column(style="bold cyan")
        table.add_column(justify="right")
        if e is None:
            table.add_row("timesteps", self._timesteps_text(done), "status", "starting")
            return Group(bar, table)
        shares = e.totals.shares()
        m = e.metrics
        if self.by_time and self.max_minutes is not None:
            remaining = max(60.0 * self.max_minutes - e.wall_time, 0.0)
        else:
            remaining = (self.total - e.timestep) / e.steps_per_s if e.steps_per_s > 0 else 0.0
        rows = [
            ("timesteps", self._timesteps_text(e.timestep), "steps/s", f"{e.steps_per_s:,.0f}"),
            ("elapsed", _fmt_duration(e.wall_time), "eta", _fmt_duration(remaining)),
            ("games", f"{e.totals.games:,}", "mean length", f"{e.totals.mean_length:.1f}"),
            ("decisive", f"{shares['win_share']:.1%}", "black wins",
             f"{shares['black_win_share']:.1%}"),
            ("draws", f"{shares['draw_share']:.1%}", "cap draws",
             f"{shares['cap_draw_share']:.1%}"),
            ("policy loss", f"{m.get('policy_loss', 0.0):.4f}", "value loss",
             f"{m.get('value_loss', 0.0):.4f}"),
            ("entropy", f"{m.get('entropy', 0.0):.3f}", "approx kl",
             f"{m.get('approx_kl', 0.0):.4f}"),
            ("policy version", f"{e.version}", "policy lag", f"{e.policy_lag}"),
            ("workers alive", f"{e.workers_alive}", "worker restarts", f"{e.worker_restarts}"),
            ("learner busy", f"{e.learner_busy:.0%}", "workers busy", f"{e.worker_busy:.0%}"),
        ]
        if e.learner_restarts:
            rows.append(("learner restarts", f"{e.learner_restarts}", "", ""))
        if e.bottleneck:
            rows.append(("bottleneck", e.bottleneck, "", ""))
        if e.totals.opponent_games:
            rows.append(("vs opponent", f"{e.totals.opponent_games:,} games",
                         "won", f"{shares['opponent_win_share']:.1%}"))
        for row in rows:
            table.add_row(*row)
        return Group(bar, table)
