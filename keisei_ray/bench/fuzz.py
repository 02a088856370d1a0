"""Property-based fuzz targets for every parser and decoder that faces foreign input.

Each `Target` pairs a Hypothesis strategy (random, truncated, mutated and hostile inputs) with
a `check` that runs the parser on one case and asserts the contract: the input either parses
to a correct result (round-trips where one exists) or raises the owning module's own error,
with a bounded one-line-able message; never another exception, a hang, an allocation beyond
the stated bound, or silently wrong data. `tests/test_fuzz_*.py` run the targets with a small
`max_examples`; `keisei-ray bench fuzz --seconds N` runs them for a time budget each
(`run_target`). Hypothesis is a dev extra: importing this module without it raises
ImportError, which the CLI turns into a clear error.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import random
import re
import shutil
import struct
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import cshogi
import cshogi.CSA
import cshogi.KIF
import lz4.block
import msgpack
import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from actors.evaluation import Contestant
from keisei_ray.arena.usi import UsiEngine, serve
from keisei_ray.bench.learner import collect_experience
from keisei_ray.codec import FORMAT_VERSION, CodecError, ExperienceBatch, decode, encode
from keisei_ray.config import Config, ConfigError, ModelConfig, dump, load_config
from keisei_ray.store.checkpoint import (
    MANIFEST,
    CheckpointError,
    RunSnapshot,
    read_checkpoint,
    read_model_state,
    write_checkpoint,
)
from keisei_ray.store.model_file import ModelFileError, load_model, save_model
from learner.model import build_model, export_weights
from shogi import (
    NUM_ACTIONS,
    STARTING_SFEN,
    CompactState,
    IllegalMoveError,
    InvalidSfenError,
    Move,
    Position,
    RandomPlayer,
    validate_sfen,
)

MAX_MESSAGE = 2_000
"""Longest error message a parser may produce (it is one CLI line; input is quoted clipped)."""
MAX_DECODE_ALLOC = 64 << 20
"""Most bytes `decode` may allocate for one hostile input of a few KB."""

# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One fuzz target: what to generate and what must hold for every generated case."""

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    doc: str = ""


@dataclass
class TargetReport:
    name: str
    cases: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


def _message_ok(exc: BaseException) -> None:
    text = str(exc)
    assert text, f"{type(exc).__name__} without a message"
    assert len(text) <= MAX_MESSAGE, f"{type(exc).__name__} message of {len(text)} chars"


# ----------------------------------------------------------------------------- games


def random_game(seed: int, plies: int, sfen: str | None = None) -> Position:
    """A position after up to `plies` random legal moves (fewer if the game ends)."""
    position = Position(sfen)
    player = RandomPlayer(seed)
    for _ in range(plies):
        if position.is_game_over():
            break
        position.push(player.choose(position))
    return position


_games = st.builds(random_game, st.integers(0, 2**31 - 1), st.integers(0, 120))

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
    `bestmove` (or resign/win), output is one ASCII line each, bounded in length, and no
    command ends in a contained internal error."""
    out: list[str] = []
    engine = UsiEngine(_baseline_contestant(), out.append, config=Config())
    for line in lines:
        before = len(out)
        held_before = engine.held
        engine.handle(line)
        answer = out[before:]
        for text in answer:
            assert "\n" not in text and text.isascii(), f"bad output line {text[:80]!r}"
            assert len(text) <= MAX_MESSAGE, f"output line of {len(text)} chars"
            assert "internal error" not in text, f"{line[:80]!r} -> {text[:200]!r}"
        words = line.split()
        best = [t for t in answer if t.startswith("bestmove")]
        if words[:1] == ["go"] and words[1:2] != ["mate"] and not (
                "infinite" in words or "ponder" in words):
            assert len(best) == 1, f"{line[:80]!r} -> {answer}"
            move = best[0].split()[1]
            if move not in ("resign", "win"):
                assert engine.position is not None
                assert move in {m.usi() for m in engine.position.legal_moves()}, \
                    f"illegal bestmove {move} in {engine.position.sfen()}"
        elif words[:1] in (["stop"], ["ponderhit"]):
            assert len(best) == (1 if held_before else 0), f"{line[:80]!r} -> {answer}"
        else:
            assert not best, f"{line[:80]!r} -> {answer}"
        if engine.quit:
            break


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


# ----------------------------------------------------------------------------- codec


@cache
def _valid_encodings() -> tuple[bytes, ...]:
    return tuple(encode(collect_experience(2, steps, seed=seed))
                 for seed, steps in ((0, 3), (1, 6), (2, 1)))


def _with_header(body_raw: bytes, version: int = FORMAT_VERSION,
                 raw_size: int | None = None) -> bytes:
    body = struct.pack("<I", len(body_raw) if raw_size is None else raw_size) + \
        lz4.block.compress(body_raw, store_size=False)
    return struct.pack("<BI", version, zlib.crc32(body)) + body


def _tamper_message(message: dict[str, Any], rng: random.Random) -> None:
    """Change one field of a decoded batch message to a hostile value."""
    choice = rng.randrange(7)
    arrays = message["arrays"]
    name = rng.choice(sorted(arrays))
    if choice == 0:
        message[rng.choice(["n", "m", "g", "policy_version", "worker_id"])] = rng.choice(
            [-1, 2**63, 2**64 - 1, 2**40, 0, 1, "3", 1.5, None])
    elif choice == 1:
        arrays[name][0] = rng.choice(["<i8", "|O", "<f2", "|u1", ">i2", "<U4", 7])
    elif choice == 2:
        arrays[name][1] = rng.choice([[2**40, 81], [-1], [], [0], [2**62, 2**62], "x"])
    elif choice == 3:
        data = arrays[name][2]
        arrays[name][2] = data[:rng.randrange(len(data) + 1)] if data else b"\x00"
    elif choice == 4:
        data = bytearray(arrays[name][2])
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)  # values out of range
        arrays[name][2] = bytes(data)
    elif choice == 5:
        huge = 2**40
        message.update(n=huge, m=huge, g=huge)
        for key, (dtype, shape) in {"board": ("|i1", [huge, 81])}.items():
            arrays[key][:2] = [dtype, shape]
    else:
        del arrays[name]


@st.composite
def _codec_case(draw: st.DrawFn) -> bytes:
    valid = draw(st.sampled_from(_valid_encodings()))
    kind = draw(st.integers(0, 7))
    rng = random.Random(draw(st.integers(0, 2**32)))
    if kind == 0:  # truncation
        return valid[:draw(st.integers(0, len(valid) - 1))]
    if kind == 1:  # bit flips
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 3))):
            k = rng.randrange(len(data))
            data[k] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:  # wrong version, checksum kept right
        body = valid[5:]
        return struct.pack("<BI", draw(st.integers(0, 255)), zlib.crc32(body)) + body
    if kind == 3:  # lz4 garbage behind a valid checksum, claiming any size
        garbage = draw(st.binary(max_size=300))
        body = struct.pack("<I", draw(st.integers(0, 2**32 - 1))) + garbage
        return struct.pack("<BI", FORMAT_VERSION, zlib.crc32(body)) + body
    if kind == 4:  # msgpack garbage, well compressed
        return _with_header(draw(st.binary(max_size=300)))
    if kind == 5:  # a valid message with one field made hostile
        raw = lz4.block.decompress(valid[9:], uncompressed_size=struct.unpack_from("<I", valid,
                                                                                   5)[0])
        message = msgpack.unpackb(raw, raw=False)
        _tamper_message(message, rng)
        return _with_header(msgpack.packb(message, use_bin_type=True))
    if kind == 6:  # absurd claimed sizes
        raw = lz4.block.decompress(valid[9:], uncompressed_size=struct.unpack_from("<I", valid,
                                                                                   5)[0])
        return _with_header(raw, raw_size=draw(st.sampled_from([2**32 - 1, 255 << 20, 2**31,
                                                                len(raw) * 300, 0])))
    return draw(st.binary(max_size=200))


codec_inputs = _codec_case()


def check_codec(data: bytes) -> None:
    """decode: CodecError or a batch that re-encodes to the same bytes; allocation bounded."""
    tracemalloc.start()
    try:
        try:
            batch = decode(data)
        except CodecError as exc:
            _message_ok(exc)
            batch = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= MAX_DECODE_ALLOC, f"decode of {len(data)} bytes allocated {peak} bytes"
    if batch is not None:
        assert decode(encode(batch)).state.equals(batch.state)
        _assert_batches_equal(decode(encode(batch)), batch)


def _assert_batches_equal(a: ExperienceBatch, b: ExperienceBatch) -> None:
    assert a.state.equals(b.state)
    for name in ("action", "log_prob", "value", "advantage", "returns", "legal_offsets",
                 "legal_actions", "game_results", "game_lengths", "game_reasons"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.policy_version, a.worker_id) == (b.policy_version, b.worker_id)


@st.composite
def _batches(draw: st.DrawFn) -> ExperienceBatch:
    """A structurally valid batch with arbitrary in-range values (states from real games)."""
    positions = draw(st.lists(_games, min_size=0, max_size=4))
    state = CompactState.concat([p.compact() for p in positions])
    n = len(state)
    rows = [sorted(draw(st.sets(st.integers(0, NUM_ACTIONS - 1), min_size=1, max_size=20)))
            for _ in range(n)]
    actions = [draw(st.sampled_from(row)) for row in rows]
    finite = st.floats(-1e6, 1e6, width=32)
    g = draw(st.integers(0, 3))
    return ExperienceBatch(
        state=state,
        action=np.array(actions, dtype=np.int16),
        log_prob=np.array(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float32),
        value=np.array(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float32),
        advantage=np.array(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float32),
        returns=np.array(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float32),
        legal_offsets=np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32),
        legal_actions=np.array([a for r in rows for a in r], dtype=np.int16),
        policy_version=draw(st.integers(0, 2**63 - 1)),
        worker_id=draw(st.integers(0, 2**20)),
        game_results=np.array(draw(st.lists(st.integers(-1, 1), min_size=g, max_size=g)),
                              dtype=np.int8),
        game_lengths=np.array(draw(st.lists(st.integers(0, 2**31 - 1), min_size=g, max_size=g)),
                              dtype=np.int32),
        game_reasons=np.zeros(g, dtype=np.uint8),
    )


codec_roundtrip_inputs = _batches()


def check_codec_roundtrip(batch: ExperienceBatch) -> None:
    """Every valid batch (CompactState included) survives encode -> decode unchanged."""
    _assert_batches_equal(decode(encode(batch)), batch)


# ----------------------------------------------------------------------------- KIF / CSA


def check_records(position: Position) -> None:
    """A game's KIF and CSA re-parse in cshogi to the same start and moves. (cshogi's KIF
    parser ignores board diagrams, so KIF moves are compared from the standard start only;
    CSA has no move number and cshogi orders hands its own way.)"""
    played = [m.usi() for m in position.moves]
    start = position.start_sfen.split()
    if start[:3] == STARTING_SFEN.split()[:3]:
        kif = cshogi.KIF.Parser.parse_str(position.to_kif())
        assert [cshogi.move_to_usi(m) for m in kif.moves] == played, "KIF moves"
    (csa,) = cshogi.CSA.Parser.parse_str(position.to_csa())
    assert [cshogi.move_to_usi(m) for m in csa.moves] == played, "CSA moves"
    board, side, hands = csa.sfen.split()[:3]
    assert [board, side] == start[:2], f"CSA start {csa.sfen!r} vs {position.start_sfen!r}"
    assert _hand_counts(hands) == _hand_counts(start[2]), f"CSA hands {hands!r} vs {start[2]!r}"


records_inputs = st.one_of(
    _games, st.builds(lambda p, s, n: random_game(s, n, p.sfen()) if not p.is_game_over() else p,
                      _games, st.integers(0, 2**31 - 1), st.integers(0, 40)))


# ----------------------------------------------------------------------------- files


class _Payload:
    """Unpickling this would create the file it names: proof that a loader ran pickled code."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.sentinel,))


_FILE_MUTATIONS = ("truncate", "flip", "delete", "evil", "garbage", "empty")


@cache
def _tiny_weights() -> tuple[ModelConfig, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    config = ModelConfig(size="tiny")
    return config, export_weights(build_model(config))


@cache
def _pristine(kind: str) -> Path:
    """A valid model file or checkpoint made once per process (tests copy, then mutate)."""
    config, weights = _tiny_weights()
    root = Path(tempfile.mkdtemp(prefix=f"keisei-fuzz-{kind}-"))
    atexit.register(shutil.rmtree, root, True)
    if kind == "model":
        return save_model(root / "model.pt", weights, config, meta={"timestep": 7})
    state = {name: torch.from_numpy(np.array(a)) for name, a in weights.items()}
    snapshot = RunSnapshot(config=Config(model=config), timestep=7, version=1, driver={},
                           learner={"model": state}, workers={}, pending=[b"x"])
    return write_checkpoint(root, snapshot, run_id="fuzz", reason="fuzz")


def _mutate_file(path: Path, how: str, rng: random.Random, sentinel: Path) -> None:
    if how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(rng.randbytes(rng.randrange(1, 2000)))
    elif how == "evil":
        buffer = io.BytesIO()
        torch.save({"format": "keisei-ray-model/1", "model": _Payload(sentinel)}, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        data = bytearray(path.read_bytes())
        if how == "truncate" or not data:
            path.write_bytes(bytes(data[:rng.randrange(len(data) + 1)]))
            return
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(data))
            data[k] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))


def _rehash(ckpt: Path, name: str) -> None:
    """Make the manifest match a changed file (tampering that the hashes cannot see)."""
    manifest = json.loads((ckpt / MANIFEST).read_text())
    file = ckpt / name
    if name in manifest["files"] and file.is_file():
        data = file.read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (ckpt / MANIFEST).write_text(json.dumps(manifest))


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=False),
              st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=8)

checkpoint_inputs = st.tuples(
    st.sampled_from(["learner.pt", "workers.pt", "pending.pt", "driver.pt", "state.json",
                     "callbacks.json", "config.yaml", MANIFEST]),
    st.sampled_from((*_FILE_MUTATIONS, "tamper")),
    st.booleans(),  # fix the manifest's hash of the changed file
    st.sampled_from(["files", "format", "run_id", "timestep", "version", "num_actions",
                     "files.learner.pt", "files.learner.pt.bytes", "files.../x", "reason"]),
    _json_values,
    st.integers(0, 2**32),
)


def check_checkpoint(case: tuple[str, str, bool, str, Any, int]) -> None:
    """A damaged or tampered checkpoint: CheckpointError (ModelFileError for load_model) or, if
    only what no hash covers changed, a load with the pristine weights; pickled code never
    runs."""
    name, how, rehash, key, value, seed = case
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="keisei-fuzz-") as tmp:
        ckpt = Path(tmp) / "ckpt-000000000007"
        shutil.copytree(_pristine("checkpoint"), ckpt)
        sentinel = Path(tmp) / "pwned"
        if how == "tamper":
            manifest = json.loads((ckpt / MANIFEST).read_text())
            node, *path = key.split(".", 1)
            if path and isinstance(manifest.get(node), dict):
                inner = manifest[node]
                sub, *last = path[0].rsplit(".", 1) if path[0].endswith(".bytes") else (path[0],)
                if last:
                    if isinstance(inner.get(sub), dict):
                        inner[sub][last[0]] = value
                else:
                    inner[sub] = value
            else:
                manifest[node] = value
            (ckpt / MANIFEST).write_text(json.dumps(manifest))
        else:
            _mutate_file(ckpt / name, how, rng, sentinel)
            if rehash and name != MANIFEST:
                _rehash(ckpt, name)
        for load in (read_checkpoint, read_model_state, load_model):
            try:
                loaded = load(ckpt)
            except (CheckpointError, ModelFileError) as exc:
                _message_ok(exc)
                continue
            if rehash and how != "tamper":
                continue  # the manifest was made to match: tampering no hash can see
            weights = loaded[1] if isinstance(loaded, tuple) else (
                loaded.learner["model"] if isinstance(loaded, RunSnapshot) else
                {k: torch.from_numpy(v) for k, v in export_weights(loaded.model).items()})
            _, pristine = _tiny_weights()
            for k, array in pristine.items():
                assert np.array_equal(weights[k].numpy(), array), f"{load.__name__}: {k} " \
                    f"silently differs after {how} of {name}"
        assert not sentinel.exists(), "a pickle ran code while loading"


model_file_inputs = st.tuples(st.sampled_from((*_FILE_MUTATIONS, "payload")), _json_values,
                              st.integers(0, 2**32))


def check_model_file(case: tuple[str, Any, int]) -> None:
    """A damaged model file: ModelFileError, or (only meta damaged) the pristine weights."""
    how, value, seed = case
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="keisei-fuzz-") as tmp:
        path = Path(tmp) / "model.pt"
        shutil.copyfile(_pristine("model"), path)
        sentinel = Path(tmp) / "pwned"
        if how == "payload":  # a well-formed torch file holding the wrong structure
            buffer = io.BytesIO()
            payload = torch.load(path, weights_only=True)
            target = rng.choice(["format", "model_config", "weights", "meta", "extra"])
            payload[target] = value
            torch.save(payload, buffer)
            path.write_bytes(buffer.getvalue())
        else:
            _mutate_file(path, how, rng, sentinel)
        try:
            loaded = load_model(path)
        except ModelFileError as exc:
            _message_ok(exc)
        else:
            _, pristine = _tiny_weights()
            got = export_weights(loaded.model)
            for k, array in pristine.items():
                assert np.array_equal(got[k], array), f"{k} silently differs after {how}"
        assert not sentinel.exists(), "a pickle ran code while loading"


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
