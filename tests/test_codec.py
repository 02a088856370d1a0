"""Experience codec: exact round trips on real games, and CodecError for every bad input."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import lz4.block
import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keisei_ray.bench.learner import bench_codec, collect_experience
from keisei_ray.codec import (
    FORMAT_VERSION,
    TERMINATIONS,
    CodecError,
    ExperienceBatch,
    _shuffle,
    decode,
    encode,
)
from keisei_ray.config import ModelConfig
from learner.model import build_model
from shogi import NUM_ACTIONS, CompactState


@pytest.fixture(scope="module")
def real_batch() -> ExperienceBatch:
    torch.manual_seed(0)
    # 8 games x 160 plies of tiny-model self-play with a short move cap: wins, draws,
    # truncations and several games per slot.
    return collect_experience(8, 160, seed=3, max_moves=60, policy_version=7,
                              model=build_model(ModelConfig(size="tiny")))


@pytest.fixture(scope="module")
def payload(real_batch: ExperienceBatch) -> bytes:
    return encode(real_batch)


def assert_same(a: ExperienceBatch, b: ExperienceBatch) -> None:
    assert a.state.equals(b.state)
    for f in fields(ExperienceBatch):
        if f.name == "state":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_round_trip_of_real_self_play(real_batch: ExperienceBatch, payload: bytes) -> None:
    assert len(real_batch.game_results) > 0  # games did finish inside the rollout
    assert set(real_batch.game_reasons.tolist()) >= {TERMINATIONS.index(r) for r in
                                                     TERMINATIONS if r.value == "max_moves"}
    decoded = decode(payload)
    assert_same(decoded, real_batch)
    assert decoded.policy_version == 7
    assert len(payload) / len(real_batch) <= 300


def test_round_trip_of_random_policy_data() -> None:
    batch = collect_experience(4, 50, seed=1)
    assert_same(decode(encode(batch)), batch)
    assert_same(decode(bytearray(encode(batch))), batch)


def test_empty_batch_round_trips() -> None:
    empty = ExperienceBatch(
        state=CompactState.empty(0), action=np.zeros(0, np.int16),
        log_prob=np.zeros(0, np.float32), value=np.zeros(0, np.float32),
        advantage=np.zeros(0, np.float32), returns=np.zeros(0, np.float32),
        legal_offsets=np.zeros(1, np.int32), legal_actions=np.zeros(0, np.int16),
        worker_id=3)
    assert_same(decode(encode(empty)), empty)


@st.composite
def batches(draw: st.DrawFn) -> ExperienceBatch:
    """Random but valid batches: arbitrary CSR rows, unsorted legal actions included."""
    n = draw(st.integers(0, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    counts = rng.integers(1, 30, size=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    legal = rng.integers(0, NUM_ACTIONS, size=int(offsets[-1])).astype(np.int16)
    action = legal[offsets[:-1] + (rng.random(n) * counts).astype(np.int64)]
    state = CompactState.empty(n)
    state.board[:] = rng.integers(-14, 15, size=(n, 81))
    state.hands[:] = rng.integers(0, 3, size=(n, 2, 7))
    state.color[:] = rng.integers(0, 2, size=n)
    state.ply[:] = rng.integers(0, 30000, size=n)
    state.repetition[:] = rng.integers(0, 4, size=n)
    state.in_check[:] = rng.integers(0, 2, size=n)
    g = draw(st.integers(0, 3))

    def floats() -> np.ndarray:
        return rng.normal(size=n).astype(np.float32)

    return ExperienceBatch(
        state=state, action=action, log_prob=floats(), value=floats(), advantage=floats(),
        returns=floats(), legal_offsets=offsets, legal_actions=legal,
        policy_version=draw(st.integers(0, 2**40)), worker_id=draw(st.integers(0, 1000)),
        game_results=rng.integers(-1, 2, size=g).astype(np.int8),
        game_lengths=rng.integers(1, 512, size=g).astype(np.int32),
        game_reasons=rng.integers(0, len(TERMINATIONS), size=g).astype(np.uint8))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_round_trip_of_arbitrary_valid_batches(batch: ExperienceBatch) -> None:
    assert_same(decode(encode(batch)), batch)


# ----------------------------------------------------------------------------- bad bytes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_corrupted_byte_is_detected(payload: bytes, data: st.DataObject) -> None:
    where = data.draw(st.integers(0, len(payload) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupted = bytearray(payload)
    corrupted[where] ^= flip
    with pytest.raises(CodecError):
        decode(bytes(corrupted))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_truncation_is_detected(payload: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(CodecError):
        decode(payload[:cut])


def test_wrong_version_and_oversized_input(payload: bytes) -> None:
    with pytest.raises(CodecError, match="unsupported format version 9"):
        decode(bytes([9]) + payload[1:])
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(payload, max_bytes=len(payload) - 1)
    with pytest.raises(CodecError, match="expected bytes"):
        decode("not bytes")  # type: ignore[arg-type]
    # A header claiming a huge decompressed size (checksum made valid) is refused up front.
    body = struct.pack("<I", 1 << 40 & 0xFFFFFFFF | 0xF0000000) + payload[9:]
    forged = struct.pack("<BI", FORMAT_VERSION, zlib.crc32(body)) + body
    with pytest.raises(CodecError, match="decompressed size"):
        decode(forged, max_bytes=1 << 20)


# ----------------------------------------------------------------------------- bad content


def reframe(payload: bytes, mutate: Callable[[dict[str, Any]], None]) -> bytes:
    """Re-encode `payload` with its msgpack message mutated (and a valid checksum)."""
    size = struct.unpack_from("<I", payload, 5)[0]
    message = msgpack.unpackb(lz4.block.decompress(payload[9:], uncompressed_size=size))
    mutate(message)
    raw = msgpack.packb(message, use_bin_type=True)
    body = struct.pack("<I", len(raw)) + lz4.block.compress(raw, store_size=False)
    return struct.pack("<BI", FORMAT_VERSION, zlib.crc32(body)) + body


def set_array(name: str, change: Callable[[np.ndarray], None]) -> Callable[[dict[str, Any]],
                                                                           None]:
    def mutate(message: dict[str, Any]) -> None:
        dtype, shape, data = message["arrays"][name]
        array = np.frombuffer(data, dtype=np.uint8)
        itemsize = np.dtype(dtype).itemsize
        values = array.reshape(itemsize, -1).T.copy().view(dtype).reshape(shape)
        change(values)
        message["arrays"][name][2] = _shuffle(values)
    return mutate


def small_payload() -> bytes:
    return encode(collect_experience(2, 6, seed=0))


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda m: m.pop("n"), "unexpected message layout"),
        (lambda m: m.update(n=-1), "header field 'n'"),
        (lambda m: m.update(n=m["n"] + 1), "array 'board'"),
        (lambda m: m["arrays"].pop("action"), "unexpected array set"),
        (lambda m: m["arrays"]["board"].__setitem__(0, "|u1"), "array 'board': got dtype"),
        (lambda m: m["arrays"]["board"].__setitem__(2, b"x"), "do not fill shape"),
        (lambda m: m["arrays"].__setitem__("board", 5), "expected [dtype, shape, bytes]"),
        (set_array("board", lambda a: a.__setitem__((0, 0), 15)), "board: value 15"),
        (set_array("hands", lambda a: a.__setitem__((0, 0, 5), 3)), "hands"),
        (set_array("color", lambda a: a.__setitem__(0, 2)), "color: value 2"),
        (set_array("repetition", lambda a: a.__setitem__(0, 4)), "repetition: value 4"),
        (set_array("action", lambda a: a.__setitem__(0, -1)), "action: value -1"),
        (set_array("value", lambda a: a.__setitem__(0, np.nan)), "value: holds NaN"),
        (set_array("legal_offsets", lambda a: a.__setitem__(1, a[2] + 1)), "legal_offsets"),
        (set_array("legal_offsets", lambda a: a.__setitem__(0, 1)), "legal_offsets"),
        (set_array("game_reasons", lambda a: a.__setitem__(slice(None), 200)), "game_reasons"),
    ],
)
def test_inconsistent_content_is_rejected(mutate: Callable[[dict[str, Any]], None],
                                          fragment: str) -> None:
    payload = small_payload()
    if "game_reasons" in fragment:  # needs a finished game: use a batch that has one
        payload = encode(replace(decode(payload), game_results=np.zeros(1, np.int8),
                                 game_lengths=np.ones(1, np.int32),
                                 game_reasons=np.zeros(1, np.uint8)))
    with pytest.raises(CodecError) as info:
        decode(reframe(payload, mutate))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_action_must_be_one_of_its_legal_actions() -> None:
    batch = collect_experience(2, 6, seed=0)
    row = batch.legal_actions[batch.legal_offsets[3]:batch.legal_offsets[4]]
    illegal = next(a for a in range(NUM_ACTIONS) if a not in row)
    bad_action = batch.action.copy()
    bad_action[3] = illegal
    with pytest.raises(CodecError, match="transition 3 is not among its legal actions"):
        encode(replace(batch, action=bad_action))  # encode validates too
    payload = reframe(encode(batch), set_array("action", lambda a: a.__setitem__(3, illegal)))
    with pytest.raises(CodecError, match="not among its legal actions"):
        decode(payload)


def test_encode_rejects_wrong_dtypes() -> None:
    batch = collect_experience(2, 3, seed=0)
    with pytest.raises(CodecError, match="log_prob: expected float32"):
        encode(replace(batch, log_prob=batch.log_prob.astype(np.float64)))


def test_codec_benchmark_returns_its_figures() -> None:
    figures = bench_codec(num_games=4, steps=8, repeats=1)
    assert figures["transitions"] == 32
    assert 0 < figures["bytes per transition"] <= 300
    assert figures["encode+decode ms per 1000"] > 0
