"""Property tests of the binary decoders and loaders (experience codec, checkpoints, model
files), with the targets `keisei-ray bench fuzz` runs longer; then the regressions they found."""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given

from keisei_ray.bench.fuzz_files import _pristine, _rehash
from keisei_ray.bench.fuzz_run import TARGETS, ci_settings
from keisei_ray.codec import FORMAT_VERSION, CodecError, decode
from keisei_ray.store.checkpoint import MANIFEST, CheckpointError, read_checkpoint
from keisei_ray.store.model_file import ModelFileError, load_model


@ci_settings(150)
@given(TARGETS["codec"].strategy)
def test_decode_of_hostile_bytes_is_a_codec_error_or_a_batch(case: bytes) -> None:
    TARGETS["codec"].check(case)


@ci_settings(30)
@given(TARGETS["codec-roundtrip"].strategy)
def test_valid_batches_round_trip(case: object) -> None:
    TARGETS["codec-roundtrip"].check(case)


@ci_settings(40)
@given(TARGETS["checkpoint"].strategy)
def test_damaged_checkpoints_are_refused(case: tuple) -> None:  # type: ignore[type-arg]
    TARGETS["checkpoint"].check(case)


@ci_settings(40)
@given(TARGETS["model-file"].strategy)
def test_damaged_model_files_are_refused(case: tuple) -> None:  # type: ignore[type-arg]
    TARGETS["model-file"].check(case)


# ----------------------------------------------------------------------------- regressions


def test_an_absurd_decompressed_size_is_refused_before_allocating() -> None:
    body = struct.pack("<I", 200 << 20) + b"\x00" * 16  # claims 200 MiB from 16 bytes
    data = struct.pack("<BI", FORMAT_VERSION, zlib.crc32(body)) + body
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="impossible for 16 bytes of lz4"):
            decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # was: 200 MiB allocated for the lz4 output buffer


def _model_copy(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    shutil.copyfile(_pristine("model"), path)
    return path


def test_a_bit_flip_in_the_weights_of_a_model_file_is_detected(tmp_path: Path) -> None:
    path = _model_copy(tmp_path)
    payload = torch.load(path, weights_only=True)
    name = sorted(payload["weights"])[0]
    payload["weights"][name].view(-1)[0] += 1.0  # what a flipped bit does: a loadable file
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="do not match their SHA-256"):
        load_model(path)  # was: loaded silently with the wrong weight


def test_a_model_file_from_before_the_digest_still_loads(tmp_path: Path) -> None:
    path = _model_copy(tmp_path)
    payload = torch.load(path, weights_only=True)
    del payload["sha256"]
    torch.save(payload, path)
    assert load_model(path).meta == {"timestep": 7}


def test_a_model_file_with_non_tensor_weights_is_refused(tmp_path: Path) -> None:
    path = _model_copy(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["weights"] = {"stem.0.weight": [1, 2]}
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="names to tensors"):
        load_model(path)


def _checkpoint_copy(tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt-000000000007"
    shutil.copytree(_pristine("checkpoint"), ckpt)
    return ckpt


@pytest.mark.parametrize("entry", [None, 3, {"bytes": "12", "sha256": "x"}, {"bytes": 1}])
def test_a_malformed_manifest_entry_is_a_checkpoint_error(tmp_path: Path, entry: object) -> None:
    ckpt = _checkpoint_copy(tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"]["state.json"] = entry
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is not"):
        read_checkpoint(ckpt)  # was: TypeError


def test_a_manifest_naming_a_file_outside_the_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint_copy(tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"]["../run.json"] = manifest["files"]["state.json"]
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        read_checkpoint(ckpt)


def test_a_config_yaml_that_is_not_utf8_is_a_checkpoint_error(tmp_path: Path) -> None:
    ckpt = _checkpoint_copy(tmp_path)
    (ckpt / "config.yaml").write_bytes(b"model:\n  size: \x80\x81\n")
    _rehash(ckpt, "config.yaml")
    with pytest.raises(CheckpointError, match="bad config.yaml"):
        read_checkpoint(ckpt)  # was: UnicodeDecodeError
