"""`keisei-ray usi MODEL`: the agent as a USI engine for Shogi GUIs (ShogiGUI, Shogidokoro,
ShogiHome) and USI match runners.

The engine thinks in a worker thread, so `stop`, `ponderhit`, `isready` and `quit` are
answered while it thinks. With `Simulations` > 0 (`usi.simulations`, the default) it searches
(`actors.search.TreeSearch`) within the time the GUI gives: byoyomi, sudden death with
increments, `movetime`, `nodes`, `infinite` and `ponder` (see `arena/usi_go.py` for the clock),
writing `info depth .. seldepth .. nodes .. nps .. time .. score cp|mate .. pv ..` lines; with
0 it plays the raw policy (one forward per `go`, argmax or sampled) in milliseconds.

It never crashes on input and never sends an illegal move: malformed or illegal commands get
an `info string error: ...` line; a `go` without a valid position, or in a lost position,
answers `bestmove resign`; a valid 27-point impasse declaration (option `Impasse`) answers
`bestmove win`. `go infinite` and `go ponder` hold their move until `stop` (or `ponderhit`),
as the protocol requires; a command that needs the engine idle (`position`, `go`,
`setoption`, `usinewgame`, `gameover`) while it still thinks stops the thinking first, so
every `go` gets exactly one `bestmove`.

The options start from the config (`evaluation.greedy`, `avoid_repetition`, `temperature`,
`sample_plies`, `seed`; `env.impasse`; `search.*`; `usi.*`), so `keisei-ray usi MODEL
evaluation.greedy=false` takes effect, and the player is built by
`actors.evaluation.make_player` as in evaluation. The options match runners and GUIs set are
accepted too: `USI_Hash`, `USI_Ponder`, `Threads` (torch's threads) and `MaxMovesToDraw`
(YaneuraOu's name; `Draw_Ply`, dlshogi's, is an alias): the game's ply cap, counted from the
position given (startpos or the sfen), which ends the game as a draw in the engine's position
(the search's terminal value) and scales the network's ply plane as `env.max_moves` did in
training; 0 (the default) is no cap, the plane then keeps the model's training scale.

One class answers the whole protocol (a handler per USI command), so it runs long: splitting
it would scatter one state machine. The clock is `arena/usi_go.py`, the search of a `go`
`arena/usi_search.py`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import BinaryIO, TextIO

import torch
from pydantic import ValidationError

from actors.evaluation import Contestant, make_player, search_settings
from actors.players import Player, PolicyPlayer
from keisei_ray import __version__
from keisei_ray.arena.usi_go import GoLimits, UsiError, clip, parse_int
from keisei_ray.arena.usi_search import EngineSearch, GoJob, value_to_cp
from keisei_ray.config import Config, SearchConfig
from learner.model import build_model, load_weights
from shogi import (
    STARTING_SFEN,
    Outcome,
    Position,
    RandomPlayer,
    ShogiError,
    Termination,
)

log = logging.getLogger(__name__)

MAX_MOVES_TO_DRAW = 100_000
"""Largest `MaxMovesToDraw` (YaneuraOu's bound)."""
MAX_HASH_MB = 1_048_576
"""Largest `USI_Hash` accepted: GUIs send their own setting, often far above 1 GB."""
MAX_SIMULATIONS = 10_000_000
"""Largest `Simulations` (usi.simulations' bound)."""
SEARCH_OPTIONS = {"cpuct": "c_puct", "gumbel": "gumbel", "gumbelmoves": "gumbel_moves",
                  "leavesperforward": "leaves_per_forward", "mateplies": "mate_plies",
                  "reusetree": "reuse_tree"}
"""USI option (lower case) -> `search` setting."""

__all__ = ["Options", "UsiEngine", "UsiError", "serve", "value_to_cp"]


@dataclass
class Options:
    """The engine's USI options (names as the GUI shows them); defaults from the config."""

    greedy: bool
    avoid_repetition: bool
    temperature: float
    sample_plies: int
    seed: int
    impasse: bool
    simulations: int  # most simulations per move (usi.simulations); 0: the raw policy
    network_delay_ms: int  # the clock kept in hand on every move (usi.network_delay_ms)
    search: SearchConfig  # how the engine searches (its `simulations` unused: see above)
    threads: int = 1  # torch threads: set by the command line, not the config
    # USI protocol settings, not config ones: a GUI or match runner sets them per game.
    max_moves_to_draw: int = 0  # MaxMovesToDraw (YaneuraOu's name): the game's ply cap; 0: none
    hash_mb: int = 16  # USI_Hash: accepted (GUIs always send it); the raw policy keeps no table
    ponder: bool = False  # USI_Ponder: the GUI may send `go ponder`

    @classmethod
    def from_config(cls, config: Config, threads: int = 1, contestant: Contestant | None = None
                    ) -> Options:
        """The config's options; a contestant's own search settings (`model.pt,sims=64`) go
        over the config's, its `sims` being the engine's Simulations."""
        e = config.evaluation
        own = dict(contestant.search) if contestant is not None else {}
        search = search_settings(config.search, tuple(own.items()))
        simulations = search.simulations if "simulations" in own else config.usi.simulations
        return cls(e.greedy, e.avoid_repetition, e.temperature, e.sample_plies, e.seed,
                   config.env.impasse == "27", simulations, config.usi.network_delay_ms,
                   search, threads)

    def lines(self) -> list[str]:
        """The `option` lines of the `usi` answer, with these values as defaults."""

        def check(flag: bool) -> str:
            return "true" if flag else "false"

        s = self.search
        return [
            f"option name USI_Ponder type check default {check(self.ponder)}",
            f"option name USI_Hash type spin default {self.hash_mb} min 1 max {MAX_HASH_MB}",
            f"option name Greedy type check default {check(self.greedy)}",
            f"option name AvoidRepetition type check default {check(self.avoid_repetition)}",
            f"option name Temperature type string default {self.temperature}",
            f"option name SamplePlies type spin default {self.sample_plies} min 0 max 512",
            f"option name Seed type spin default {self.seed} min 0 max 2147483647",
            f"option name Impasse type check default {check(self.impasse)}",
            f"option name Threads type spin default {self.threads} min 1 max 256",
            f"option name MaxMovesToDraw type spin default {self.max_moves_to_draw} min 0 "
            f"max {MAX_MOVES_TO_DRAW}",
            f"option name Simulations type spin default {self.simulations} min 0 max "
            f"{MAX_SIMULATIONS}",
            f"option name NetworkDelay type spin default {self.network_delay_ms} min 0 max "
            "60000",
            f"option name CPuct type string default {s.c_puct}",
            f"option name Gumbel type check default {check(s.gumbel)}",
            f"option name GumbelMoves type spin default {s.gumbel_moves} min 1 max 1000",
            f"option name LeavesPerForward type spin default {s.leaves_per_forward} min 1 "
            "max 4096",
            f"option name MatePlies type spin default {s.mate_plies} min 0 max 15",
            f"option name ReuseTree type check default {check(s.reuse_tree)}",
        ]

    def apply(self, config: Config) -> Config:
        """`config` with these options in its evaluation and env sections."""
        evaluation = config.evaluation.model_copy(update={
            "greedy": self.greedy, "avoid_repetition": self.avoid_repetition,
            "temperature": self.temperature, "sample_plies": self.sample_plies,
            "seed": self.seed})
        env = config.env.model_copy(update={"impasse": "27" if self.impasse else "off"})
        # The player plays the raw policy; the engine searches with its own TreeSearch.
        search = self.search.model_copy(update={"simulations": 0})
        return config.model_copy(update={"evaluation": evaluation, "env": env,
                                         "search": search})


class UsiEngine:
    """The protocol state machine: feed it lines, it writes answers through `write` (from the
    reader's thread and the worker's; each line whole)."""

    def __init__(self, contestant: Contestant, write: Callable[[str], None], *,
                 max_moves: int | None = None, config: Config | None = None,
                 threads: int = 1) -> None:
        self.contestant = contestant
        lock = threading.Lock()

        def locked(line: str) -> None:
            # ASCII only: clients decode some answers as ASCII or Shift-JIS, so quoted input
            # with other characters is escaped (\uXXXX) rather than allowed to break them.
            with lock:
                write(line.encode("ascii", "backslashreplace").decode("ascii"))

        self.write: Callable[[str], None] = locked
        config = config or Config()
        if max_moves is not None:
            config = config.model_copy(update={
                "env": config.env.model_copy(update={"max_moves": max_moves})})
        self.config = config  # env.max_moves: the ply plane's scale when the model has none
        self.options = Options.from_config(config, threads, contestant)
        self.position: Position | None = Position(impasse=self.options.impasse)
        self.player: Player | None = None
        self.search: EngineSearch | None = None  # with Simulations > 0 and a network
        self.quit = False
        self._job: GoJob | None = None
        self._model: torch.nn.Module | None = None
        self._fallback = RandomPlayer(0)

    # ---------------------------------------------------------------- loop
    def run(self, lines: Iterable[str]) -> None:
        """Answer every line until `quit` or the end of input (then stop thinking)."""
        try:
            for line in lines:
                self.handle(line)
                if self.quit:
                    break
        finally:
            self.close()

    def handle(self, line: str) -> None:
        """One command line; errors become `info string error: ...`, never an exception."""
        words = line.strip().split()
        if not words:
            return
        command, args = words[0], words[1:]
        handler = _COMMANDS.get(command)
        if handler is None:
            self.info_error(f"unknown command {clip(line.strip())!r}")
            return
        try:
            if command in _NEEDS_IDLE:
                # A runner ends a game while its loser ponders: that is no protocol slip.
                self._stop_thinking(None if command == "gameover" else command)
            handler(self, args)
        except UsiError as exc:
            self.info_error(str(exc))
        except Exception as exc:
            # Contained: a GUI must never see the engine die; the traceback goes to the log.
            log.exception("USI command %r failed", clip(line.strip()))
            self.info_error(f"internal error in {command!r}: {type(exc).__name__}: {exc}")
            if command == "go" and args[:1] != ["mate"] and self._job is None:
                self.write(f"bestmove {self._safe_move(self.position)}")

    def info_error(self, message: str) -> None:
        self.write(f"info string error: {_one_line(message)}")

    @property
    def thinking(self) -> bool:
        """A `go` is still to be answered (thinking, or holding for stop/ponderhit)."""
        job = self._job
        return job is not None and not job.answered

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current `go` is answered or holds for stop/ponderhit; False on
        timeout."""
        job = self._job
        return job is None or job.settled.wait(timeout)

    def close(self) -> None:
        """Stop thinking (the pending `go` is answered) and wait for the worker."""
        self._stop_thinking(None)

    # ---------------------------------------------------------------- commands
    def cmd_usi(self, args: list[str]) -> None:
        self.write(f"id name keisei-ray {__version__} ({self.contestant.name})")
        self.write("id author keisei-ray developers")
        for line in self.options.lines():
            self.write(line)
        self.write("usiok")

    def cmd_isready(self, args: list[str]) -> None:
        if not self.thinking:  # while thinking the player is in use: it is ready anyway
            self._ensure_player()
            self._ensure_search()
        self.write("readyok")

    def cmd_setoption(self, args: list[str]) -> None:
        if len(args) < 2 or args[0] != "name":
            raise UsiError(f"malformed setoption {' '.join(args)!r} (expected 'setoption name "
                           "<id> [value <x>]')")
        if "value" in args[1:]:
            split = args.index("value", 1)
            name, value = " ".join(args[1:split]), " ".join(args[split + 1:])
        else:
            name, value = " ".join(args[1:]), ""
        key = name.lower()
        o = self.options
        if key == "usi_ponder":
            o.ponder = _parse_bool(name, value)
            return
        if key == "usi_hash":
            o.hash_mb = parse_int(name, value, 1, MAX_HASH_MB)
            return
        if key in ("maxmovestodraw", "draw_ply"):  # YaneuraOu's name; dlshogi's alias
            o.max_moves_to_draw = parse_int(name, value, 0, MAX_MOVES_TO_DRAW)
            self.position = None  # the rules changed: the GUI sends the position again
        elif key == "greedy":
            o.greedy = _parse_bool(name, value)
        elif key == "avoidrepetition":
            o.avoid_repetition = _parse_bool(name, value)
        elif key == "temperature":
            t = _parse_float(name, value)
            if not 0.0 < t <= 100.0:
                raise UsiError(f"option Temperature must be in (0, 100], got {value!r}")
            o.temperature = t
        elif key == "sampleplies":
            o.sample_plies = parse_int(name, value, 0, 512)
        elif key == "seed":
            o.seed = parse_int(name, value, 0, 2**31 - 1)
        elif key == "impasse":
            o.impasse = _parse_bool(name, value)
            self.position = None  # the rules changed: the GUI sends the position again
        elif key == "threads":
            o.threads = parse_int(name, value, 1, 256)
            torch.set_num_threads(o.threads)
        elif key == "simulations":
            o.simulations = parse_int(name, value, 0, MAX_SIMULATIONS)
        elif key == "networkdelay":
            o.network_delay_ms = parse_int(name, value, 0, 60_000)
            return
        elif key in SEARCH_OPTIONS:
            field_name = SEARCH_OPTIONS[key]
            raw: object = value
            if isinstance(getattr(o.search, field_name), bool):
                raw = _parse_bool(name, value)
            try:
                o.search = SearchConfig.model_validate(
                    {**o.search.model_dump(), field_name: raw})
            except ValidationError as exc:
                problem = "; ".join(e["msg"] for e in exc.errors())
                raise UsiError(f"option {name}: {problem} (got {clip(value)!r})") from None
        else:
            self.write(f"info string warning: unknown option {clip(name)!r} ignored")
            return
        self.player = None  # rebuilt with the new options at the next isready/go
        self.search = None

    def cmd_usinewgame(self, args: list[str]) -> None:
        self.player = None  # fresh sampling seed per game
        self._ensure_player()
        if self.search is not None:
            self.search.reset()

    def cmd_position(self, args: list[str]) -> None:
        self.position = None  # stays None if anything below is wrong
        if not args:
            raise UsiError("malformed position: expected 'position startpos|sfen ... "
                           "[moves ...]'")
        if args[0] == "startpos":
            sfen, rest = STARTING_SFEN, args[1:]
        elif args[0] == "sfen":
            if len(args) < 4:
                raise UsiError(f"malformed position {' '.join(args)!r}: 'sfen' needs board, "
                               "side, hands and a move number")
            count = 4 if len(args) > 4 and args[4] != "moves" else 3
            sfen, rest = " ".join(args[1:1 + count]), args[1 + count:]
        else:
            raise UsiError(f"malformed position: expected 'startpos' or 'sfen', got "
                           f"{clip(args[0])!r}")
        if rest and rest[0] != "moves":
            raise UsiError(f"malformed position: expected 'moves' after the start, got "
                           f"{clip(rest[0])!r}")
        moves = rest[1:]
        cap = self.options.max_moves_to_draw
        if cap and len(moves) >= cap:
            # The GUI plays on past the draw cap it set (it counts differently): play on.
            self.write(f"info string {len(moves)} plies played, MaxMovesToDraw is {cap}: "
                       "playing on without the cap")
            cap = 0
        try:
            position = Position(sfen, max_moves=cap or None, impasse=self.options.impasse)
            for number, usi in enumerate(moves, start=1):
                try:
                    position.push_usi(usi)
                except ShogiError as exc:
                    raise UsiError(f"position rejected at move {number}: {exc}") from None
        except ShogiError as exc:
            raise UsiError(f"position rejected: {exc}") from None
        self.position = position

    def cmd_go(self, args: list[str]) -> None:
        received = time.monotonic()
        if args and args[0] == "mate":
            self._go_mate()
            return
        try:
            limits = GoLimits.parse(args)
        except UsiError as exc:
            self.info_error(f"{exc}; answering anyway")
            limits = GoLimits(infinite="infinite" in args, ponder="ponder" in args)
        job = GoJob(self.position, limits, received)
        job.thread = threading.Thread(target=self._work, args=(job,), name="usi-go",
                                      daemon=True)
        self._job = job
        job.thread.start()

    def cmd_stop(self, args: list[str]) -> None:
        self._stop_thinking(None)

    def cmd_ponderhit(self, args: list[str]) -> None:
        job = self._job
        if job is None or job.answered or not job.limits.ponder:
            return  # nothing pondered (the bestmove may already be out after a stop)
        with job.lock:
            job.settled.clear()
            job.hit_at = time.monotonic()
            job.ponder_end.set()

    def cmd_gameover(self, args: list[str]) -> None:
        pass  # the thinking, if any, was stopped (and answered) as for any idle command

    def cmd_quit(self, args: list[str]) -> None:
        self._stop_thinking(None)
        self.quit = True

    # ---------------------------------------------------------------- the worker
    def _stop_thinking(self, command: str | None) -> None:
        """End the pending `go`, if any: it answers with its best move so far."""
        job = self._job
        if job is None:
            return
        if command is not None and not job.answered:
            self.write(f"info string warning: {command!r} while thinking: stopping first")
        with job.lock:
            job.stop.set()
            job.ponder_end.set()
        if job.thread is not None and job.thread is not threading.current_thread():
            job.thread.join()
        self._job = None

    def _work(self, job: GoJob) -> None:
        """The worker thread: think, hold while the protocol says so, answer once."""
        try:
            try:
                answer = self._think(job)
            except BrokenPipeError:
                raise
            except Exception as exc:
                log.exception("thinking failed")
                self.info_error(f"internal error in 'go': {type(exc).__name__}: {exc}")
                answer = self._safe_move(job.position)
            if job.limits.waits:
                # `go infinite` waits for stop, `go ponder` for ponderhit or stop.
                event = job.ponder_end if job.limits.ponder else job.stop
                with job.lock:
                    if not event.is_set():
                        job.settled.set()  # holding
                event.wait()
            with job.lock:
                job.answered = True
                self.write(f"bestmove {answer}")
        except BrokenPipeError:
            log.debug("the GUI closed the pipe; the answer is dropped")
        finally:
            job.answered = True
            job.settled.set()

    def _think(self, job: GoJob) -> str:
        """The move for the job's position (USI), after its `info` lines."""
        position = job.position
        if position is None:
            self.info_error("no valid position: send 'position' first")
            return "resign"
        outcome = position.outcome()
        if outcome is not None:
            if outcome.reason is Termination.IMPASSE and outcome.winner == position.turn:
                return "win"
            if outcome.winner is not None and outcome.winner != position.turn:
                return "resign"
            # A drawn (or won) end by our rules while the GUI plays on: keep playing legally.
            self.write(f"info string the game is over by our rules ({outcome.reason.value}); "
                       "playing on")
            position = Position(position.sfen(), impasse=self.options.impasse)
            if position.is_game_over():
                return "resign"
        search = self._ensure_search()
        if search is not None:
            o = self.options
            answer = search.answer(job, position, simulations=o.simulations,
                                   margin_ms=o.network_delay_ms, ponder=o.ponder,
                                   sample=not o.greedy or position.ply < o.sample_plies)
            if answer is not None:
                return answer
            # No time to search: the raw policy at once.
        return self._play(job, position)

    def _play(self, job: GoJob, position: Position) -> str:
        """The player's move without a search: the raw policy (one forward) of a network."""
        player = self._ensure_player()
        if isinstance(player, PolicyPlayer):
            decision = player.decide([position])
            move = decision.moves[0].usi()
            elapsed = job.elapsed_ms()
            cp = value_to_cp(float(decision.values[0]))
            self.write(f"info depth 1 seldepth 1 nodes 1 nps {1000 // elapsed} time {elapsed} "
                       f"score cp {cp} pv {move}")
            return move
        choice = player.choose([position])[0]
        if isinstance(choice, Outcome):  # an engine behind us resigned or failed
            return "resign"
        return choice.usi()

    # ---------------------------------------------------------------- helpers
    def _ensure_search(self) -> EngineSearch | None:
        """The engine's tree search (with Simulations > 0 and a network), built and warmed
        up on first use: its speed then sizes the first move's budget."""
        if self.search is None and self.options.simulations > 0:
            player = self._ensure_player()
            if self._model is None or not isinstance(player, PolicyPlayer):
                return None
            o = self.options
            self.search = EngineSearch(self._model, o.search, self.write, seed=o.seed,
                                       max_moves=player.max_moves, simulations=o.simulations)
        return self.search

    def _ensure_player(self) -> Player:
        if self.player is None:
            c = self.contestant
            if self.options.max_moves_to_draw:
                # The game's cap scales the ply plane, as env.max_moves did in training.
                c = replace(c, max_moves=self.options.max_moves_to_draw)
            if c.model is not None and self._model is None:
                self._model = build_model(c.model)
                load_weights(self._model, c.weights)
                self._model.value_material = c.value_material
                self._model.eval()
            player = make_player(c, self.options.apply(self.config), model=self._model)
            if isinstance(player, PolicyPlayer):
                player.decide([Position()])  # warm-up: the first real `go` is then fast
            self.player = player
        return self.player

    def _go_mate(self) -> None:
        position = self.position
        if position is None:
            self.info_error("no valid position: send 'position' first")
            self.write("checkmate notimplemented")
            return
        mate = position.mate_in_one()
        self.write(f"checkmate {mate.usi()}" if mate is not None else "checkmate notimplemented")

    def _safe_move(self, position: Position | None) -> str:
        """A legal move of `position`, or resign: the answer after an internal error."""
        try:
            if position is not None and not position.is_game_over():
                return self._fallback.choose(position).usi()
        except ShogiError as exc:
            log.warning("no fallback move: %s", exc)
        return "resign"


_COMMANDS: dict[str, Callable[[UsiEngine, list[str]], None]] = {
    "usi": UsiEngine.cmd_usi,
    "isready": UsiEngine.cmd_isready,
    "setoption": UsiEngine.cmd_setoption,
    "usinewgame": UsiEngine.cmd_usinewgame,
    "position": UsiEngine.cmd_position,
    "go": UsiEngine.cmd_go,
    "stop": UsiEngine.cmd_stop,
    "ponderhit": UsiEngine.cmd_ponderhit,
    "gameover": UsiEngine.cmd_gameover,
    "quit": UsiEngine.cmd_quit,
}

_NEEDS_IDLE = frozenset({"setoption", "usinewgame", "position", "go", "gameover"})
"""Commands that change what the worker uses: a pending `go` is answered first."""


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "1", "on", "yes"):
        return True
    if value.lower() in ("false", "0", "off", "no"):
        return False
    raise UsiError(f"option {name} expects true or false, got {clip(value)!r}")


def _parse_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UsiError(f"option {name} expects a number, got {clip(value)!r}") from None
    if not math.isfinite(number):
        raise UsiError(f"option {name} expects a finite number, got {clip(value)!r}")
    return number


def _one_line(text: str) -> str:
    return " ".join(text.split())


def protocol_stdout() -> TextIO:
    """The USI protocol's own channel: a private duplicate of the process's file descriptor 1,
    after which descriptor 1 itself points at stderr. Native code writes to descriptor 1
    directly, past Python's sys.stdout (cshogi's mate search prints "Error! failedStep" in some
    positions), and so would a stray print: from here on all of that lands on stderr, and the
    GUI reads protocol lines only. Call once, before anything is written. When sys.stdout is
    not the process's own (captured by a test, or an embedding program's), the protocol goes
    there and descriptor 1 is left alone."""
    stream = sys.stdout
    if stream is not sys.__stdout__:
        return stream
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(private, "w", encoding="utf-8", errors="backslashreplace", newline="\n")


def serve(contestant: Contestant, *, config: Config, stdin: BinaryIO, stdout: TextIO,
          threads: int = 1) -> None:
    """Run the engine on byte lines from `stdin` (bad bytes replaced), answering on `stdout`."""

    def write(line: str) -> None:
        stdout.write(line + "\n")
        stdout.flush()

    engine = UsiEngine(contestant, write, config=config, threads=threads)
    lines = (raw.decode("utf-8", errors="replace") for raw in iter(stdin.readline, b""))
    try:
        engine.run(lines)
    except BrokenPipeError:
        log.debug("the GUI closed the pipe; engine stops")
