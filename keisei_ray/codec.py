"""The experience wire format: `ExperienceBatch` <-> bytes (msgpack + lz4, versioned).

A batch ships compact states, not planes: the learner rebuilds planes and legal masks on its
own device with the same encoder the worker used. Layout of the bytes:

    [format version: 1 byte][crc32 of the rest: 4 bytes LE][msgpack size: 4 bytes LE][lz4 block]

The msgpack map holds the header (policy version, worker id, sizes) and every array as
[dtype, shape, bytes]. Before compression the arrays are made lz4-friendly: each row's sorted
legal actions are delta-coded (small, repetitive numbers), and multi-byte arrays are
byte-shuffled (all low bytes, then all high bytes) so runs of equal high bytes compress.
`decode` trusts nothing: any truncated, corrupted, wrong-version, oversized or inconsistent
input raises `CodecError`, never returns a half-valid batch.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lz4.block
import msgpack
import numpy as np

from shogi import HAND_MAX, NUM_ACTIONS, Color, CompactState, FinishedGame, Termination
from shogi.compact import STATE_FIELDS, STATE_LAYOUT

FORMAT_VERSION = 2
"""2: the search teacher's fields (target_counts, target_index, target_probs, target_rest,
search_value; issue 24)."""
TARGET_SUM_TOLERANCE = 1e-2
"""How far a row's shipped improved policy (float16 entries) may sum from 1."""
MAX_ENCODED_BYTES = 256 << 20
"""Largest input `decode` accepts by default (and largest decompressed payload)."""
TERMINATIONS: tuple[Termination, ...] = tuple(Termination)
"""`ExperienceBatch.game_reasons` codes index this tuple."""

_HEADER = struct.Struct("<BII")  # version, crc32, uncompressed msgpack size
_HAND_MAX = np.array(HAND_MAX, dtype=np.uint8)
_LZ4_MAX_RATIO = 255  # an lz4 block never expands its input by more (a run of one byte)


class CodecError(ValueError):
    """Bytes that are not a valid encoded experience batch (or a batch that cannot be encoded)."""


@dataclass
class ExperienceBatch:
    """N transitions of one worker, with the statistics of the G games that finished.

    Per transition: the compact state before the move, the action taken, the behaviour
    log-prob and value, the GAE advantage and return. Legal actions are CSR: row i's are
    legal_actions[legal_offsets[i]:legal_offsets[i + 1]], sorted ascending.

    Search as a teacher (actors/teacher.py): a row with a target carries the search's improved
    policy pi' sparsely. pi' is the network's prior times one constant on every move the search
    did not visit (their completed Q is the same mixed value), so a row ships the probabilities
    of its visited moves, `target_counts[i]` of them: `target_index` (positions in the row's
    legal actions, ascending) and `target_probs`, concatenated in row order (T entries), and
    `target_rest[i]`, the mass of the unvisited moves, which the learner spreads over them in
    proportion to its own policy. `target_counts` is 0 on a row without a target.
    `search_value` is the search's value for the side to move (the network's value on rows
    not searched). Left empty, they are filled in: no target, the search value = `value`.
    """

    state: CompactState
    action: np.ndarray  # int16 [N]
    log_prob: np.ndarray  # float32 [N]
    value: np.ndarray  # float32 [N]
    advantage: np.ndarray  # float32 [N]
    returns: np.ndarray  # float32 [N]
    legal_offsets: np.ndarray  # int32 [N + 1]
    legal_actions: np.ndarray  # int16 [M]
    policy_version: int = 0
    worker_id: int = 0
    game_results: np.ndarray = field(  # int8 [G]: +1 Black won, -1 White won, 0 draw
        default_factory=lambda: np.zeros(0, dtype=np.int8))
    game_lengths: np.ndarray = field(  # int32 [G]: plies
        default_factory=lambda: np.zeros(0, dtype=np.int32))
    game_reasons: np.ndarray = field(  # uint8 [G]: index into TERMINATIONS
        default_factory=lambda: np.zeros(0, dtype=np.uint8))
    target_counts: np.ndarray = field(  # uint16 [N]: visited moves shipped (0: no target)
        default_factory=lambda: np.zeros(0, dtype=np.uint16))
    target_index: np.ndarray = field(  # uint16 [T]: their positions in the row's legal actions
        default_factory=lambda: np.zeros(0, dtype=np.uint16))
    target_probs: np.ndarray = field(  # float16 [T]: their probabilities
        default_factory=lambda: np.zeros(0, dtype=np.float16))
    target_rest: np.ndarray = field(  # float16 [N]: the unvisited moves' mass
        default_factory=lambda: np.zeros(0, dtype=np.float16))
    search_value: np.ndarray = field(  # float32 [N]
        default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __post_init__(self) -> None:
        n = len(self.action)
        # Left empty (a batch without the teacher): no target, the search value = the value.
        if n and len(self.target_counts) == 0:
            self.target_counts = np.zeros(n, dtype=np.uint16)
        if n and len(self.target_rest) == 0:
            self.target_rest = np.zeros(n, dtype=np.float16)
        if n and len(self.search_value) == 0:
            self.search_value = np.array(self.value, dtype=np.float32)

    @property
    def has_target(self) -> np.ndarray:
        """bool [N]: the rows that carry a target."""
        return np.asarray(self.target_counts) > 0

    def target_rows(self) -> np.ndarray:
        """intp [T]: the row of each shipped target entry."""
        counts = np.asarray(self.target_counts, dtype=np.int64)
        return np.repeat(np.arange(len(counts)), counts)

    def __len__(self) -> int:
        return int(self.action.shape[0])


# The schema: name -> (dtype, shape given (n, m, g)). The compact state's arrays come first, as
# shogi.compact.STATE_LAYOUT declares them (the order is part of the wire bytes).
_Shape = Callable[[int, int, int, int], tuple[int, ...]]


def _per_row(shape: tuple[int, ...]) -> _Shape:
    return lambda n, m, g, t: (n, *shape)


_SCHEMA: dict[str, tuple[np.dtype, _Shape]] = {
    **{f.name: (f.dtype, _per_row(f.shape)) for f in STATE_LAYOUT},
    "action": (np.dtype(np.int16), lambda n, m, g, t: (n,)),
    "log_prob": (np.dtype(np.float32), lambda n, m, g, t: (n,)),
    "value": (np.dtype(np.float32), lambda n, m, g, t: (n,)),
    "advantage": (np.dtype(np.float32), lambda n, m, g, t: (n,)),
    "returns": (np.dtype(np.float32), lambda n, m, g, t: (n,)),
    "legal_offsets": (np.dtype(np.int32), lambda n, m, g, t: (n + 1,)),
    "legal_actions": (np.dtype(np.int16), lambda n, m, g, t: (m,)),
    "game_results": (np.dtype(np.int8), lambda n, m, g, t: (g,)),
    "game_lengths": (np.dtype(np.int32), lambda n, m, g, t: (g,)),
    "game_reasons": (np.dtype(np.uint8), lambda n, m, g, t: (g,)),
    "target_counts": (np.dtype(np.uint16), lambda n, m, g, t: (n,)),
    "target_index": (np.dtype(np.uint16), lambda n, m, g, t: (t,)),
    "target_probs": (np.dtype(np.float16), lambda n, m, g, t: (t,)),
    "target_rest": (np.dtype(np.float16), lambda n, m, g, t: (n,)),
    "search_value": (np.dtype(np.float32), lambda n, m, g, t: (n,)),
}
_HEADER_KEYS = ("policy_version", "worker_id", "n", "m", "g", "t")


def _arrays(batch: ExperienceBatch) -> dict[str, np.ndarray]:
    state = {name: getattr(batch.state, name) for name in STATE_FIELDS}
    rest = {name: getattr(batch, name) for name in _SCHEMA if name not in STATE_FIELDS}
    return {**state, **rest}


def summarize_games(finished: Sequence[FinishedGame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(game_results, game_lengths, game_reasons) of an ExperienceBatch for finished games."""
    results = [0 if g.outcome.winner is None else 1 if g.outcome.winner == Color.BLACK else -1
               for g in finished]
    return (np.array(results, dtype=np.int8),
            np.array([g.plies for g in finished], dtype=np.int32),
            np.array([TERMINATIONS.index(g.outcome.reason) for g in finished], dtype=np.uint8))


# ----------------------------------------------------------------------------- transforms


def _shuffle(array: np.ndarray) -> bytes:
    """Bytes of `array` grouped by byte position (all byte 0s, then all byte 1s, ...)."""
    if array.dtype.itemsize == 1:
        return array.tobytes()
    return array.reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize).T.tobytes()


def _unshuffle(data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if dtype.itemsize > 1:
        raw = raw.reshape(dtype.itemsize, -1).T
    # A copy either way: decoded arrays own writable memory, not the message's bytes.
    return np.array(raw, order="C").view(dtype).reshape(shape)


def _delta_rows(actions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each row's actions as differences from the previous one (the first kept as is)."""
    deltas = np.diff(actions, prepend=np.int16(0)).astype(np.int16)
    starts = offsets[:-1][offsets[:-1] < offsets[1:]]
    deltas[starts] = actions[starts]
    return deltas


def _undelta_rows(deltas: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    running = np.cumsum(deltas, dtype=np.int64)
    before_row = np.where(offsets[:-1] > 0, running[np.maximum(offsets[:-1] - 1, 0)], 0)
    counts = np.diff(offsets)
    return (running - np.repeat(before_row, counts)).astype(np.int16)


# ----------------------------------------------------------------------------- encode


def encode(batch: ExperienceBatch) -> bytes:
    """The wire bytes of `batch` (validated first: a bad batch raises CodecError here)."""
    arrays = {name: np.ascontiguousarray(a) for name, a in _arrays(batch).items()}
    header = {"policy_version": int(batch.policy_version), "worker_id": int(batch.worker_id),
              "n": len(arrays["action"]), "m": len(arrays["legal_actions"]),
              "g": len(arrays["game_results"]), "t": len(arrays["target_probs"])}
    _validate(header, arrays)
    arrays["legal_actions"] = _delta_rows(arrays["legal_actions"], arrays["legal_offsets"])
    packed = {name: [a.dtype.str, list(a.shape), _shuffle(a)] for name, a in arrays.items()}
    raw = msgpack.packb({**header, "arrays": packed}, use_bin_type=True)
    body = struct.pack("<I", len(raw)) + lz4.block.compress(raw, store_size=False)
    return struct.pack("<BI", FORMAT_VERSION, zlib.crc32(body)) + body


# ----------------------------------------------------------------------------- decode


def decode(data: bytes | bytearray | memoryview,
           max_bytes: int = MAX_ENCODED_BYTES) -> ExperienceBatch:
    """The batch encoded in `data`; CodecError for anything that is not exactly that."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data)
    if len(view) > max_bytes:
        raise CodecError(f"encoded batch of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) < _HEADER.size:
        raise CodecError(f"truncated batch: {len(view)} bytes, the header alone is "
                         f"{_HEADER.size}")
    version, crc, raw_size = _HEADER.unpack_from(view)
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported format version {version} (this build reads "
                         f"{FORMAT_VERSION}): a batch from "
                         f"{'an older' if version < FORMAT_VERSION else 'another'} keisei-ray "
                         "build")
    if zlib.crc32(view[5:]) != crc:
        raise CodecError("checksum mismatch: the batch is truncated or corrupted")
    if raw_size > max_bytes:
        raise CodecError(f"decompressed size {raw_size} exceeds the limit of {max_bytes}")
    compressed = len(view) - _HEADER.size
    if raw_size > _LZ4_MAX_RATIO * compressed + _LZ4_MAX_RATIO:
        # Checked before decompressing: the buffer of `raw_size` bytes is allocated up front.
        raise CodecError(f"decompressed size {raw_size} is impossible for {compressed} bytes "
                         f"of lz4 (at most {_LZ4_MAX_RATIO}x)")
    try:
        raw = lz4.block.decompress(view[_HEADER.size:], uncompressed_size=raw_size)
    except lz4.block.LZ4BlockError as exc:
        raise CodecError(f"lz4 payload is corrupt ({exc})") from exc
    if len(raw) != raw_size:
        raise CodecError(f"lz4 payload holds {len(raw)} bytes, the header says {raw_size}")
    try:
        message = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"msgpack payload is malformed ({exc})") from exc
    return _from_message(message)


def _from_message(message: Any) -> ExperienceBatch:
    if not isinstance(message, dict) or set(message) != {*_HEADER_KEYS, "arrays"}:
        keys = sorted(message) if isinstance(message, dict) else type(message).__name__
        raise CodecError(f"unexpected message layout: {keys}")
    header = {key: message[key] for key in _HEADER_KEYS}
    for key, value in header.items():
        if type(value) is not int or value < 0:
            raise CodecError(f"header field {key!r} must be a non-negative int, got {value!r}")
    packed = message["arrays"]
    if not isinstance(packed, dict) or set(packed) != set(_SCHEMA):
        keys = sorted(packed) if isinstance(packed, dict) else type(packed).__name__
        raise CodecError(f"unexpected array set: {keys}")
    sizes = (header["n"], header["m"], header["g"], header["t"])
    arrays = {name: _unpack_array(name, packed[name], sizes) for name in _SCHEMA}
    arrays["legal_actions"] = _undelta_rows(arrays["legal_actions"],
                                            _checked_offsets(arrays["legal_offsets"],
                                                             header["m"]))
    _validate(header, arrays)
    state = CompactState(**{name: arrays.pop(name) for name in STATE_FIELDS})
    return ExperienceBatch(state=state, policy_version=header["policy_version"],
                           worker_id=header["worker_id"], **arrays)


def _unpack_array(name: str, item: Any, sizes: tuple[int, int, int, int]) -> np.ndarray:
    dtype, shape_of = _SCHEMA[name]
    shape = shape_of(*sizes)
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], bytes)):
        raise CodecError(f"array {name!r}: expected [dtype, shape, bytes]")
    if item[0] != dtype.str or item[1] != list(shape):
        raise CodecError(f"array {name!r}: got dtype {item[0]!r} shape {item[1]!r}, expected "
                         f"{dtype.str!r} {list(shape)}")
    if len(item[2]) != dtype.itemsize * int(np.prod(shape)):
        raise CodecError(f"array {name!r}: {len(item[2])} bytes do not fill shape "
                         f"{list(shape)} of {dtype.str}")
    return _unshuffle(item[2], dtype, shape)


def _checked_offsets(offsets: np.ndarray, m: int) -> np.ndarray:
    if offsets[0] != 0 or offsets[-1] != m or np.any(np.diff(offsets) < 0):
        raise CodecError(f"legal_offsets are not a CSR index over {m} actions (must start at "
                         "0, never decrease, end at the number of legal actions)")
    return offsets


# ----------------------------------------------------------------------------- validation


def _validate(header: dict[str, int], arrays: dict[str, np.ndarray]) -> None:
    """Shapes, dtypes, value ranges and CSR consistency; CodecError naming the first problem."""
    n, m, g, t = header["n"], header["m"], header["g"], header["t"]
    for key in ("policy_version", "worker_id"):
        if not 0 <= header[key] < 2**63:
            raise CodecError(f"{key} must be a non-negative int64, got {header[key]!r}")
    for name, (dtype, shape_of) in _SCHEMA.items():
        array = arrays[name]
        if array.dtype != dtype or array.shape != shape_of(n, m, g, t):
            raise CodecError(f"{name}: expected {dtype} {list(shape_of(n, m, g, t))}, got "
                             f"{array.dtype} {list(array.shape)}")
    offsets, legal = arrays["legal_offsets"], arrays["legal_actions"]
    _checked_offsets(offsets, m)
    if np.any(arrays["hands"] > _HAND_MAX):
        raise CodecError("hands: a count exceeds the most pieces of its type (18 4 4 4 4 2 2)")
    for f in STATE_LAYOUT:
        _check_range(f.name, arrays[f.name], f.low, f.high)
    _check_range("action", arrays["action"], 0, NUM_ACTIONS - 1)
    _check_range("legal_actions", legal, 0, NUM_ACTIONS - 1)
    for name in ("log_prob", "value", "advantage", "returns"):
        if not np.all(np.isfinite(arrays[name])):
            raise CodecError(f"{name}: holds NaN or infinity")
    rows = np.repeat(np.arange(n), np.diff(offsets))
    taken = np.zeros(n, dtype=bool)
    taken[rows[legal == arrays["action"][rows]]] = True
    if not taken.all():
        bad = int(np.flatnonzero(~taken)[0])
        raise CodecError(f"action {int(arrays['action'][bad])} of transition {bad} is not "
                         "among its legal actions")
    _validate_targets(arrays, t)
    _check_range("game_results", arrays["game_results"], -1, 1)
    _check_range("game_lengths", arrays["game_lengths"], 0, np.iinfo(np.int32).max)
    _check_range("game_reasons", arrays["game_reasons"], 0, len(TERMINATIONS) - 1)


def _validate_targets(arrays: dict[str, np.ndarray], t: int) -> None:
    """The teacher's fields: T = the sum of the counts, at most a row's legal actions, indices
    ascending within their row's legal actions, probabilities in 0..1 that sum with the rest
    to 1 on a target row, no rest without a target, finite search values."""
    counts = arrays["target_counts"].astype(np.int64)
    legal = np.diff(arrays["legal_offsets"]).astype(np.int64)
    if int(counts.sum()) != t:
        raise CodecError(f"target_counts sum to {int(counts.sum())}, target_index holds {t}")
    over = np.flatnonzero(counts > legal)
    if len(over):
        raise CodecError(f"target_counts: transition {int(over[0])} ships {int(counts[over[0]])}"
                         f" moves of its {int(legal[over[0]])} legal actions")
    rows = np.repeat(np.arange(len(counts)), counts)
    index = arrays["target_index"].astype(np.int64)
    if t and np.any(index >= legal[rows]):
        bad = int(np.flatnonzero(index >= legal[rows])[0])
        raise CodecError(f"target_index: {int(index[bad])} of transition {int(rows[bad])} is "
                         f"outside its {int(legal[rows[bad]])} legal actions")
    if t > 1 and np.any((np.diff(index) <= 0) & (rows[1:] == rows[:-1])):
        raise CodecError("target_index: not strictly ascending within a transition")
    probs = arrays["target_probs"].astype(np.float64)
    rest = arrays["target_rest"].astype(np.float64)
    for name, values in (("target_probs", probs), ("target_rest", rest)):
        if not np.all(np.isfinite(values)):
            raise CodecError(f"{name}: holds NaN or infinity")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise CodecError(f"{name}: a probability outside 0..1")
    if np.any(rest[counts == 0] != 0.0):
        raise CodecError("target_rest: nonzero on a transition without a target")
    sums = np.bincount(rows, weights=probs, minlength=len(counts))
    bad_sum = np.flatnonzero((counts > 0) & (np.abs(sums + rest - 1.0) > TARGET_SUM_TOLERANCE))
    if len(bad_sum):
        row = int(bad_sum[0])
        raise CodecError(f"the target of transition {row} sums to {sums[row] + rest[row]:.4g}, "
                         "not 1")
    if not np.all(np.isfinite(arrays["search_value"])):
        raise CodecError("search_value: holds NaN or infinity")


def _check_range(name: str, array: np.ndarray, low: int, high: int) -> None:
    if array.size and (array.min() < low or array.max() > high):
        bad = array.ravel()[np.flatnonzero((array.ravel() < low) | (array.ravel() > high))[0]]
        raise CodecError(f"{name}: value {bad.item()!r} outside {low}..{high}")
