"""Fuzz targets for bytes and files: the codec, KIF/CSA records, checkpoints, model files."""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import random
import shutil
import struct
import tempfile
import tracemalloc
import zlib
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
from hypothesis import strategies as st

from keisei_ray.bench.fuzz import (
    MAX_DECODE_ALLOC,
    _games,
    _message_ok,
    random_game,
)
from keisei_ray.bench.fuzz_text import (
    _hand_counts,
)
from keisei_ray.bench.learner import collect_experience
from keisei_ray.codec import FORMAT_VERSION, CodecError, ExperienceBatch, decode, encode
from keisei_ray.config import Config, ModelConfig
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
    Position,
)

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
        message[rng.choice(["n", "m", "g", "t", "policy_version", "worker_id"])] = rng.choice(
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
        message.update(n=huge, m=huge, g=huge, t=huge)
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


