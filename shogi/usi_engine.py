"""External USI engines as players: a USI *client* that drives an engine subprocess.

An engine is named by a spec string, `usi:COMMAND[,key=value]...`:

- COMMAND is the engine's program (split like a shell line, so it may carry arguments);
- `depth=N`, `nodes=N`, `movetime=MS` or `byoyomi=MS` is the search limit sent with every `go`
  (default `depth=1`; prefer depth or nodes: they do not depend on the machine's load).
  `byoyomi=MS` sends `go btime 0 wtime 0 byoyomi MS`, the one form every USI engine must
  understand: GPSShogi (`gpsusi`) knows no other and aborts (SIGABRT, "unknown option in go
  depth") on `go depth`, `go nodes` or `go movetime`. Its strength is set by its option
  `LimitDepth` instead, with a byoyomi long enough never to cut the search (`GPS_ALIASES`);
- `timeout=S` is the wall-clock safety net per move in seconds (default 10, plus the time
  limit for `movetime`/`byoyomi`): an engine that has not answered by then is sent `stop`
  and its answer taken; one still silent `STOP_GRACE_S` later is killed and loses the game
  (`Termination.ENGINE_TIMEOUT`: a rating leaves such games out, see
  `keisei_ray.arena.gauntlet`);
- `name=TEXT` is the player's display name (default: the spec itself);
- `random=P` (0 <= P < 1) plays a uniformly random legal move instead of asking the engine on
  that share of moves: a load-independent way to weaken an engine whose weakest setting is
  still too strong (the gauntlet's bridge below GPSShogi at depth 4), as the `mix` players
  weaken the heuristic. Unseeded, like an engine's own randomness;
- any other key is an engine option, sent as `setoption name KEY value VALUE`. Keys and values
  are URL-decoded, so `+` is a space: `Skill+Level=-20` sets the option `Skill Level`.

Commas and `+` need no shell quoting and no YAML quoting, e.g.
`usi:/usr/games/fairy-stockfish,depth=1,Skill+Level=-20`. `ENGINE_ALIASES` gives the gauntlet's
engines short names (`sf-d1`, ...).

One engine process serves a player; the positions of a batch are asked one after the other
(each `position` command carries the game's whole move list, so games never mix). The process
starts lazily, is killed on `close()`, and after any failure is restarted for the next move.
A failure of an engine that has played becomes the end of that game, lost by the engine
(`Termination.ENGINE_CRASH`, `ENGINE_TIMEOUT`, `ILLEGAL_MOVE`, `MALFORMED_MOVE` for an
answer that is no move at all, after which the process is restarted); `bestmove resign` is
`Termination.RESIGN`; `bestmove win` is judged by our 27-point rule (a false declaration is an
illegal move). An engine that exits `SETUP_FAILURES` times in a row without ever answering a
`go` cannot play at all (a wrong command, a limit it does not know): `choose` raises
`EngineSetupError` instead of losing every game. Timeouts never count toward that: on a loaded
machine a slow start (GPSShogi reads 100 MB of tables) is not a broken engine. The engine's
stderr is kept (its last lines) and quoted in every failure message, with the signal that
ended it.
"""

from __future__ import annotations

import logging
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import cshogi
import numpy as np

from shogi.errors import ShogiError
from shogi.moves import Move
from shogi.position import Position, impasse_declaration_wins
from shogi.rules import Outcome, Termination
from shogi.sfen import STARTING_SFEN

log = logging.getLogger(__name__)

PREFIX = "usi:"
FAIRY_STOCKFISH = "/usr/games/fairy-stockfish"
INSTALL_HINT = "apt-get install fairy-stockfish gpsshogi"
STOP_GRACE_S = 2.0
"""Seconds an engine past its safety net gets to answer `stop` before it is killed."""

ENGINE_ALIASES: dict[str, str] = {
    # Fairy-Stockfish 11.1 (shogi is its default variant), limited by depth, weakened by skill.
    "sf-skill-20": f"usi:{FAIRY_STOCKFISH},depth=1,Skill+Level=-20,name=sf-skill-20",
    "sf-skill-5": f"usi:{FAIRY_STOCKFISH},depth=1,Skill+Level=-5,name=sf-skill-5",
    # Skill -4 at depth 1 is barely above mate; at depth 2 it sits between mate and skill -3
    # (17-3 and 5-15 in a 20-game probe), which otherwise beat mate every game.
    "sf-skill-4-d2": f"usi:{FAIRY_STOCKFISH},depth=2,Skill+Level=-4,name=sf-skill-4-d2",
    "sf-skill-3": f"usi:{FAIRY_STOCKFISH},depth=1,Skill+Level=-3,name=sf-skill-3",
    # Skill -2 bridges -3 and 0, which beat -3 in all of 20 games from random openings
    # (-2: 15-5 against -3, 8-12 against 0).
    "sf-skill-2": f"usi:{FAIRY_STOCKFISH},depth=1,Skill+Level=-2,name=sf-skill-2",
    "sf-skill0": f"usi:{FAIRY_STOCKFISH},depth=1,Skill+Level=0,name=sf-skill0",
    "sf-d1": f"usi:{FAIRY_STOCKFISH},depth=1,name=sf-d1",
    "sf-d2": f"usi:{FAIRY_STOCKFISH},depth=2,name=sf-d2",
    "sf-d4": f"usi:{FAIRY_STOCKFISH},depth=4,name=sf-d4",
    "sf-d6": f"usi:{FAIRY_STOCKFISH},depth=6,name=sf-d6",
}
"""Short names of engine players (the gauntlet's rungs): name -> spec."""

GPSSHOGI = "/usr/games/gpsusi"
GPS_ALIASES: dict[str, str] = {
    # GPSShogi (Debian's gpsshogi) at a fixed search depth (its `LimitDepth`, 4..10). It knows
    # only time-based `go`, so a long byoyomi with a matching timeout lets LimitDepth alone end
    # the search (load-independent strength); one search thread, and no opening book, whose
    # fixed replies would repeat the same few games.
    f"gps-d{depth}": (f"usi:{GPSSHOGI},byoyomi=600000,timeout=900,LimitDepth={depth},"
                      f"BookDepth=0,Thread=1,name=gps-d{depth}")
    for depth in (4, 5, 6, 7, 8)
}
# Depth 4 is GPSShogi's weakest and beat Fairy-Stockfish at depth 6 (10-0) and depth 8 (6-0):
# one move in ten played at random puts it between (5-1 against sf-d6 in a probe, and 0-10
# against gps-d4), one in twenty between that and gps-d4.
GPS_ALIASES.update({f"gps-d4-r{share:02d}": GPS_ALIASES["gps-d4"].replace(
    ",name=gps-d4", f",random={share / 100},name=gps-d4-r{share:02d}") for share in (5, 10)})
ENGINE_ALIASES.update(GPS_ALIASES)

_LIMITS = ("depth", "nodes", "movetime", "byoyomi")
_TIME_LIMITS = ("movetime", "byoyomi")  # milliseconds of the engine's clock
STARTUP_TIMEOUT_S = 60.0
"""The least wait for `usiok` / `readyok` (an engine's own `timeout` if longer): a start under
heavy load took over 20 s."""
SETUP_FAILURES = 3
"""Exits in a row, without a single answered `go`, after which an engine cannot play."""
STDERR_LINES = 20
"""The last lines of an engine's stderr kept for failure messages."""


class EngineSpecError(ValueError):
    """A malformed `usi:` spec (the message quotes the part that is wrong)."""


class EngineFailure(RuntimeError):
    """The engine crashed, hung, answered no move or could not be started; `reason` is the
    Termination."""

    def __init__(self, reason: Termination, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EngineSetupError(RuntimeError):
    """An engine failed again and again without ever answering a `go`: it cannot play as
    configured (the message quotes its last failure and stderr)."""


def is_engine_spec(spec: str) -> bool:
    return spec.startswith(PREFIX) or spec in ENGINE_ALIASES


@dataclass(frozen=True)
class EngineSpec:
    """A parsed `usi:` spec (see the module docstring)."""

    command: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()
    limit: tuple[str, int] = ("depth", 1)
    timeout_s: float = 10.0
    name: str = ""
    random_share: float = 0.0

    @property
    def go(self) -> str:
        """The `go` command of every move."""
        kind, number = self.limit
        if kind == "byoyomi":
            return f"go btime 0 wtime 0 byoyomi {number}"
        return f"go {kind} {number}"

    @classmethod
    def parse(cls, spec: str) -> EngineSpec:
        text = ENGINE_ALIASES.get(spec, spec)
        if not text.startswith(PREFIX):
            raise EngineSpecError(f"engine spec {spec!r} must start with {PREFIX!r} or be one "
                                  f"of {', '.join(ENGINE_ALIASES)}")
        head, *parts = text[len(PREFIX):].split(",")
        try:
            command = tuple(shlex.split(unquote_plus(head)))
        except ValueError as exc:
            raise EngineSpecError(f"engine spec {spec!r}: bad command ({exc})") from None
        if not command:
            raise EngineSpecError(f"engine spec {spec!r} names no command")
        options: list[tuple[str, str]] = []
        limit: tuple[str, int] | None = None
        timeout_s: float | None = None
        random_share = 0.0
        name = spec
        for part in parts:
            key, sep, value = part.partition("=")
            key, value = unquote_plus(key).strip(), unquote_plus(value).strip()
            if not sep or not key:
                raise EngineSpecError(f"engine spec {spec!r}: expected key=value, got {part!r}")
            if key in _LIMITS:
                if limit is not None:
                    raise EngineSpecError(f"engine spec {spec!r}: give one of "
                                          f"{'/'.join(_LIMITS)}, not two")
                try:
                    number = int(value)
                except ValueError:
                    number = 0
                if number < 1:
                    raise EngineSpecError(f"engine spec {spec!r}: {key} must be a positive "
                                          f"integer, got {value!r}")
                limit = (key, number)
            elif key == "timeout":
                try:
                    timeout_s = float(value)
                except ValueError:
                    timeout_s = 0.0
                if not timeout_s > 0:
                    raise EngineSpecError(f"engine spec {spec!r}: timeout must be a positive "
                                          f"number of seconds, got {value!r}")
            elif key == "name":
                name = value
            elif key == "random":
                try:
                    random_share = float(value)
                except ValueError:
                    random_share = -1.0
                if not 0.0 <= random_share < 1.0:
                    raise EngineSpecError(f"engine spec {spec!r}: random must be a share in "
                                          f"[0, 1), got {value!r}")
            else:
                options.append((key, value))
        limit = limit or ("depth", 1)
        clock_s = limit[1] / 1000.0 if limit[0] in _TIME_LIMITS else 0.0
        if timeout_s is None:
            timeout_s = 10.0 + clock_s
        elif timeout_s <= clock_s:
            raise EngineSpecError(f"engine spec {spec!r}: timeout {timeout_s:g} s must exceed "
                                  f"the {limit[0]} of {clock_s:g} s")
        return cls(command, tuple(options), limit, timeout_s, name, random_share)

    def available(self) -> bool:
        """Whether the engine's program exists (on PATH or as a path)."""
        import shutil  # noqa: PLC0415

        return shutil.which(self.command[0]) is not None


@dataclass
class EngineProcess:
    """One running engine: lines in through stdin, lines out read by a thread into a queue."""

    spec: EngineSpec
    _proc: subprocess.Popen[str] | None = None
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.close()
        try:
            proc = subprocess.Popen(
                list(self.spec.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, bufsize=1, encoding="utf-8",
                errors="replace")
        except OSError as exc:
            raise EngineFailure(Termination.ENGINE_CRASH,
                                f"engine {self.spec.name}: cannot start "
                                f"{self.spec.command[0]!r} ({exc}); install it with "
                                f"`{INSTALL_HINT}`") from None
        self._proc = proc
        self._lines = queue.Queue()
        self._stderr = deque(maxlen=STDERR_LINES)
        threading.Thread(target=_pump, args=(proc, self._lines), daemon=True,
                         name=f"usi-{self.spec.name}").start()
        # An engine's stderr is read too: a full pipe would block it, and its last words say
        # why it died ("unknown option in go depth").
        threading.Thread(target=_keep_tail, args=(proc, self._stderr), daemon=True,
                         name=f"usi-{self.spec.name}-stderr").start()
        startup_s = max(STARTUP_TIMEOUT_S, self.spec.timeout_s)
        self.send("usi")
        self.wait_for("usiok", startup_s)
        for key, value in self.spec.options:
            self.send(f"setoption name {key} value {value}")
        self.send("isready")
        self.wait_for("readyok", startup_s)
        self.send("usinewgame")

    def send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise EngineFailure(Termination.ENGINE_CRASH, f"engine {self.spec.name}: not running")
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise EngineFailure(Termination.ENGINE_CRASH,
                                f"engine {self.spec.name} died (writing {line!r}: {exc})"
                                f"{self.last_words()}") from None

    def wait_for(self, word: str, timeout_s: float) -> str:
        """The first line starting with `word` (others are skipped), within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineFailure(Termination.ENGINE_TIMEOUT,
                                    f"engine {self.spec.name}: no {word!r} within {timeout_s:g} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self._proc.wait() if self._proc is not None else None
                raise EngineFailure(Termination.ENGINE_CRASH,
                                    f"engine {self.spec.name} exited ({describe_exit(code)}) "
                                    f"while we waited for {word!r}{self.last_words()}")
            if line.split(maxsplit=1)[:1] == [word]:
                return line

    def best_move(self, start_sfen: str, moves: Sequence[str]) -> str:
        """The engine's answer for a position: a well-formed USI move, `resign` or `win`."""
        self.send(position_command(start_sfen, moves))
        self.send(self.spec.go)
        try:
            line = self.wait_for("bestmove", self.spec.timeout_s)
        except EngineFailure as exc:
            if exc.reason is not Termination.ENGINE_TIMEOUT:
                raise
            # Fairy-Stockfish's depth-1 search does not end by itself in some lost positions
            # (docs/evaluation.md): stop it and take its move, as a GUI does.
            self.send("stop")
            try:
                line = self.wait_for("bestmove", STOP_GRACE_S)
            except EngineFailure:
                raise exc from None
            log.warning("engine %s: no bestmove within %g s; it answered %s on `stop`",
                        self.spec.name, self.spec.timeout_s, line)
        words = line.split()
        if len(words) < 2:
            raise EngineFailure(Termination.MALFORMED_MOVE,
                                f"engine {self.spec.name}: empty bestmove")
        if words[1] not in ("resign", "win"):
            try:
                Move.from_usi(words[1])
            except ShogiError:
                # A broken protocol, like a crash (it may be about to crash): a failure.
                raise EngineFailure(Termination.MALFORMED_MOVE,
                                    f"engine {self.spec.name}: malformed bestmove "
                                    f"{words[1]!r}") from None
        return words[1]

    def last_words(self) -> str:
        """The engine's last stderr lines, for a failure message ('' when it said nothing)."""
        # The reader thread may still be draining the pipe of a process that just died.
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            time.sleep(0.05)
        lines = [line for line in list(self._stderr) if line]
        return f"; its stderr ends: {' | '.join(lines[-5:])}" if lines else ""

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                log.debug("engine %s: stdin already closed", self.spec.name)


def position_command(start_sfen: str, moves: Sequence[str]) -> str:
    """The USI `position` command of a game: its start and its whole move list."""
    start = "startpos" if start_sfen == STARTING_SFEN else f"sfen {start_sfen}"
    return f"position {start}" + (" moves " + " ".join(moves) if moves else "")


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.strip())
    lines.put(None)


def _keep_tail(proc: subprocess.Popen[str], tail: deque[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        tail.append(line.strip())


def describe_exit(code: int | None) -> str:
    """An exit status in words: 'code 3', or 'killed by SIGABRT' for a signal."""
    if code is None:
        return "code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"code {code}"


class EnginePlayer:
    """A USI engine choosing one move per position; failures end that game (module docstring).

    `choose` returns, per position, a legal Move or the Outcome that ends the game there.
    `failures` counts the games lost by crash, hang or illegal answer.
    """

    def __init__(self, spec: EngineSpec | str, name: str | None = None) -> None:
        self.spec = spec if isinstance(spec, EngineSpec) else EngineSpec.parse(spec)
        self.name = name or self.spec.name
        self.process = EngineProcess(self.spec)
        self.failures: dict[str, int] = {}
        self.answered = 0  # `go` commands answered with a move, resign or win
        self.rng = np.random.default_rng()
        self._failing = 0  # failures in a row before the first answer

    def choose(self, positions: Sequence[Position]) -> list[Move | Outcome]:
        return [self.choose_one(p) for p in positions]

    def choose_one(self, position: Position) -> Move | Outcome:
        if self.spec.random_share and self.rng.random() < self.spec.random_share:
            moves = position.legal_moves()
            return moves[int(self.rng.integers(len(moves)))]
        me = position.turn
        loss = me.opponent()
        try:
            if not self.process.running:
                self.process.start()
            answer = self.process.best_move(position.start_sfen,
                                            [m.usi() for m in position.moves])
        except EngineFailure as exc:
            self.process.close()
            self.failures[exc.reason.value] = self.failures.get(exc.reason.value, 0) + 1
            if not self.answered and exc.reason is Termination.ENGINE_CRASH:
                self._failing += 1
                if self._failing >= SETUP_FAILURES:
                    raise EngineSetupError(
                        f"engine {self.name} failed {self._failing} times in a row without "
                        f"answering a single move, so it cannot play as configured ({exc}; "
                        f"spec {self.spec.command[0]!r} with {self.spec.go!r})") from None
            # The whole position command, so that a rare hang can be replayed by hand
            # (`usi`, the spec's options, this line, the spec's `go`).
            log.warning("%s; the engine loses this game and restarts (it was asked: %s)", exc,
                        position_command(position.start_sfen, [m.usi() for m in position.moves]))
            return Outcome(loss, exc.reason)
        self.answered += 1
        if answer == "resign":
            return Outcome(loss, Termination.RESIGN)
        if answer == "win":
            if impasse_declaration_wins(cshogi.Board(position.sfen())):
                return Outcome(me, Termination.IMPASSE)
            return self._illegal(position, "a false impasse declaration ('bestmove win')")
        move = Move.from_usi(answer)  # well-formed: best_move checked it
        legal = {m.usi(): m for m in position.legal_moves()}
        if move.usi() not in legal:
            return self._illegal(position, f"the illegal move {answer!r}")
        return legal[move.usi()]

    def _illegal(self, position: Position, what: str) -> Outcome:
        log.warning("engine %s answered %s in %r; it loses this game", self.name, what,
                    position.sfen())
        key = Termination.ILLEGAL_MOVE.value
        self.failures[key] = self.failures.get(key, 0) + 1
        return Outcome(position.turn.opponent(), Termination.ILLEGAL_MOVE)

    def close(self) -> None:
        self.process.close()
