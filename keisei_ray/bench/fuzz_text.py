"""Fuzz targets for text input: SFEN, USI moves, the USI engine's command loop, configs."""

from __future__ import annotations

import io
import random
import re
import tempfile
from functools import cache
from pathlib import Path

import yaml
from hypothesis import strategies as st

from actors.evaluation import Contestant
from keisei_ray.arena.usi import UsiEngine, serve
from keisei_ray.bench.fuzz import (
    MAX_MESSAGE,
    _games,
    _message_ok,
)
from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import dump, load_config
from shogi import (
    STARTING_SFEN,
    IllegalMoveError,
    InvalidSfenError,
    Move,
    Position,
    validate_sfen,
)

# ----------------------------------------------------------------------------- SFEN

_SFEN_ALPHABET = "PLNSGBRKplnsgbrk+123456789/ bw-0"


def _mutate_text(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        k = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(k, len(chars) - 1)]
        elif op == 1:
            chars.insert(k, rng.choice(_SFEN_ALPHABET))
        elif op == 2 and chars:
            chars[min(k, len(chars) - 1)] = rng.choice(_SFEN_ALPHABET)
        else:
            chars = chars[:k]
    return "".join(chars)


@st.composite
def _mutated_sfen(draw: st.DrawFn) -> str:
    position = draw(_games)
    rng = random.Random(draw(st.integers(0, 2**32)))
    return _mutate_text(position.sfen(), rng)


@st.composite
def _structured_sfen(draw: st.DrawFn) -> str:
    """Board, side, hands and move number built from plausible tokens (many impossible)."""
    pieces = st.sampled_from([*"PLNSGBRKplnsgbrk", "+P", "+L", "+N", "+S", "+B", "+R", "+p",
                              "+r", "+G", "+k"])
    ranks = []
    for _ in range(draw(st.sampled_from([9, 9, 9, 8, 10]))):
        cells = draw(st.lists(st.one_of(pieces, st.none()), min_size=8, max_size=10))
        rank, empty = "", 0
        for cell in cells:
            if cell is None:
                empty += 1
                continue
            if empty:
                rank += str(empty)
                empty = 0
            rank += cell
        ranks.append(rank + (str(empty) if empty else ""))
    side = draw(st.sampled_from(["b", "w", "B", "x"]))
    hand = draw(st.lists(st.tuples(st.integers(0, 25), st.sampled_from("PLNSGBRplnsgbrK")),
                         max_size=5))
    hands = "".join(f"{n if n != 1 else ''}{p}" for n, p in hand) or "-"
    number = draw(st.sampled_from(["", "1", "0", "-3", "999999999999", "17", "0017"]))
    return " ".join(filter(None, ["/".join(ranks), side, hands, number]))


sfen_inputs = st.one_of(
    st.text(max_size=120),
    st.text(alphabet=_SFEN_ALPHABET, max_size=100),
    _mutated_sfen(),
    _structured_sfen(),
    _games.map(Position.sfen),
)


def _hand_counts(hands: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    number = ""
    for ch in "" if hands == "-" else hands:
        if ch.isdigit():
            number += ch
            continue
        counts[ch] = counts.get(ch, 0) + (int(number) if number else 1)
        number = ""
    return counts


def check_sfen(sfen: str) -> None:
    """Accepted: a legal-looking position that round-trips exactly; else InvalidSfenError."""
    try:
        normalized = validate_sfen(sfen)
    except InvalidSfenError as exc:
        _message_ok(exc)
        try:
            Position(sfen)
        except InvalidSfenError:
            return
        raise AssertionError(f"validate_sfen rejects {sfen!r} but Position accepts it") from None
    board, side, hands, number = normalized.split()
    assert board.count("K") == 1 and board.count("k") == 1, f"kings in {sfen!r}"
    rows = [re.findall(r"\+?[A-Za-z]", rank) for rank in board.split("/")]
    stuck = {0: {"P", "L", "N"}, 1: {"N"}, 7: {"n"}, 8: {"p", "l", "n"}}
    for r, kinds in stuck.items():
        assert not kinds & set(rows[r]), f"a piece that can never move in {sfen!r}"
    position = Position(sfen)
    again = position.sfen().split()
    assert again[0] == board and again[1] == side and again[3] == number, \
        f"{sfen!r} reads back as {position.sfen()!r}"
    assert _hand_counts(again[2]) == _hand_counts(hands), f"hands of {sfen!r}"
    assert Position(position.sfen()).sfen() == position.sfen()
    assert len(position.legal_moves()) >= 0


# ----------------------------------------------------------------------------- USI moves

_USI_ALPHABET = "123456789abcdefghijPLNSGBRK*+0 "

usi_move_inputs = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=_USI_ALPHABET, min_size=1, max_size=7),
    st.from_regex(r"[0-9][a-j][0-9][a-j]\+?|[PLNSGBRK]\*[0-9][a-j]", fullmatch=True),
    st.tuples(_games, st.integers(0, 2**16)),
)


def check_usi_move(case: str | tuple[Position, int]) -> None:
    """Text: parses to a Move whose USI is the text, or IllegalMoveError. A (position, k):
    its k-th legal move round-trips through USI and pushes, the rest of the text is refused."""
    if isinstance(case, tuple):
        position, k = case
        legal = position.legal_moves()
        if not legal:
            return
        move = legal[k % len(legal)]
        parsed = Move.from_usi(move.usi())
        assert parsed == move and parsed.usi() == move.usi()
        copy = position.copy()
        assert copy.push_usi(move.usi()) == move
        return
    try:
        move = Move.from_usi(case)
    except IllegalMoveError as exc:
        _message_ok(exc)
        return
    assert move.usi() == case, f"{case!r} parsed as {move.usi()!r}"


# ----------------------------------------------------------------------------- USI engine

_COMMAND_WORDS = ["usi", "isready", "setoption", "usinewgame", "position", "go", "stop",
                  "ponderhit", "gameover", "quit", "startpos", "sfen", "moves", "name", "value",
                  "infinite", "ponder", "btime", "byoyomi", "mate", "Greedy", "Temperature",
                  "Seed", "Impasse", "Threads", "true", "false", "0", "-1", "nan", "1e400",
                  "7g7f", "3c3d", "8h2b+", "P*5e", "win", "lose"]


@st.composite
def _position_line(draw: st.DrawFn) -> str:
    """`position` with legal moves, an illegal or malformed one possibly inserted midway."""
    position = draw(_games)
    moves = [m.usi() for m in position.moves]
    if len(moves) > 0 and draw(st.booleans()):
        k = draw(st.integers(0, len(moves) - 1))
        moves[k] = draw(st.sampled_from(["7g7f", "5a5b", "P*1a", "xx", "1a1a", "9i9a+",
                                         "K*5e", ""]))
    head = draw(st.sampled_from(["position startpos moves", "position startpos",
                                 "position sfen " + STARTING_SFEN + " moves",
                                 "position sfen " + STARTING_SFEN.rsplit(" ", 1)[0] + " moves",
                                 "position moves", "position sfen"]))
    line = " ".join([head, *moves])
    if draw(st.booleans()):
        line = line[:draw(st.integers(0, len(line)))]  # truncated
    return line


_usi_line = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(_COMMAND_WORDS), min_size=1, max_size=8).map(" ".join),
    _position_line(),
    st.sampled_from(["go", "go btime 1000 wtime 1000 byoyomi 100", "go infinite", "stop",
                     "go mate 1000", "go ponder", "ponderhit", "isready", "usinewgame",
                     "setoption name Impasse value true", "setoption name Temperature value 0",
                     "gameover win"]),
    st.integers(1, 200_000).map(lambda n: "position startpos moves " + "7g7f " * (n // 5)),
    st.binary(max_size=80).map(lambda b: b.decode("utf-8", errors="replace")),
)

usi_session_inputs = st.lists(_usi_line, min_size=1, max_size=12)


@cache
def _baseline_contestant() -> Contestant:
    return Contestant.baseline("random")


def check_usi_session(lines: list[str]) -> None:
    """The engine answers every line without raising; each `go` gets exactly one legal
    `bestmove` (or resign/win): at once, or for `go infinite`/`go ponder` at the `stop`,
    `ponderhit` or command needing the engine idle that ends it; output is one ASCII line
    each, bounded in length, and no command ends in a contained internal error."""
    out: list[str] = []
    engine = UsiEngine(_baseline_contestant(), out.append, config=Config())
    pondering = False  # the pending `go` is a `go ponder`
    for line in lines:
        before = len(out)
        pending = engine.thinking
        engine.handle(line)
        assert engine.wait(60), f"{line[:80]!r}: no answer within 60 s"
        answer = out[before:]
        for text in answer:
            assert "\n" not in text and text.isascii(), f"bad output line {text[:80]!r}"
            assert len(text) <= MAX_MESSAGE, f"output line of {len(text)} chars"
            assert "internal error" not in text, f"{line[:80]!r} -> {text[:200]!r}"
        words = line.split()
        command = words[0] if words else ""
        best = [t for t in answer if t.startswith("bestmove")]
        expected = 0
        if pending and (command in _ENDS_THINKING or (command == "ponderhit" and pondering)):
            expected += 1  # the pending go's answer
        new_go = command == "go" and words[1:2] != ["mate"]
        waits = "infinite" in words or "ponder" in words
        if new_go and not waits:
            expected += 1
        assert len(best) == expected, f"{line[:80]!r} -> {answer}"
        if new_go and not waits:
            move = best[-1].split()[1]
            if move not in ("resign", "win"):
                assert engine.position is not None
                assert move in {m.usi() for m in engine.position.legal_moves()}, \
                    f"illegal bestmove {move} in {engine.position.sfen()}"
        pondering = ("ponder" in words) if new_go else (pondering and engine.thinking)
        if engine.quit:
            break
    engine.close()


_ENDS_THINKING = ("stop", "quit", "gameover", "setoption", "usinewgame", "position", "go")
"""Commands that answer a pending `go` (the engine's worker must be idle for them)."""


usi_stream_inputs = st.lists(st.binary(max_size=200), max_size=6).map(
    lambda chunks: b"\n".join(chunks) + b"\nisready\ngo\nquit\n")


def check_usi_stream(data: bytes) -> None:
    """`serve` on raw bytes (invalid UTF-8, NULs, no newline): no exception, ASCII out."""
    stdout = io.StringIO()
    serve(_baseline_contestant(), config=Config(), stdin=io.BytesIO(data), stdout=stdout)
    text = stdout.getvalue()
    assert text.isascii()
    assert "readyok" in text or "quit" in data.split(b"\n")[0].decode("utf-8", "replace")


# ----------------------------------------------------------------------------- config

_CONFIG_KEYS = ["env", "model", "ppo", "train", "evaluation", "checkpoint", "wandb", "cluster",
                "max_moves", "size", "seed", "impasse", "learning_rate", "blocks", "channels",
                "num_workers", "games", "interval_timesteps", "keep", "x", "", "env.seed"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True), st.text(max_size=20),
                     st.sampled_from(["tiny", "small", "27", "off", "relative", "1e-3"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(_CONFIG_KEYS), inner, max_size=4)), max_leaves=12)
_config_dicts = st.dictionaries(st.sampled_from(_CONFIG_KEYS), _values, max_size=5)


def _bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [x, y]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + f"\nenv:\n  max_moves: *a{levels - 1}\n"


_yaml_texts = st.one_of(
    st.text(max_size=200),
    _config_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.builds(_bomb, st.integers(2, 12), st.integers(2, 10)),
    st.integers(10, 3_000).map(lambda n: "env: " + "[" * n + "]" * n),
    st.integers(10, 3_000).map(lambda n: "env: " + "{a: " * n + "1" + "}" * n),
    st.integers(10, 2_000).map(lambda n: "".join(f"{' ' * i}k{i}:\n" for i in range(n))),
    st.binary(max_size=100).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["!!python/object/apply:os.system ['true']", "--- !!binary AAAA",
                     "env: !!python/name:os.system", "\x00\xff", "a: b: c", "- 1\n- 2",
                     "env: {max_moves: 1e999}", "model: {size: tiny}\nmodel: {size: large}"]),
)
_override = st.one_of(
    st.text(max_size=40),
    st.tuples(st.lists(st.sampled_from(_CONFIG_KEYS), min_size=1, max_size=4).map(".".join),
              st.one_of(st.text(max_size=20), _scalars.map(str),
                        st.integers(10, 3_000).map(lambda n: "[" * n))).map("=".join),
)
config_inputs = st.tuples(_yaml_texts, st.lists(_override, max_size=3),
                          st.sampled_from([None, None, "local", "smoke", "nope"]))


def check_config(case: tuple[str, list[str], str | None]) -> None:
    """A YAML file + overrides + preset load to a Config that round-trips, or ConfigError."""
    text, overrides, preset = case
    with tempfile.TemporaryDirectory(prefix="keisei-fuzz-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        try:
            config = load_config(path, overrides, preset=preset)
        except ConfigError as exc:
            _message_ok(exc)
            return
        again = Path(tmp) / "again.yaml"
        again.write_text(dump(config), encoding="utf-8")
        assert load_config(again) == config, "the dumped config does not load back equal"


